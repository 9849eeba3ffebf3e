package attest_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/attest"
)

func TestVerifyQuote(t *testing.T) {
	d := newDevice(t, 1, identity.TPMOptions{PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 16, 23}})
	d.extendPCR(t, 16, "bootloader")
	d.extendPCR(t, 23, "kernel")
	ak := d.ak(t)
	qd := sha256.Sum256([]byte("posture.v1.report nonce report"))
	q := d.quote(t, qd[:])

	// Another AK of the same TPM, as another enrolled device would have.
	other, err := identity.NewTPM(d.tpm, t.TempDir(), identity.TPMOptions{PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 16, 23}})
	if err != nil {
		t.Fatal(err)
	}
	otherQ, err := other.Quote(qd[:])
	if err != nil {
		t.Fatal(err)
	}
	// The same AK quoting other data: a valid signature on other bytes.
	staleQD := sha256.Sum256([]byte("old nonce"))
	stale := d.quote(t, staleQD[:])
	// A real attestation by the AK that is not a quote.
	certify := certifyBy(t, d, qd[:])

	changedPCR := cloneMap(q.PCRs)
	changedPCR[16][0] ^= 1
	missingPCR := cloneMap(q.PCRs)
	delete(missingPCR, 23)
	extraPCR := cloneMap(q.PCRs)
	extraPCR[8] = make([]byte, 32)
	shortPCR := cloneMap(q.PCRs)
	shortPCR[0] = shortPCR[0][:20]
	flipped := bytes.Clone(q.Attest)
	flipped[len(flipped)-1] ^= 1
	badSig := bytes.Clone(q.Signature)
	badSig[len(badSig)-1] ^= 1

	for _, tc := range []struct {
		name              string
		attest, signature []byte
		qd                []byte
		pcrs              map[uint32][]byte
		want              error
	}{
		{"valid", q.Attest, q.Signature, qd[:], q.PCRs, nil},
		{"wrong nonce", q.Attest, q.Signature, staleQD[:], q.PCRs, attest.ErrQualifyingData},
		{"empty qualifying data", q.Attest, q.Signature, nil, q.PCRs, attest.ErrQualifyingData},
		{"PCR value changed", q.Attest, q.Signature, qd[:], changedPCR, attest.ErrPCRMismatch},
		{"PCR missing", q.Attest, q.Signature, qd[:], missingPCR, attest.ErrPCRMismatch},
		{"PCR not quoted", q.Attest, q.Signature, qd[:], extraPCR, attest.ErrPCRMismatch},
		{"PCR value truncated", q.Attest, q.Signature, qd[:], shortPCR, attest.ErrPCRMismatch},
		{"signed by another AK", otherQ.Attest, otherQ.Signature, qd[:], otherQ.PCRs, attest.ErrQuoteSignature},
		{"attest changed after quoting", flipped, q.Signature, qd[:], q.PCRs, attest.ErrQuoteSignature},
		{"attest of another quote", stale.Attest, q.Signature, qd[:], q.PCRs, attest.ErrQuoteSignature},
		{"attest truncated", q.Attest[:len(q.Attest)-1], q.Signature, qd[:], q.PCRs, attest.ErrQuoteSignature},
		{"signature changed", q.Attest, badSig, qd[:], q.PCRs, attest.ErrQuoteSignature},
		{"signature garbage", q.Attest, []byte{1, 2, 3}, qd[:], q.PCRs, attest.ErrQuoteMalformed},
		{"signature empty", q.Attest, nil, qd[:], q.PCRs, attest.ErrQuoteMalformed},
		{"certify attestation, not a quote", certify.attest, certify.sig, qd[:], q.PCRs, attest.ErrQuoteMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := attest.VerifyQuote(ak, tc.attest, tc.signature, tc.qd, tc.pcrs)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("VerifyQuote: %v", err)
				}
				if len(res.PCRs) != 10 || !bytes.Equal(res.PCRs[16], q.PCRs[16]) {
					t.Errorf("verified PCRs = %x", res.PCRs)
				}
				if bytes.Equal(res.PCRs[16], make([]byte, 32)) {
					t.Error("PCR 16 is zero after an extend")
				}
				if res.Clock.Clock == 0 || !res.Clock.Safe {
					t.Errorf("clock = %+v", res.Clock)
				}
				return
			}
			if res != nil {
				t.Errorf("VerifyQuote returned content with an error: %+v", res)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			for _, other := range []error{attest.ErrQuoteMalformed, attest.ErrQuoteSignature, attest.ErrQualifyingData, attest.ErrPCRMismatch} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("err = %v is also %v", err, other)
				}
			}
		})
	}

	t.Run("returned PCRs are a copy", func(t *testing.T) {
		pcrs := cloneMap(q.PCRs)
		res, err := attest.VerifyQuote(ak, q.Attest, q.Signature, qd[:], pcrs)
		if err != nil {
			t.Fatal(err)
		}
		pcrs[0][0] ^= 1
		if !bytes.Equal(res.PCRs[0], q.PCRs[0]) {
			t.Error("changing the input map changed the verified result")
		}
	})
	t.Run("no AK", func(t *testing.T) {
		if _, err := attest.VerifyQuote(nil, q.Attest, q.Signature, qd[:], q.PCRs); err == nil {
			t.Error("VerifyQuote without an AK succeeded")
		}
	})
}

