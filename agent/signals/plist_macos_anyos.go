package signals

import (
	"encoding/xml"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Property lists, as macOS tools print them. XML property lists
// (diskutil -plist) follow Apple's PropertyList-1.0 DTD; "defaults read"
// prints the old-style ASCII (OpenStep) format. Both decode to
// map[string]any, []any, string, int64, float64, bool and []byte; old-style
// text has no types, so there every scalar is a string.

var errPlist = errors.New("malformed property list")

// parseXMLPlist decodes an XML property list.
func parseXMLPlist(b []byte) (any, error) {
	d := xml.NewDecoder(strings.NewReader(string(b)))
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("no <plist> element: %w", errPlist)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "plist" {
			v, end, err := xmlPlistValue(d)
			if err != nil {
				return nil, err
			}
			if end {
				return nil, fmt.Errorf("empty <plist>: %w", errPlist)
			}
			return v, nil
		}
	}
}

// xmlPlistValue decodes the next value element; end reports that the
// enclosing element closed instead.
func xmlPlistValue(d *xml.Decoder) (v any, end bool, err error) {
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, false, fmt.Errorf("truncated: %w", errPlist)
		}
		switch t := tok.(type) {
		case xml.EndElement:
			return nil, true, nil
		case xml.StartElement:
			v, err := xmlPlistElement(d, t)
			return v, false, err
		}
	}
}

func xmlPlistElement(d *xml.Decoder, se xml.StartElement) (any, error) {
	switch se.Name.Local {
	case "dict":
		m := map[string]any{}
		for {
			k, end, err := xmlPlistValue(d)
			if err != nil {
				return nil, err
			}
			if end {
				return m, nil
			}
			key, ok := k.(xmlKey)
			if !ok {
				return nil, fmt.Errorf("<dict> entry without <key>: %w", errPlist)
			}
			v, end, err := xmlPlistValue(d)
			if err != nil {
				return nil, err
			}
			if end {
				return nil, fmt.Errorf("<key>%s</key> without a value: %w", key, errPlist)
			}
			m[string(key)] = v
		}
	case "array":
		a := []any{}
		for {
			v, end, err := xmlPlistValue(d)
			if err != nil {
				return nil, err
			}
			if end {
				return a, nil
			}
			a = append(a, v)
		}
	case "true", "false":
		if err := d.Skip(); err != nil {
			return nil, fmt.Errorf("<%s>: %w", se.Name.Local, errPlist)
		}
		return se.Name.Local == "true", nil
	}
	var text string
	if err := d.DecodeElement(&text, &se); err != nil {
		return nil, fmt.Errorf("<%s>: %w", se.Name.Local, errPlist)
	}
	text = strings.TrimSpace(text)
	switch se.Name.Local {
	case "key":
		return xmlKey(text), nil
	case "integer":
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("<integer>%s</integer>: %w", text, errPlist)
		}
		return n, nil
	case "real":
		f, err := strconv.ParseFloat(text, 64)
		if err != nil {
			return nil, fmt.Errorf("<real>%s</real>: %w", text, errPlist)
		}
		return f, nil
	}
	// string, date, data: their text is all the agent needs.
	return text, nil
}

// xmlKey tells a <key> from a <string> while decoding a dict.
type xmlKey string

// parseOldPlist decodes the old-style ASCII property list that "defaults
// read" prints:
//
//	{
//	    AutomaticCheckEnabled = 1;
//	    RecommendedUpdates = (
//	        { "Display Name" = "macOS Sonoma 14.6"; Identifier = "MSU_UPDATE_23G80_patch_14.6_minor"; }
//	    );
//	}
//
// Data values print as <hex> or, in newer releases, as
// "{length = 256, bytes = 0x… … }", which is read leniently and ignored.
func parseOldPlist(s string) (any, error) {
	p := &oldPlist{s: s}
	v, err := p.value()
	if err != nil {
		return nil, err
	}
	if tok := p.next(); tok != "" {
		return nil, fmt.Errorf("text after the value at offset %d (%q): %w", p.pos, tok, errPlist)
	}
	return v, nil
}

type oldPlist struct {
	s   string
	pos int
}

