package pki

import (
	"fmt"
	"math/big"
	"regexp"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/testtools/fuzzseed"
)

// canonicalHex is how SerialHex writes a serial.
var canonicalHex = regexp.MustCompile(`^[1-9a-f][0-9a-f]*$`)

// FuzzCanonicalSerial feeds CanonicalSerial the certificate serials
// gateways and people send: nginx's $ssl_client_serial (upper-case hex
// with leading zeros), openssl's colon-separated bytes, 0x-prefixed hex,
// and anything else. It must never panic; what it accepts it returns as
// SerialHex writes it, a positive number of at most 160 bits, and
// accepting its own output unchanged. The second input is a serial's
// bytes: every spelling of that number must give the same answer.
func FuzzCanonicalSerial(f *testing.F) {
	for _, s := range []string{"a1b2", "00A1B2", "0xa1b2", "00:a1:b2", "7FFFFFFFFF1", "0", "", "-a1", "0x0Xa1", strings.Repeat("f", 41)} {
		fuzzseed.Add(f, s, []byte{0x0a, 0x1b})
	}
	fuzzseed.Add(f, "4E2B1F4C8A1D9E0F6B3C2A1908172635", []byte{0x4e, 0x2b, 0x1f, 0x4c, 0x8a, 0x1d, 0x9e, 0x0f, 0x6b, 0x3c, 0x2a, 0x19, 0x08, 0x17, 0x26, 0x35})
	fuzzseed.Add(f, "01", []byte{0, 0, 1})
	f.Fuzz(func(t *testing.T, s string, serial []byte) {
		got, err := CanonicalSerial(s)
		if err == nil {
			n, ok := new(big.Int).SetString(got, 16)
			if !canonicalHex.MatchString(got) || !ok || n.BitLen() > 160 {
				t.Fatalf("CanonicalSerial(%q) = %q: not a positive serial of at most 160 bits as SerialHex writes it", s, got)
			}
			if again, err := CanonicalSerial(got); err != nil || again != got {
				t.Fatalf("CanonicalSerial(%q) = %q, %v; want it unchanged", got, again, err)
			}
		}

		n := new(big.Int).SetBytes(serial)
		if n.Sign() == 0 || n.BitLen() > 160 {
			return
		}
		want := n.Text(16)
		padded := fmt.Sprintf("%0*X", 2*len(serial), n) // nginx: every byte of the DER integer
		var colons []string
		for _, b := range serial {
			colons = append(colons, fmt.Sprintf("%02x", b))
		}
		for _, form := range []string{want, strings.ToUpper(want), padded, strings.Join(colons, ":"), "0x" + want, "0X" + padded} {
			if got, err := CanonicalSerial(form); err != nil || got != want {
				t.Fatalf("CanonicalSerial(%q) = %q, %v; want %q", form, got, err, want)
			}
		}
	})
}
