package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/jsonview"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// fixedReport is a measurement of a healthy machine, but for its disk.
type fixedReport struct{}

func (fixedReport) Collect(context.Context) *posturev1.PostureReport {
	meta := func() *posturev1.SignalMeta {
		return &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now(), Source: posturev1.Source_SOURCE_OS}
	}
	return &posturev1.PostureReport{
		Os:         &posturev1.OSInfo{Meta: meta(), Platform: "linux", Name: "debian", Version: "12", KernelVersion: "6.1.0"},
		Disk:       &posturev1.DiskEncryption{Meta: meta(), SystemEncrypted: false, Volumes: []*posturev1.Volume{{MountPoint: "/", Encrypted: false}}},
		SecureBoot: &posturev1.SecureBoot{Meta: meta(), Enabled: true},
		Updates:    &posturev1.Updates{Meta: meta(), Manager: "apt"},
		Firewall:   &posturev1.Firewall{Meta: meta(), Enabled: true, Product: "nftables"},
		ScreenLock: &posturev1.ScreenLock{Meta: meta(), Enabled: true, TimeoutSeconds: 300},
	}
}

// jsonCommands are the commands whose -o json is a stable interface, with
// the message each prints.
var jsonCommands = []struct {
	name string
	args func(id string) []string
	msg  protoreflect.MessageDescriptor
	code int
}{
	{"devices list", func(string) []string { return []string{"devices", "list"} }, (&posturev1.ListDevicesResponse{}).ProtoReflect().Descriptor(), 0},
	{"devices show", func(id string) []string { return []string{"devices", "show", id} }, (&posturev1.DevicePosture{}).ProtoReflect().Descriptor(), 0},
	{"check", func(id string) []string { return []string{"check", id, "--level", "trusted"} }, (&posturev1.CheckAccessResponse{}).ProtoReflect().Descriptor(), 1},
	{"stats", func(string) []string { return []string{"stats"} }, (&posturev1.Stats{}).ProtoReflect().Descriptor(), 0},
	{"decisions", func(string) []string { return []string{"decisions"} }, (&posturev1.ListDecisionsResponse{}).ProtoReflect().Descriptor(), 0},
	{"gateway list", func(string) []string { return []string{"gateway", "list"} }, (&posturev1.ListGatewaysResponse{}).ProtoReflect().Descriptor(), 0},
	{"replicas", func(string) []string { return []string{"replicas"} }, (&posturev1.ListReplicasResponse{}).ProtoReflect().Descriptor(), 0},
	{"ssf receiver list", func(string) []string { return []string{"ssf", "receiver", "list"} }, (&posturev1.ListSSFReceiversResponse{}).ProtoReflect().Descriptor(), 0},
	{"ssf stream list", func(string) []string { return []string{"ssf", "stream", "list"} }, (&posturev1.ListSSFStreamsResponse{}).ProtoReflect().Descriptor(), 0},
}

