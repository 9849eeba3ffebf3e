package identity_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/testtools"
)

// newTPM builds the identity or fails the test.
func newTPM(t testing.TB, tpm transport.TPM, dir string, opts identity.TPMOptions) *identity.TPM {
	t.Helper()
	id, err := identity.NewTPM(tpm, dir, opts)
	if err != nil {
		t.Fatalf("NewTPM: %v", err)
	}
	return id
}

// assertNoTransientHandles checks that nothing was left loaded: swtpm and
// /dev/tpm0 have no resource manager, and three leaked objects make the
// next command fail.
func assertNoTransientHandles(t *testing.T, tpm transport.TPM) {
	t.Helper()
	for _, first := range []tpm2.TPMHandle{0x80000000, 0x02000000, 0x03000000} { // objects, HMAC and policy sessions
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(tpm)
		if err != nil {
			t.Fatalf("GetCapability(handles): %v", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs.Handle {
			if h>>24 == first>>24 {
				t.Errorf("handle %#x left loaded in the TPM", uint32(h))
			}
		}
	}
}

// ceremony runs enrollment's credential challenge against id as the
// collector would.
func ceremony(t *testing.T, id *identity.TPM) {
	t.Helper()
	ak, err := attest.ParseAK(id.AKPublic())
	if err != nil {
		t.Fatalf("ParseAK: %v", err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	blob, encSecret, err := attest.MakeCredential(id.EKPublic(), ak.Name, secret)
	if err != nil {
		t.Fatalf("MakeCredential: %v", err)
	}
	got, err := id.ActivateCredential(blob, encSecret)
	if err != nil {
		t.Fatalf("ActivateCredential: %v", err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatalf("ActivateCredential = %x, want %x", got, secret)
	}
}

func TestTPMEnrollmentCeremony(t *testing.T) {
	tpm, _ := testtools.Simulator(t, 1)
	dir := filepath.Join(t.TempDir(), "state")
	id := newTPM(t, tpm, dir, identity.TPMOptions{})
	if id.Kind() != identity.KindTPM {
		t.Errorf("Kind = %q, want %q", id.Kind(), identity.KindTPM)
	}
	if id.EKCertificate() != nil {
		t.Errorf("EKCertificate = %d bytes on a TPM without one in NV, want nil", len(id.EKCertificate()))
	}
	ceremony(t, id)
	assertNoTransientHandles(t, tpm)

	if runtime.GOOS != "windows" {
		for _, f := range []string{"tpm-ak.pub", "tpm-ak.priv"} {
			fi, err := os.Stat(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s mode = %v, want 0600", f, fi.Mode().Perm())
			}
		}
	}

	t.Run("same state dir loads the same AK", func(t *testing.T) {
		again := newTPM(t, tpm, dir, identity.TPMOptions{})
		if !bytes.Equal(again.AKPublic(), id.AKPublic()) {
			t.Error("second NewTPM on the same state dir made a different AK")
		}
		if !bytes.Equal(again.EKPublic(), id.EKPublic()) {
			t.Error("second NewTPM reports a different EK")
		}
		ceremony(t, again)
	})
	t.Run("new state dir makes a new AK", func(t *testing.T) {
		other := newTPM(t, tpm, t.TempDir(), identity.TPMOptions{})
		if bytes.Equal(other.AKPublic(), id.AKPublic()) {
			t.Error("a fresh state dir reused the AK")
		}
	})
	t.Run("incomplete state is an error", func(t *testing.T) {
		broken := t.TempDir()
		data, err := os.ReadFile(filepath.Join(dir, "tpm-ak.pub"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(broken, "tpm-ak.pub"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = identity.NewTPM(tpm, broken, identity.TPMOptions{})
		if err == nil || !strings.Contains(err.Error(), "incomplete") {
			t.Errorf("NewTPM with only tpm-ak.pub: err = %v, want an incomplete-state error", err)
		}
	})
	assertNoTransientHandles(t, tpm)
}

func TestTPMAKFromAnotherTPM(t *testing.T) {
	// Device A's keys are read first; the simulator is a singleton, so A
	// is closed before B opens.
	tpmA, simA := testtools.Simulator(t, 100)
	idA := newTPM(t, tpmA, t.TempDir(), identity.TPMOptions{})
	ekA, akA := idA.EKPublic(), idA.AKPublic()
	if err := simA.Close(); err != nil {
		t.Fatal(err)
	}

	tpmB, _ := testtools.Simulator(t, 200)
	idB := newTPM(t, tpmB, t.TempDir(), identity.TPMOptions{})
	if bytes.Equal(ekA, idB.EKPublic()) {
		t.Fatal("two simulator seeds gave the same EK")
	}

	for _, tc := range []struct {
		name       string
		ek, akPub  []byte
		wantSecret bool
	}{
		{"EK and AK of this TPM", idB.EKPublic(), idB.AKPublic(), true},
		{"EK of another TPM", ekA, idB.AKPublic(), false},
		{"AK of another TPM", idB.EKPublic(), akA, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ak, err := attest.ParseAK(tc.akPub)
			if err != nil {
				t.Fatal(err)
			}
			secret := []byte("0123456789abcdef0123456789abcdef")
			blob, encSecret, err := attest.MakeCredential(tc.ek, ak.Name, secret)
			if err != nil {
				t.Fatal(err)
			}
			got, err := idB.ActivateCredential(blob, encSecret)
			if tc.wantSecret {
				if err != nil || !bytes.Equal(got, secret) {
					t.Fatalf("ActivateCredential = %x, %v; want the secret", got, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ActivateCredential succeeded with %s; want it refused", tc.name)
			}
			if got != nil {
				t.Errorf("ActivateCredential returned %x with an error", got)
			}
			if !strings.Contains(err.Error(), "rejected the challenge") {
				t.Errorf("error %q does not say the TPM rejected the challenge", err)
			}
			t.Logf("refused as expected: %v", err)
		})
	}
	assertNoTransientHandles(t, tpmB)
}

func TestTPMOptions(t *testing.T) {
	tpm, _ := testtools.Simulator(t, 3)
	for _, tc := range []struct {
		name    string
		pcrs    []int
		want    []uint32
		wantErr string
	}{
		{"default is PCRs 0-7", nil, []uint32{0, 1, 2, 3, 4, 5, 6, 7}, ""},
		{"sorted and deduplicated", []int{7, 0, 7}, []uint32{0, 7}, ""},
		{"all 24 PCRs, more than one PCR_Read", []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}, nil, ""},
		{"out of range", []int{24}, nil, "PCR 24 out of range"},
		{"negative", []int{-1}, nil, "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := identity.NewTPM(tpm, t.TempDir(), identity.TPMOptions{PCRs: tc.pcrs})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewTPM err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			q, err := id.Quote(make([]byte, 32))
			if err != nil {
				t.Fatalf("Quote: %v", err)
			}
			want := tc.want
			if want == nil {
				for _, p := range tc.pcrs {
					want = append(want, uint32(p))
				}
			}
			if len(q.PCRs) != len(want) {
				t.Fatalf("quote has %d PCRs, want %d", len(q.PCRs), len(want))
			}
			for _, p := range want {
				if len(q.PCRs[p]) != sha256.Size {
					t.Errorf("PCR %d: %d bytes", p, len(q.PCRs[p]))
				}
			}
		})
	}
	id := newTPM(t, tpm, t.TempDir(), identity.TPMOptions{})
	if _, err := id.Quote(make([]byte, 65)); err == nil {
		t.Error("Quote accepted 65 bytes of qualifying data")
	}
	assertNoTransientHandles(t, tpm)
}

func TestOpenTPMDeviceErrors(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want string
	}{
		{"tcp://127.0.0.1", "want tcp://host:port"},
		{"tcp://127.0.0.1:65535", "port must be"},
		{"tcp://127.0.0.1:1", "is swtpm running"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			tpm, err := identity.OpenTPMDevice(tc.addr)
			if err == nil {
				tpm.Close()
				t.Fatal("OpenTPMDevice succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	if runtime.GOOS == "linux" {
		_, err := identity.OpenTPMDevice(filepath.Join(t.TempDir(), "tpmrm0"))
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing device: err = %v, want one wrapping os.ErrNotExist", err)
		}
	}
}

// TestSWTPM runs the identity against swtpm as a separate process, reached
// over TCP like a real TPM behind a driver, with an EK certificate made by
// swtpm_setup from a local CA.
func TestSWTPM(t *testing.T) {
	sw := testtools.StartSWTPM(t)
	tpm, err := identity.OpenTPMDevice(sw.Addr)
	if err != nil {
		t.Fatalf("OpenTPMDevice(%s): %v", sw.Addr, err)
	}
	dir := t.TempDir()
	id := newTPM(t, tpm, dir, identity.TPMOptions{})
	defer id.Close()

	cert := id.EKCertificate()
	if cert == nil {
		t.Fatal("no EK certificate read from swtpm's NV")
	}
	roots := x509.NewCertPool()
	for _, c := range sw.EKCACerts {
		roots.AddCert(c)
	}
	if _, err := attest.VerifyEKCertificate(cert, id.EKPublic(), roots); err != nil {
		t.Errorf("VerifyEKCertificate against swtpm's local CA: %v", err)
	}
	fileRoots, err := attest.LoadRoots(sw.EKCAFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.VerifyEKCertificate(cert, id.EKPublic(), fileRoots); err != nil {
		t.Errorf("VerifyEKCertificate against LoadRoots(%s): %v", sw.EKCAFile, err)
	}

	ceremony(t, id)
	ak, err := attest.ParseAK(id.AKPublic())
	if err != nil {
		t.Fatal(err)
	}
	qd := sha256.Sum256([]byte("report"))
	q, err := id.Quote(qd[:])
	if err != nil {
		t.Fatalf("Quote: %v", err)
	}
	before, err := attest.VerifyQuote(ak, q.Attest, q.Signature, qd[:], q.PCRs)
	if err != nil {
		t.Fatalf("VerifyQuote: %v", err)
	}
	assertNoTransientHandles(t, tpm)
	if err := id.Close(); err != nil {
		t.Fatal(err)
	}

	// A power cycle keeps the AK (its blobs are on disk, the SRK is
	// derived from the persistent owner seed) and shows in resetCount.
	sw.Restart()
	tpm2nd, err := identity.OpenTPMDevice(sw.Addr)
	if err != nil {
		t.Fatal(err)
	}
	id2 := newTPM(t, tpm2nd, dir, identity.TPMOptions{})
	defer id2.Close()
	if !bytes.Equal(id2.AKPublic(), id.AKPublic()) {
		t.Fatal("AK changed across a TPM restart")
	}
	q, err = id2.Quote(qd[:])
	if err != nil {
		t.Fatal(err)
	}
	after, err := attest.VerifyQuote(ak, q.Attest, q.Signature, qd[:], q.PCRs)
	if err != nil {
		t.Fatal(err)
	}
	if after.Clock.ResetCount <= before.Clock.ResetCount {
		t.Errorf("resetCount %d after restart, was %d; want it to grow", after.Clock.ResetCount, before.Clock.ResetCount)
	}
	t.Logf("clock before restart %+v, after %+v", before.Clock, after.Clock)
}

func BenchmarkQuote(b *testing.B) {
	qd := sha256.Sum256([]byte("report"))
	run := func(b *testing.B, tpm transport.TPM) {
		id := newTPM(b, tpm, b.TempDir(), identity.TPMOptions{})
		b.ResetTimer()
		for b.Loop() {
			if _, err := id.Quote(qd[:]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("simulator", func(b *testing.B) {
		tpm, sim := testtools.Simulator(b, 1)
		defer sim.Close()
		run(b, tpm)
	})
	b.Run("swtpm", func(b *testing.B) {
		sw := testtools.StartSWTPM(b)
		tpm, err := identity.OpenTPMDevice(sw.Addr)
		if err != nil {
			b.Fatal(err)
		}
		defer tpm.Close()
		run(b, tpm)
	})
}
