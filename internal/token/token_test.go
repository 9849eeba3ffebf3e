package token

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	fp := strings.Repeat("0f", 32)
	tok, err := New([]string{"collector.example:8443"}, fp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("  " + tok.String() + "\n")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !reflect.DeepEqual(got, tok) {
		t.Errorf("Parse(String()) = %+v, want %+v", got, tok)
	}
	other, _ := New([]string{"collector.example:8443"}, fp)
	if other.Secret == tok.Secret || bytes.Equal(Hash(other.Secret), Hash(tok.Secret)) {
		t.Error("two tokens share a secret")
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := New([]string{"a:1"}, strings.Repeat("ab", 32))
	tests := map[string]string{
		"empty":             "",
		"no prefix":         "eyJhIjoiYSJ9",
		"not base64":        "PT1.***",
		"not json":          "PT1.aGVsbG8",
		"short fingerprint": Token{Addr: "a:1", Fingerprint: "abcd", Secret: "s"}.String(),
		"no secret":         Token{Addr: "a:1", Fingerprint: good.Fingerprint}.String(),
		"no address":        Token{Fingerprint: good.Fingerprint, Secret: "s"}.String(),
	}
	for name, s := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(s); !errors.Is(err, ErrFormat) {
				t.Errorf("Parse(%q) = %v, want ErrFormat", s, err)
			}
		})
	}
}

// A token for several collectors carries them all, first the one it was
// made for; an agent that reads only the first address still enrolls.
func TestSeveralCollectors(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	tok, err := New([]string{"a.example:8443", "b.example:8443", "c.example:8443"}, fp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(tok.String())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.example:8443", "b.example:8443", "c.example:8443"}; strings.Join(got.Addrs(), ",") != strings.Join(want, ",") || got.Addr != want[0] {
		t.Errorf("Addrs = %v, Addr = %q; want %v", got.Addrs(), got.Addr, want)
	}
	if _, err := New(nil, fp); err == nil {
		t.Error("a token without an address was made")
	}
	bad := Token{Addr: "a:1", Others: []string{""}, Fingerprint: fp, Secret: "s"}
	if _, err := Parse(bad.String()); err == nil {
		t.Error("a token with an empty address parsed")
	}
}