// TestJSONSchema holds -o json to its promise (docs/json-output.md): every
// field is there, false and zero included; enum values are the tables'
// words; 64-bit numbers are numbers. The fields each command prints are
// listed in testdata/json-schema.txt: a field that disappears (or is
// renamed) fails this test, and one added must be added there (go test
// -run JSONSchema -update).
func TestJSONSchema(t *testing.T) {
	var schema strings.Builder
	for _, c := range jsonCommands {
		fmt.Fprintf(&schema, "# posture-collector %s -o json: %s\n", c.name, c.msg.FullName())
		for _, p := range schemaPaths(c.msg, "", map[protoreflect.FullName]bool{}) {
			schema.WriteString(p + "\n")
		}
		schema.WriteString("\n")
	}
	golden := filepath.Join("testdata", "json-schema.txt")
	if *update {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(golden, []byte(schema.String()), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got := schema.String(); got != string(want) {
		wantSet := map[string]bool{}
		for _, l := range strings.Split(string(want), "\n") {
			wantSet[l] = true
		}
		for _, l := range strings.Split(got, "\n") {
			if !wantSet[l] {
				t.Errorf("new in the JSON output, not in %s (add it, and to docs/json-output.md if it needs words): %s", golden, l)
			}
			delete(wantSet, l)
		}
		for l := range wantSet {
			t.Errorf("gone from the JSON output, which scripts rely on (%s): %s", golden, l)
		}
	}

	// The output itself, from a collector with a device that reported and
	// is bound to its user, a denial, a revocation, a gateway, and a Shared
	// Signals receiver with a stream.
	ssfAddr := freeAddr(t)
	dir := startCollector(t, func(c *collector.Config) {
		c.Events.SSF = collector.SSFConfig{Issuer: "https://" + ssfAddr, Listen: ssfAddr}
	})
	tok, _ := cli(t, "token", "create", "--data-dir", dir, "--uses", "2")
	stateDir := t.TempDir()
	res, err := agent.Enroll(context.Background(), stateDir, strings.TrimSpace(tok))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: 50 * time.Millisecond, Measurer: fixedReport{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _ := cli(t, "devices", "show", res.DeviceID, "--data-dir", dir, "-o", "json")
		if strings.Contains(out, `"lastSeq": 2`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report stored:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cli(t, "gateway", "add", "edge-1", "--out", t.TempDir(), "--data-dir", dir)
	second, err := agent.Enroll(context.Background(), t.TempDir(), strings.TrimSpace(tok))
	if err != nil {
		t.Fatal(err)
	}
	cli(t, "devices", "revoke", second.DeviceID, "--reason", "lost", "--data-dir", dir)
	cli(t, "check", second.DeviceID, "--level", "basic", "--data-dir", dir)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	defer receiver.Close()
	for _, args := range [][]string{
		{"devices", "bind", res.DeviceID[:8], "--email", "ada@example.com"},
		{"ssf", "receiver", "add", "okta", "--audience", "https://okta.example", "--level", "basic"},
		{"ssf", "stream", "create", "--receiver", "okta", "--endpoint", receiver.URL + "/events"},
	} {
		if out, code := cli(t, append(args, "--data-dir", dir)...); code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}

	for _, c := range jsonCommands {
		t.Run(c.name, func(t *testing.T) {
			out, code := cli(t, append(c.args(res.DeviceID), "--data-dir", dir, "-o", "json")...)
			if code != c.code {
				t.Fatalf("exit %d, want %d:\n%s", code, c.code, out)
			}
			dec := json.NewDecoder(strings.NewReader(out))
			dec.UseNumber()
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
			checkComplete(t, c.name, v, c.msg)
			// And it reads back into the message.
			m := newMessage(c.msg)
			if err := jsonview.Unmarshal([]byte(out), m.Interface()); err != nil {
				t.Errorf("jsonview.Unmarshal: %v", err)
			}
		})
	}
	out, _ := cli(t, "check", second.DeviceID, "--level", "basic", "--data-dir", dir, "-o", "json")
	for _, want := range []string{`"allowed": false`, `"score": 0`, `"state": "revoked"`, `"assurance": "software"`} {
		if !strings.Contains(out, want) {
			t.Errorf("check of a revoked device lacks %s:\n%s", want, out)
		}
	}
}

func newMessage(md protoreflect.MessageDescriptor) protoreflect.Message {
	for _, m := range []protoreflect.ProtoMessage{&posturev1.ListDevicesResponse{}, &posturev1.DevicePosture{}, &posturev1.CheckAccessResponse{}, &posturev1.Stats{}, &posturev1.ListDecisionsResponse{}, &posturev1.ListGatewaysResponse{}, &posturev1.ListReplicasResponse{},
		&posturev1.ListSSFReceiversResponse{}, &posturev1.ListSSFStreamsResponse{}} {
		if m.ProtoReflect().Descriptor().FullName() == md.FullName() {
			return m.ProtoReflect().Type().New()
		}
	}
	panic(md.FullName())
}

// schemaPaths lists the JSON fields of md, nested, with their kinds.
func schemaPaths(md protoreflect.MessageDescriptor, prefix string, seen map[protoreflect.FullName]bool) []string {
	if seen[md.FullName()] {
		return []string{prefix + " (recursive)"}
	}
	seen[md.FullName()] = true
	defer delete(seen, md.FullName())
	var out []string
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		path := prefix + fd.JSONName()
		vd := fd
		switch {
		case fd.IsMap():
			path += "{}"
			vd = fd.MapValue()
		case fd.IsList():
			path += "[]"
		}
		kind := kindName(vd)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			kind += ", oneof " + string(od.Name())
		}
		out = append(out, path+": "+kind)
		if vd.Message() != nil && !isWellKnown(vd.Message()) {
			out = append(out, schemaPaths(vd.Message(), path+".", seen)...)
		}
	}
	sort.Strings(out)
	return out
}

func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return md.ParentFile().Package() == "google.protobuf"
}

func kindName(fd protoreflect.FieldDescriptor) string {
	switch fd.Kind() {
	case protoreflect.MessageKind:
		switch fd.Message().FullName() {
		case "google.protobuf.Timestamp":
			return "time (RFC 3339 string, or null)"
		case "google.protobuf.Duration":
			return "duration (string such as \"1.5s\", or null)"
		}
		return "object (or null)"
	case protoreflect.EnumKind:
		var words []string
		for i := range fd.Enum().Values().Len() {
			words = append(words, jsonview.EnumWord(fd.Enum().Values().Get(i)))
		}
		return "one of " + strings.Join(words, "|")
	case protoreflect.BoolKind:
		return "bool"
	case protoreflect.StringKind:
		return "string"
	case protoreflect.BytesKind:
		return "base64 string"
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return "number"
	}
	return "integer"
}

// checkComplete walks v, the JSON of a message md, and fails on a field
// left out, an enum given by its protobuf name, or an integer as a string.
func checkComplete(t *testing.T, path string, v any, md protoreflect.MessageDescriptor) {
	t.Helper()
	if v == nil {
		return // an unset message
	}
	if isWellKnown(md) {
		if _, ok := v.(string); !ok {
			t.Errorf("%s: %v, want a string", path, v)
		}
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		t.Errorf("%s: %T, want an object", path, v)
		return
	}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		fv, present := obj[fd.JSONName()]
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if !present {
				continue
			}
		} else if !present {
			t.Errorf("%s.%s is missing", path, fd.JSONName())
			continue
		}
		p := path + "." + fd.JSONName()
		switch {
		case fd.IsList():
			l, ok := fv.([]any)
			if !ok {
				t.Errorf("%s: %v, want a list", p, fv)
			}
			for i, e := range l {
				checkValue(t, fmt.Sprintf("%s[%d]", p, i), e, fd)
			}
		case fd.IsMap():
			m, ok := fv.(map[string]any)
			if !ok {
				t.Errorf("%s: %v, want an object", p, fv)
			}
			for k, e := range m {
				checkValue(t, p+"."+k, e, fd.MapValue())
			}
		default:
			checkValue(t, p, fv, fd)
		}
	}
}

func checkValue(t *testing.T, path string, v any, fd protoreflect.FieldDescriptor) {
	t.Helper()
	switch fd.Kind() {
	case protoreflect.MessageKind:
		checkComplete(t, path, v, fd.Message())
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok || s != strings.ToLower(s) || fd.Enum().Values().ByName(protoreflect.Name(s)) != nil {
			t.Errorf("%s: %v, want a word as the tables show it", path, v)
		}
	case protoreflect.Int64Kind, protoreflect.Uint64Kind, protoreflect.Int32Kind, protoreflect.Uint32Kind, protoreflect.Sint64Kind, protoreflect.Fixed64Kind:
		if _, ok := v.(json.Number); !ok {
			t.Errorf("%s: %#v, want a number", path, v)
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			t.Errorf("%s: %#v, want true or false", path, v)
		}
	}
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
