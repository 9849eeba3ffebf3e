package envelope_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	"github.com/posture-project/posture/internal/testtools/fuzzseed"
	"github.com/posture-project/posture/internal/testtools/softquote"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The fuzz targets below verify with fixed keys, so reports signed in one
// run (kept in testdata/fuzz) verify in every other.
var (
	deviceKey = softquote.Key("envelope device")
	otherKey  = softquote.Key("envelope other device")
	deviceAK  = softquote.NewAK("envelope device AK")
)

// sampleReport is a report as an agent on Linux sends it, numbered seq;
// big adds the volumes of a storage server.
func sampleReport(seq uint64, big bool) []byte {
	at := timestamppb.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	meta := func() *posturev1.SignalMeta {
		return &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: at, Source: posturev1.Source_SOURCE_OS}
	}
	r := &posturev1.PostureReport{
		DeviceId: "3f1c0d9e8b7a6f5e4d3c2b1a09f8e7d6", Seq: seq, CreatedAt: at,
		Agent: &posturev1.AgentInfo{Version: "0.1.0", Identity: "software"},
		Os: &posturev1.OSInfo{Meta: meta(), Platform: "linux", Name: "debian", Version: "12", KernelVersion: "6.1.0-18-amd64",
			Arch: "amd64", Hostname: "laptop-7"},
		Disk: &posturev1.DiskEncryption{Meta: meta(), SystemEncrypted: true,
			Volumes: []*posturev1.Volume{{MountPoint: "/", Device: "/dev/mapper/root", Encrypted: true, Method: "LUKS2"}}},
		SecureBoot: &posturev1.SecureBoot{Meta: meta(), Enabled: true},
		Updates:    &posturev1.Updates{Meta: meta(), Manager: "apt", Pending: 3, SecurityPending: 1},
		Firewall:   &posturev1.Firewall{Meta: meta(), Enabled: true, Product: "nftables"},
		ScreenLock: &posturev1.ScreenLock{Meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: "no graphical session"}},
		AutoUpdate: &posturev1.AutoUpdate{Meta: meta(), Enabled: true, Mechanism: "unattended-upgrades"},
	}
	if seq > 1 {
		prev := sha256.Sum256([]byte{byte(seq - 1)})
		r.PrevDigest = prev[:]
	}
	if big {
		for i := range 40 {
			r.Disk.Volumes = append(r.Disk.Volumes, &posturev1.Volume{MountPoint: "/srv/data" + string(rune('a'+i%26)), Device: "/dev/sdb1"})
		}
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		panic(err)
	}
	return b
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzVerifySoftware decodes arbitrary bytes as a SignedReport and
// verifies it with a fixed device key. It must never panic, must refuse
// with ErrMalformed or ErrBadSignature, and must accept only what that key
// signed: the nonce and report bytes of a report it accepts are one of
// those signed below, and what it returns is those exact bytes, decoded.
func FuzzVerifySoftware(f *testing.F) {
	signed := map[[sha256.Size]byte]bool{}
	sign := func(key bool, nonce, report []byte) *posturev1.SignedReport {
		k := otherKey
		if key {
			k = deviceKey
			signed[sha256.Sum256(envelope.Digest(nonce, report))] = true
		}
		sr, err := envelope.SignSoftware(k, nonce, report)
		if err != nil {
			f.Fatal(err)
		}
		return sr
	}
	nonce := bytes.Repeat([]byte{0x5a}, 32)
	good := sign(true, nonce, sampleReport(1, false))
	fuzzseed.Add(f, marshal(f, good))
	fuzzseed.Add(f, marshal(f, sign(true, []byte("n"), sampleReport(2, true))))
	fuzzseed.Add(f, marshal(f, sign(true, nonce, []byte{0x08, 0x01}))) // a report that is only a sequence number
	fuzzseed.Add(f, marshal(f, sign(false, nonce, sampleReport(1, false))))
	flipped := proto.Clone(good).(*posturev1.SignedReport)
	flipped.Report = bytes.Clone(flipped.Report)
	flipped.Report[len(flipped.Report)-1] ^= 1
	fuzzseed.Add(f, marshal(f, flipped))
	withQuote := proto.Clone(good).(*posturev1.SignedReport)
	withQuote.Proof = &posturev1.SignedReport_Tpm{Tpm: &posturev1.TPMQuote{Attest: []byte{0xff, 'T', 'C', 'G'}}}
	fuzzseed.Add(f, marshal(f, withQuote))
	// Signed, but over a report that breaks a limit or does not decode.
	fuzzseed.Add(f, marshal(f, sign(true, nonce, append(sampleReport(3, false), 0x0a, 0x02))))
	fuzzseed.Add(f, marshal(f, sign(true, nonce, []byte{0xff, 0xff, 0xff})))

	f.Fuzz(func(t *testing.T, data []byte) {
		var sr posturev1.SignedReport
		if err := proto.Unmarshal(data, &sr); err != nil {
			return
		}
		_, _ = envelope.ClaimedDevice(&sr), envelope.ClaimedSeq(&sr)
		v, err := envelope.VerifySoftware(&deviceKey.PublicKey, &sr)
		if err != nil {
			if !errors.Is(err, envelope.ErrMalformed) && !errors.Is(err, envelope.ErrBadSignature) {
				t.Fatalf("VerifySoftware refused with %v, which is neither ErrMalformed nor ErrBadSignature", err)
			}
			return
		}
		digest := envelope.Digest(sr.GetNonce(), sr.GetReport())
		if !signed[sha256.Sum256(digest)] {
			t.Fatalf("VerifySoftware accepted a report the device key never signed (nonce %x, %d report bytes)", sr.GetNonce(), len(sr.GetReport()))
		}
		checkVerified(t, v, &sr, digest)
		if _, err := envelope.VerifySoftware(&otherKey.PublicKey, &sr); !errors.Is(err, envelope.ErrBadSignature) {
			t.Fatalf("a report signed by the device key verified with another key: %v", err)
		}
		var proof posturev1.SoftwareSignature
		if err := proto.Unmarshal(v.Proof, &proof); err != nil || !bytes.Equal(proof.GetSignature(), sr.GetSoftware().GetSignature()) {
			t.Fatalf("the stored proof is not the signature that verified (%v)", err)
		}
	})
}