// next returns the next token: one of "{}()=;,", a quoted string (still
// quoted), a <data> block, or a bare word; "" at the end.
func (p *oldPlist) next() string {
	for p.pos < len(p.s) && strings.ContainsRune(" \t\r\n", rune(p.s[p.pos])) {
		p.pos++
	}
	if p.pos >= len(p.s) {
		return ""
	}
	start := p.pos
	switch ch := p.s[p.pos]; {
	case strings.IndexByte("{}()=;,", ch) >= 0:
		p.pos++
	case ch == '"':
		p.pos++
		for p.pos < len(p.s) && p.s[p.pos] != '"' {
			if p.s[p.pos] == '\\' {
				p.pos++
			}
			p.pos++
		}
		p.pos++
	case ch == '<':
		for p.pos < len(p.s) && p.s[p.pos] != '>' {
			p.pos++
		}
		p.pos++
	default:
		for p.pos < len(p.s) && strings.IndexByte("{}()=;,\" \t\r\n", p.s[p.pos]) < 0 {
			p.pos++
		}
	}
	p.pos = min(p.pos, len(p.s))
	return p.s[start:p.pos]
}

func (p *oldPlist) peek() string {
	save := p.pos
	tok := p.next()
	p.pos = save
	return tok
}

func (p *oldPlist) value() (any, error) {
	tok := p.next()
	switch {
	case tok == "":
		return nil, fmt.Errorf("unexpected end: %w", errPlist)
	case tok == "{":
		return p.dict()
	case tok == "(":
		return p.array()
	case strings.IndexByte("})=;,", tok[0]) >= 0:
		return nil, fmt.Errorf("unexpected %q at offset %d: %w", tok, p.pos, errPlist)
	case tok[0] == '"':
		return unquoteOldPlist(tok), nil
	}
	return tok, nil
}

func (p *oldPlist) dict() (map[string]any, error) {
	m := map[string]any{}
	for {
		tok := p.next()
		switch {
		case tok == "}":
			return m, nil
		case tok == "":
			return nil, fmt.Errorf("unterminated dictionary: %w", errPlist)
		case tok == ";" || tok == ",":
			continue
		}
		key := tok
		if key[0] == '"' {
			key = unquoteOldPlist(key)
		}
		if p.next() != "=" {
			return nil, fmt.Errorf("dictionary key %q without '=': %w", key, errPlist)
		}
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		m[key] = v
		// Skip whatever follows the value up to its separator, such as the
		// hex words of "bytes = 0x… … ".
		for t := p.peek(); t != "" && t != ";" && t != "," && t != "}"; t = p.peek() {
			if _, err := p.value(); err != nil {
				return nil, err
			}
		}
	}
}

func (p *oldPlist) array() ([]any, error) {
	a := []any{}
	for {
		switch tok := p.peek(); tok {
		case ")":
			p.next()
			return a, nil
		case ",":
			p.next()
			continue
		case "":
			return nil, fmt.Errorf("unterminated array: %w", errPlist)
		}
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		a = append(a, v)
	}
}

// unquoteOldPlist undoes the escapes of a quoted old-style string: \" \\
// \n \t, octal \012 and \Uxxxx.
func unquoteOldPlist(tok string) string {
	s := strings.TrimSuffix(strings.TrimPrefix(tok, `"`), `"`)
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch c := s[i]; {
		case c == 'n':
			b.WriteByte('\n')
		case c == 't':
			b.WriteByte('\t')
		case c == 'U' && i+4 < len(s):
			if r, err := strconv.ParseUint(s[i+1:i+5], 16, 32); err == nil {
				b.WriteRune(rune(r))
				i += 4
				continue
			}
			b.WriteByte(c)
		case c >= '0' && c <= '7' && i+2 < len(s):
			if r, err := strconv.ParseUint(s[i:i+3], 8, 8); err == nil {
				b.WriteByte(byte(r))
				i += 2
				continue
			}
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	if !utf8.ValidString(b.String()) {
		return strings.ToValidUTF8(b.String(), "\uFFFD")
	}
	return b.String()
}

// plistString returns m[key] as text, whatever its plist type.
func plistString(m map[string]any, key string) (string, bool) {
	switch v := m[key].(type) {
	case string:
		return v, true
	case int64:
		return strconv.FormatInt(v, 10), true
	case bool:
		if v {
			return "1", true
		}
		return "0", true
	}
	return "", false
}

// plistBool reads m[key] as a boolean: <true/>, or 1/0, YES/NO, true/false
// in old-style text. ok is false when the key is missing or not boolean.
func plistBool(m map[string]any, key string) (v, ok bool) {
	s, ok := plistString(m, key)
	if !ok {
		return false, false
	}
	switch strings.ToLower(s) {
	case "1", "yes", "true":
		return true, true
	case "0", "no", "false":
		return false, true
	}
	return false, false
}
