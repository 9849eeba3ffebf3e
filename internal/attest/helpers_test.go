package attest_test

import (
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/testtools"
)

// device is a simulated device: the TPM and the agent's identity on it.
type device struct {
	tpm transport.TPM
	sim *simulator.Simulator
	id  *identity.TPM
	dir string
}

func newDevice(t testing.TB, seed int64, opts identity.TPMOptions) *device {
	t.Helper()
	tpm, sim := testtools.Simulator(t, seed)
	dir := t.TempDir()
	id, err := identity.NewTPM(tpm, dir, opts)
	if err != nil {
		t.Fatalf("NewTPM: %v", err)
	}
	return &device{tpm: tpm, sim: sim, id: id, dir: dir}
}

func (d *device) ak(t testing.TB) *attest.AK {
	t.Helper()
	ak, err := attest.ParseAK(d.id.AKPublic())
	if err != nil {
		t.Fatalf("ParseAK: %v", err)
	}
	return ak
}

func (d *device) quote(t testing.TB, qd []byte) *identity.Quote {
	t.Helper()
	q, err := d.id.Quote(qd)
	if err != nil {
		t.Fatalf("Quote: %v", err)
	}
	return q
}

// extendPCR changes a PCR the way a boot component measuring itself does.
func (d *device) extendPCR(t testing.TB, pcr uint32, data string) {
	t.Helper()
	if _, err := (tpm2.PCREvent{
		PCRHandle: tpm2.TPMHandle(pcr),
		EventData: tpm2.TPM2BEvent{Buffer: []byte(data)},
	}).Execute(d.tpm); err != nil {
		t.Fatalf("extend PCR %d: %v", pcr, err)
	}
}

// srk creates the SRK the identity uses, to load or create keys under it
// the way the agent does; the caller flushes it.
func (d *device) srk(t testing.TB) *tpm2.CreatePrimaryResponse {
	t.Helper()
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(d.tpm)
	if err != nil {
		t.Fatal(err)
	}
	return srk
}

func (d *device) flush(h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(d.tpm)
}

func cloneMap(m map[uint32][]byte) map[uint32][]byte {
	out := make(map[uint32][]byte, len(m))
	for k, v := range m {
		out[k] = append([]byte(nil), v...)
	}
	return out
}