// checkVerified asserts that a verified report is exactly what was signed.
func checkVerified(t *testing.T, v *envelope.Verified, sr *posturev1.SignedReport, digest []byte) {
	t.Helper()
	if !bytes.Equal(v.Body, sr.GetReport()) || !bytes.Equal(v.Nonce, sr.GetNonce()) || !bytes.Equal(v.Digest, digest) {
		t.Fatal("verified body, nonce or digest differ from those signed")
	}
	var want posturev1.PostureReport
	if err := proto.Unmarshal(sr.GetReport(), &want); err != nil {
		t.Fatalf("verified a report that does not decode: %v", err)
	}
	if diff := cmp.Diff(&want, v.Report, protocmp.Transform()); diff != "" {
		t.Fatalf("verified report differs from the signed bytes (-signed +verified):\n%s", diff)
	}
	if err := envelope.CheckReport(v.Report); err != nil {
		t.Fatalf("verified a report over the limits: %v", err)
	}
	if len(v.Proof)-len(sr.GetTpm().GetEventLog()) > envelope.MaxProofSize {
		t.Fatalf("verified a proof of %d bytes", len(v.Proof))
	}
}

// FuzzVerifyTPM decodes arbitrary bytes as a SignedReport and verifies it
// as a TPM identity's report with a fixed AK. It must never panic, must
// refuse with one of the sentinels VerifyTPM names, and must accept only a
// quote that AK made for this very report: the attestation of a report it
// accepts is one signed below, for that report's digest, and the PCR
// values it returns are those sent, which hash to the quoted digest.
func FuzzVerifyTPM(f *testing.F) {
	ak, err := attest.ParseAK(deviceAK.Public)
	if err != nil {
		f.Fatal(err)
	}
	quotedFor := map[[sha256.Size]byte][]byte{} // SHA-256 of attest → qualifying data
	quote := func(nonce, report []byte, pcrs map[uint32][]byte, clock uint64, eventLog []byte) *posturev1.SignedReport {
		digest := envelope.Digest(nonce, report)
		a, sig := deviceAK.Quote(digest, pcrs, softquote.Clock{Clock: clock, ResetCount: 3, RestartCount: 1})
		quotedFor[sha256.Sum256(a)] = digest
		q := &posturev1.TPMQuote{Attest: a, Signature: sig, EventLog: eventLog}
		for p := range uint32(24) {
			if v, ok := pcrs[p]; ok {
				q.Pcrs = append(q.Pcrs, &posturev1.PCRValue{Index: p, Value: v})
			}
		}
		return &posturev1.SignedReport{Report: report, Nonce: nonce, Proof: &posturev1.SignedReport_Tpm{Tpm: q}}
	}
	nonce := bytes.Repeat([]byte{0xa5}, 32)
	pcrs := softquote.PCRs("envelope")
	good := quote(nonce, sampleReport(1, false), pcrs, 1_000_000, nil)
	fuzzseed.Add(f, marshal(f, good))
	fuzzseed.Add(f, marshal(f, quote([]byte("nonce"), sampleReport(2, true), map[uint32][]byte{7: pcrs[7]}, 2_000_000, []byte("not an event log"))))
	fuzzseed.Add(f, marshal(f, quote(nonce, sampleReport(3, false), map[uint32][]byte{}, 3_000_000, nil)))
	// A quote for another report, and PCR values other than quoted.
	other := quote(nonce, sampleReport(4, false), pcrs, 4_000_000, nil)
	other.Report = sampleReport(5, false)
	fuzzseed.Add(f, marshal(f, other))
	changed := proto.Clone(good).(*posturev1.SignedReport)
	changed.GetTpm().Pcrs[0].Value = bytes.Repeat([]byte{1}, 32)
	fuzzseed.Add(f, marshal(f, changed))
	twice := proto.Clone(good).(*posturev1.SignedReport)
	twice.GetTpm().Pcrs = append(twice.GetTpm().Pcrs, twice.GetTpm().Pcrs[0])
	fuzzseed.Add(f, marshal(f, twice))
	software := proto.Clone(good).(*posturev1.SignedReport)
	software.Proof = &posturev1.SignedReport_Software{Software: &posturev1.SoftwareSignature{Signature: []byte{0x30, 0x00}}}
	fuzzseed.Add(f, marshal(f, software))

	f.Fuzz(func(t *testing.T, data []byte) {
		var sr posturev1.SignedReport
		if err := proto.Unmarshal(data, &sr); err != nil {
			return
		}
		v, res, err := envelope.VerifyTPM(ak, &sr)
		if err != nil {
			if !errors.Is(err, envelope.ErrMalformed) && !errors.Is(err, envelope.ErrBadSignature) && !errors.Is(err, attest.ErrQuoteMalformed) &&
				!errors.Is(err, attest.ErrQualifyingData) && !errors.Is(err, attest.ErrPCRMismatch) {
				t.Fatalf("VerifyTPM refused with %v, which is none of its sentinels", err)
			}
			return
		}
		q := sr.GetTpm()
		digest := envelope.Digest(sr.GetNonce(), sr.GetReport())
		if want, ok := quotedFor[sha256.Sum256(q.GetAttest())]; !ok || !bytes.Equal(want, digest) {
			t.Fatalf("VerifyTPM accepted an attestation the AK did not make for this report (made: %v)", ok)
		}
		checkVerified(t, v, &sr, digest)
		sent, err := envelope.PCRMap(q.GetPcrs())
		if err != nil {
			t.Fatalf("VerifyTPM accepted PCR values PCRMap refuses: %v", err)
		}
		if diff := cmp.Diff(sent, res.PCRs); diff != "" {
			t.Fatalf("verified PCR values differ from those sent (-sent +verified):\n%s", diff)
		}
		if err := envelope.VerifyProof(nil, ak, digest, nil, q); err != nil {
			t.Fatalf("VerifyProof refuses the quote VerifyTPM accepted: %v", err)
		}
		if err := envelope.VerifyProof(nil, ak, envelope.RenewDigest(sr.GetNonce(), sr.GetReport()), nil, q); err == nil {
			t.Fatal("a report's quote proved a renewal digest")
		}
	})
}
