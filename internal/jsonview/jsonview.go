// Package jsonview writes protobuf messages as the JSON the command lines
// print (-o json), a stable interface for scripts: every field is present,
// false, zero and empty ones included (an unset message is null); enum
// values are the words the tables use (active, tpm_ek_verified, fail), not
// their protobuf names; 64-bit integers are JSON numbers, not strings;
// times are RFC 3339 strings and durations strings such as "1.5s", as in
// protojson; field names are protojson's lowerCamelCase. Text is escaped
// as internal/inert does for JSON, so the output is safe in a terminal.
//
// Unmarshal reads that JSON back into a message, for Go programs and tests.
package jsonview

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/posture-project/posture/internal/inert"
)

// Marshal returns m as indented JSON (two spaces), ending in a newline.
func Marshal(m proto.Message) ([]byte, error) {
	var b bytes.Buffer
	if err := writeMessage(&b, m.ProtoReflect()); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return nil, fmt.Errorf("indent: %w", err)
	}
	out.WriteByte('\n')
	return inert.JSON(out.Bytes()), nil
}

// EnumWord is the word for an enum value: its name without the enum's
// prefix, in lower case (DEVICE_STATE_ACTIVE of DeviceState is active).
func EnumWord(v protoreflect.EnumValueDescriptor) string {
	enum := v.Parent().(protoreflect.EnumDescriptor)
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(enum)))
}

// enumPrefix is the prefix every value name of e carries by the protobuf
// style guide: the enum's name in upper snake case and an underscore.
func enumPrefix(e protoreflect.EnumDescriptor) string {
	var b strings.Builder
	for i, r := range string(e.Name()) {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String()) + "_"
}

// isWellKnown reports whether md is one of protobuf's well-known types,
// which keep protojson's form (a Timestamp is an RFC 3339 string).
func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return md.ParentFile().Package() == "google.protobuf"
}

func writeMessage(b *bytes.Buffer, m protoreflect.Message) error {
	md := m.Descriptor()
	if isWellKnown(md) {
		out, err := protojson.Marshal(m.Interface())
		if err != nil {
			return err
		}
		b.Write(out)
		return nil
	}
	b.WriteByte('{')
	first := true
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		// A oneof shows only the member that is set, as in protojson.
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && !m.Has(fd) {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		writeString(b, fd.JSONName())
		b.WriteByte(':')
		if err := writeField(b, m, fd); err != nil {
			return fmt.Errorf("%s: %w", fd.FullName(), err)
		}
	}
	b.WriteByte('}')
	return nil
}

func writeField(b *bytes.Buffer, m protoreflect.Message, fd protoreflect.FieldDescriptor) error {
	switch {
	case fd.IsList():
		l := m.Get(fd).List()
		b.WriteByte('[')
		for i := range l.Len() {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writeValue(b, fd, l.Get(i)); err != nil {
				return err
			}
		}
		b.WriteByte(']')
		return nil
	case fd.IsMap():
		mp := m.Get(fd).Map()
		// Keys in order, so that equal maps print alike.
		var keys []protoreflect.MapKey
		mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
			keys = append(keys, k)
			return true
		})
		sortKeys(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k.String())
			b.WriteByte(':')
			if err := writeValue(b, fd.MapValue(), mp.Get(k)); err != nil {
				return err
			}
		}
		b.WriteByte('}')
		return nil
	case fd.Message() != nil && !m.Has(fd), fd.HasPresence() && !m.Has(fd):
		b.WriteString("null")
		return nil
	}
	return writeValue(b, fd, m.Get(fd))
}

func sortKeys(keys []protoreflect.MapKey) {
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j].String() < keys[j-1].String(); j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
}

func writeValue(b *bytes.Buffer, fd protoreflect.FieldDescriptor, v protoreflect.Value) error {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return writeMessage(b, v.Message())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			writeString(b, EnumWord(ev))
		} else {
			b.WriteString(strconv.Itoa(int(v.Enum())))
		}
	case protoreflect.BoolKind:
		b.WriteString(strconv.FormatBool(v.Bool()))
	case protoreflect.StringKind:
		writeString(b, v.String())
	case protoreflect.BytesKind:
		writeString(b, base64.StdEncoding.EncodeToString(v.Bytes()))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		b.WriteString(strconv.FormatInt(v.Int(), 10))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		b.WriteString(strconv.FormatUint(v.Uint(), 10))
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		f := v.Float()
		switch {
		case math.IsNaN(f):
			b.WriteString(`"NaN"`)
		case math.IsInf(f, 1):
			b.WriteString(`"Infinity"`)
		case math.IsInf(f, -1):
			b.WriteString(`"-Infinity"`)
		default:
			bits := 64
			if fd.Kind() == protoreflect.FloatKind {
				bits = 32
			}
			b.WriteString(strconv.FormatFloat(f, 'g', -1, bits))
		}
	default:
		return fmt.Errorf("kind %v not supported", fd.Kind())
	}
	return nil
}

// writeString writes s as a JSON string; <, > and & stay as they are.
func writeString(b *bytes.Buffer, s string) {
	var tmp bytes.Buffer
	enc := json.NewEncoder(&tmp)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // a string always encodes
	b.Write(bytes.TrimSuffix(tmp.Bytes(), []byte("\n")))
}

// Unmarshal reads JSON written by Marshal into m.
func Unmarshal(data []byte, m proto.Message) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return err
	}
	tree, err := toProtoJSON(tree, m.ProtoReflect().Descriptor())
	if err != nil {
		return err
	}
	b, err := json.Marshal(tree)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(b, m)
}

// toProtoJSON turns the enum words of a decoded message back into the
// names protojson reads.
func toProtoJSON(v any, md protoreflect.MessageDescriptor) (any, error) {
	obj, ok := v.(map[string]any)
	if !ok || isWellKnown(md) {
		return v, nil
	}
	for k, fv := range obj {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		if fd == nil || fv == nil {
			continue
		}
		conv := func(x any) (any, error) { return x, nil }
		vd := fd
		if fd.IsMap() {
			vd = fd.MapValue()
		}
		switch {
		case vd.Enum() != nil:
			conv = func(x any) (any, error) { return enumName(x, vd.Enum()) }
		case vd.Message() != nil:
			conv = func(x any) (any, error) { return toProtoJSON(x, vd.Message()) }
		}
		var err error
		switch {
		case fd.IsList():
			l, _ := fv.([]any)
			for i := range l {
				if l[i], err = conv(l[i]); err != nil {
					return nil, fmt.Errorf("%s: %w", k, err)
				}
			}
		case fd.IsMap():
			mp, _ := fv.(map[string]any)
			for mk := range mp {
				if mp[mk], err = conv(mp[mk]); err != nil {
					return nil, fmt.Errorf("%s: %w", k, err)
				}
			}
		default:
			if obj[k], err = conv(fv); err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
		}
	}
	return obj, nil
}

func enumName(x any, ed protoreflect.EnumDescriptor) (any, error) {
	s, ok := x.(string)
	if !ok {
		return x, nil // a number
	}
	name := protoreflect.Name(enumPrefix(ed) + strings.ToUpper(s))
	if ed.Values().ByName(name) == nil {
		if ed.Values().ByName(protoreflect.Name(s)) != nil {
			return s, nil // the protobuf name itself
		}
		return nil, fmt.Errorf("%q is not a value of %s", s, ed.FullName())
	}
	return string(name), nil
}