type attestation struct{ attest, sig []byte }

// certifyBy has the device's AK certify its SRK: a TPMS_ATTEST the AK
// really signed, of type ATTEST_CERTIFY.
func certifyBy(t *testing.T, d *device, qd []byte) attestation {
	t.Helper()
	pubBlob, err := os.ReadFile(filepath.Join(d.dir, "tpm-ak.pub"))
	if err != nil {
		t.Fatal(err)
	}
	privBlob, err := os.ReadFile(filepath.Join(d.dir, "tpm-ak.priv"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBlob)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBlob)
	if err != nil {
		t.Fatal(err)
	}
	srk := d.srk(t)
	defer d.flush(srk.ObjectHandle)
	ak, err := tpm2.Load{ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}, InPrivate: *priv, InPublic: *pub}.Execute(d.tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer d.flush(ak.ObjectHandle)
	rsp, err := tpm2.Certify{
		ObjectHandle:   tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		SignHandle:     tpm2.NamedHandle{Handle: ak.ObjectHandle, Name: ak.Name},
		QualifyingData: tpm2.TPM2BData{Buffer: qd},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(d.tpm)
	if err != nil {
		t.Fatal(err)
	}
	return attestation{attest: rsp.CertifyInfo.Bytes(), sig: tpm2.Marshal(rsp.Signature)}
}

// TestQuoteClockAcrossReset shows what the collector sees when a device
// reboots: resetCount grows by one in the AK's (obfuscated) numbering.
func TestQuoteClockAcrossReset(t *testing.T) {
	d := newDevice(t, 0, identity.TPMOptions{}) // seed 0: seeds survive the reset
	ak := d.ak(t)
	qd := sha256.Sum256([]byte("before"))
	q := d.quote(t, qd[:])
	before, err := attest.VerifyQuote(ak, q.Attest, q.Signature, qd[:], q.PCRs)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.sim.Reset(); err != nil {
		t.Fatal(err)
	}
	q = d.quote(t, qd[:])
	after, err := attest.VerifyQuote(ak, q.Attest, q.Signature, qd[:], q.PCRs)
	if err != nil {
		t.Fatal(err)
	}
	if delta := int32(after.Clock.ResetCount - before.Clock.ResetCount); delta != 1 {
		t.Errorf("resetCount moved by %d across a reset, want 1 (before %+v, after %+v)", delta, before.Clock, after.Clock)
	}
	if after.Clock.RestartCount != before.Clock.RestartCount {
		t.Logf("restartCount %d -> %d", before.Clock.RestartCount, after.Clock.RestartCount)
	}
}

func BenchmarkVerifyQuote(b *testing.B) {
	d := newDevice(b, 1, identity.TPMOptions{})
	ak := d.ak(b)
	qd := sha256.Sum256([]byte("report"))
	q := d.quote(b, qd[:])
	if err := d.sim.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := attest.VerifyQuote(ak, q.Attest, q.Signature, qd[:], q.PCRs); err != nil {
			b.Fatal(err)
		}
	}
}

// PCRTag is equal exactly when the same PCRs carry the same values.
func TestPCRTag(t *testing.T) {
	v := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	base := map[uint32][]byte{0: v(1), 7: v(2)}
	tests := []struct {
		name  string
		pcrs  map[uint32][]byte
		equal bool
	}{
		{"same values", map[uint32][]byte{7: v(2), 0: v(1)}, true},
		{"one value differs", map[uint32][]byte{0: v(1), 7: v(3)}, false},
		{"values on other PCRs", map[uint32][]byte{0: v(1), 6: v(2)}, false},
		{"one more PCR", map[uint32][]byte{0: v(1), 7: v(2), 8: v(0)}, false},
		{"one PCR fewer", map[uint32][]byte{0: v(1)}, false},
		{"value bytes moved between PCRs", map[uint32][]byte{0: append(v(1), v(2)[:1]...), 7: v(2)[1:]}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := attest.PCRTag(tt.pcrs) == attest.PCRTag(base); got != tt.equal {
				t.Errorf("tags equal = %v, want %v", got, tt.equal)
			}
		})
	}
}
