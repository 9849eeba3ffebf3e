package token

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	fp := strings.Repeat("0f", 32)
	tok, err := New("collector.example:8443", fp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("  " + tok.String() + "\n")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got != tok {
		t.Errorf("Parse(String()) = %+v, want %+v", got, tok)
	}
	other, _ := New("collector.example:8443", fp)
	if other.Secret == tok.Secret || bytes.Equal(Hash(other.Secret), Hash(tok.Secret)) {
		t.Error("two tokens share a secret")
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := New("a:1", strings.Repeat("ab", 32))
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
