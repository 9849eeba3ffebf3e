package token

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/posture-project/posture/internal/testtools/fuzzseed"
)

// FuzzParse feeds Parse arbitrary text. It must never panic; whatever it
// accepts is a complete token (an address, a secret, a SHA-256
// fingerprint) that String encodes back to the same token; whatever it
// refuses is refused as ErrFormat. The second input builds a token from
// its parts, which String and Parse must carry unchanged.
func FuzzParse(f *testing.F) {
	fp := strings.Repeat("0f", sha256.Size)
	tok, err := New([]string{"collector.example:8443"}, fp)
	if err != nil {
		f.Fatal(err)
	}
	many, err := New([]string{"10.0.0.1:8443", "10.0.0.2:8443", "[2001:db8::1]:8443"}, strings.ToUpper(fp))
	if err != nil {
		f.Fatal(err)
	}
	fuzzseed.Add(f, tok.String(), "collector.example:8443\x00"+fp+"\x00"+tok.Secret)
	fuzzseed.Add(f, "  "+many.String()+"\n", "a\x00b\x00"+fp+"\x00s")
	fuzzseed.Add(f, prefix+base64.RawURLEncoding.EncodeToString([]byte(`{"a":"x","f":"`+fp+`","s":"y","A":"z","o":[""]}`)), "")
	fuzzseed.Add(f, prefix+"e30", "\x00\x00\x00")
	fuzzseed.Add(f, "PT1.", "x")
	f.Fuzz(func(t *testing.T, s, parts string) {
		got, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Parse(%q) = %v, which is not ErrFormat", s, err)
			}
		} else {
			checkValid(t, got)
			again, err := Parse(got.String())
			if err != nil {
				t.Fatalf("Parse(%q) = %+v, but its String %q does not parse: %v", s, got, got.String(), err)
			}
			if !reflect.DeepEqual(again, got) {
				t.Fatalf("String and Parse changed a token:\n got  %+v\n want %+v", again, got)
			}
		}

		// A token made of parts: addresses, fingerprint, secret, split at
		// NUL. JSON can only carry valid UTF-8, as New's callers give.
		if !utf8.ValidString(parts) {
			return
		}
		fields := strings.Split(parts, "\x00")
		if len(fields) < 3 {
			return
		}
		n := len(fields)
		made := Token{Addr: fields[0], Fingerprint: fields[n-2], Secret: fields[n-1]}
		if n > 3 {
			made.Others = fields[1 : n-2]
		}
		back, err := Parse(made.String())
		fpBytes, fpErr := hex.DecodeString(made.Fingerprint)
		valid := made.Addr != "" && made.Secret != "" && len(made.Others) < maxAddrs && !slices.Contains(made.Others, "") &&
			fpErr == nil && len(fpBytes) == sha256.Size
		switch {
		case valid && err != nil:
			t.Fatalf("token %+v does not survive String and Parse: %v", made, err)
		case !valid && err == nil:
			t.Fatalf("Parse accepted %+v, which is not a complete token", made)
		case valid && !reflect.DeepEqual(back, made):
			t.Fatalf("String and Parse changed a token:\n got  %+v\n want %+v", back, made)
		}
	})
}

// checkValid asserts what every parsed token must hold.
func checkValid(t *testing.T, tok Token) {
	t.Helper()
	if tok.Addr == "" || tok.Secret == "" {
		t.Fatalf("Parse accepted a token without address or secret: %+v", tok)
	}
	if fp, err := hex.DecodeString(tok.Fingerprint); err != nil || len(fp) != sha256.Size {
		t.Fatalf("Parse accepted fingerprint %q, which is not a SHA-256 hex digest", tok.Fingerprint)
	}
	if len(tok.Addrs()) > maxAddrs || slices.Contains(tok.Others, "") {
		t.Fatalf("Parse accepted addresses %q", tok.Addrs())
	}
}
