package attest_test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/testtools"
)

// TestCheckquoteIndependentVerifier checks our quotes with tpm2-tools,
// which shares no code with Posture or go-tpm.
func TestCheckquoteIndependentVerifier(t *testing.T) {
	checkquote := testtools.Require(t, "tpm2_checkquote")
	d := newDevice(t, 5, identity.TPMOptions{PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}})
	d.extendPCR(t, 16, "measured")
	ak := d.ak(t)

	for _, tc := range []struct {
		name string
		pcrs []uint32 // subset of the device's PCRs to quote
	}{
		{"PCRs 0-7", []uint32{0, 1, 2, 3, 4, 5, 6, 7}},
		{"PCRs 0-23, several digest lists", nil},
		{"one PCR", []uint32{16}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := d.id
			if tc.pcrs != nil {
				ints := make([]int, len(tc.pcrs))
				for i, p := range tc.pcrs {
					ints[i] = int(p)
				}
				var err error
				id, err = identity.NewTPM(d.tpm, d.dir, identity.TPMOptions{PCRs: ints})
				if err != nil {
					t.Fatal(err)
				}
			}
			qd := sha256.Sum256([]byte(tc.name))
			q, err := id.Quote(qd[:])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := attest.VerifyQuote(ak, q.Attest, q.Signature, qd[:], q.PCRs); err != nil {
				t.Fatalf("VerifyQuote: %v", err)
			}
			dir := t.TempDir()
			if err := attest.WriteCheckquoteFiles(dir, ak, q.Attest, q.Signature, q.PCRs); err != nil {
				t.Fatal(err)
			}
			run := func(msg, pcrs, nonce string) error {
				out, err := exec.Command(checkquote, "-u", filepath.Join(dir, "ak.pem"), "-m", msg,
					"-s", filepath.Join(dir, "quote.sig"), "-g", "sha256", "-q", nonce, "-f", pcrs).CombinedOutput()
				t.Logf("tpm2_checkquote: %v\n%s", err, out)
				return err
			}
			nonce := hex.EncodeToString(qd[:])
			msg, pcrs := filepath.Join(dir, "quote.msg"), filepath.Join(dir, "pcrs.bin")
			if err := run(msg, pcrs, nonce); err != nil {
				t.Fatalf("tpm2_checkquote rejected a good quote: %v", err)
			}

			tampered := filepath.Join(dir, "tampered.msg")
			b := append([]byte(nil), q.Attest...)
			b[len(b)-1] ^= 1
			if err := os.WriteFile(tampered, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if run(tampered, pcrs, nonce) == nil {
				t.Error("tpm2_checkquote accepted a tampered quote.msg")
			}

			changed := cloneMap(q.PCRs)
			for p := range changed {
				changed[p][0] ^= 1
				break
			}
			other := t.TempDir()
			if err := attest.WriteCheckquoteFiles(other, ak, q.Attest, q.Signature, changed); err != nil {
				t.Fatal(err)
			}
			if run(msg, filepath.Join(other, "pcrs.bin"), nonce) == nil {
				t.Error("tpm2_checkquote accepted changed PCR values")
			}
			wrongNonce := hex.EncodeToString(make([]byte, 32))
			if run(msg, pcrs, wrongNonce) == nil {
				t.Error("tpm2_checkquote accepted a wrong nonce")
			}
		})
	}
}
