package attest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-tpm/tpm2"

	"github.com/posture-project/posture/agent/identity"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/testtools/fuzzseed"
	"github.com/posture-project/posture/internal/testtools/softquote"
)

// simulatorQuotes is testdata/quotes/simulator.json: an AK and quotes the
// go-tpm-tools TPM simulator made with it, real TPM output whose AK is
// fixed, so that the fuzz targets can verify them in every run. When the
// file is missing, POSTURE_WRITE_FUZZ_SEEDS=1 makes it afresh (and the
// seeds in testdata/fuzz that hold its quotes should then be made again).
const simulatorQuotes = "testdata/quotes/simulator.json"

type quoteFixture struct {
	AK     []byte         `json:"ak"` // marshalled TPMT_PUBLIC
	Quotes []fixtureQuote `json:"quotes"`
}

type fixtureQuote struct {
	Attest         []byte            `json:"attest"`
	Signature      []byte            `json:"signature"`
	QualifyingData []byte            `json:"qualifying_data"`
	PCRs           map[uint32][]byte `json:"pcrs"`
}

// loadQuoteFixture reads simulatorQuotes, making it first when it is
// missing and seeds are being written.
func loadQuoteFixture(f *testing.F) quoteFixture {
	f.Helper()
	if _, err := os.Stat(simulatorQuotes); errors.Is(err, os.ErrNotExist) && os.Getenv(fuzzseed.WriteSeedsEnv) == "1" {
		d := newDevice(f, 41, identity.TPMOptions{PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 16, 23}})
		d.extendPCR(f, 16, "bootloader")
		d.extendPCR(f, 23, "kernel")
		fx := quoteFixture{AK: d.id.AKPublic()}
		for _, data := range []string{"posture.v1.report nonce report", "another report", ""} {
			var qd []byte
			if data != "" {
				sum := sha256.Sum256([]byte(data))
				qd = sum[:]
			}
			q := d.quote(f, qd)
			fx.Quotes = append(fx.Quotes, fixtureQuote{Attest: q.Attest, Signature: q.Signature, QualifyingData: qd, PCRs: q.PCRs})
		}
		b, err := json.MarshalIndent(fx, "", "  ")
		if err != nil {
			f.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(simulatorQuotes), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(simulatorQuotes, append(b, '\n'), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	b, err := os.ReadFile(simulatorQuotes)
	if err != nil {
		f.Fatalf("%v (POSTURE_WRITE_FUZZ_SEEDS=1 makes it with the TPM simulator)", err)
	}
	var fx quoteFixture
	if err := json.Unmarshal(b, &fx); err != nil {
		f.Fatalf("%s: %v", simulatorQuotes, err)
	}
	return fx
}

// encodePCRs lays PCR values out as the fuzz targets read them: an index
// byte, then 32 bytes of value, per PCR.
func encodePCRs(pcrs map[uint32][]byte) []byte {
	var b []byte
	for _, p := range slices.Sorted(maps.Keys(pcrs)) {
		b = append(append(b, byte(p)), pcrs[p]...)
	}
	return b
}

func decodePCRs(b []byte) map[uint32][]byte {
	m := map[uint32][]byte{}
	for len(b) > 0 {
		n := min(len(b), 1+sha256.Size)
		m[uint32(b[0])] = bytes.Clone(b[1:n])
		b = b[n:]
	}
	return m
}

// FuzzVerifyQuote verifies arbitrary attestation, signature, qualifying
// data and PCR values with two AKs: a real one of the TPM simulator, and
// a software one. VerifyQuote must never panic, must refuse with one of
// its four sentinels, and must accept only an attestation that AK signed,
// with the qualifying data it was made for, returning the PCR values sent,
// which hash to the digest the attestation holds.
func FuzzVerifyQuote(f *testing.F) {
	fx := loadQuoteFixture(f)
	simAK, err := attest.ParseAK(fx.AK)
	if err != nil {
		f.Fatalf("%s: %v", simulatorQuotes, err)
	}
	soft := softquote.NewAK("attest fuzz AK")
	softAK, err := attest.ParseAK(soft.Public)
	if err != nil {
		f.Fatal(err)
	}
	// What each AK signed: SHA-256 of the attestation → qualifying data.
	signed := map[*attest.AK]map[[sha256.Size]byte][]byte{simAK: {}, softAK: {}}
	for _, q := range fx.Quotes {
		signed[simAK][sha256.Sum256(q.Attest)] = q.QualifyingData
		fuzzseed.Add(f, q.Attest, q.Signature, q.QualifyingData, encodePCRs(q.PCRs))
	}
	q0 := fx.Quotes[0]
	fuzzseed.Add(f, q0.Attest, q0.Signature, fx.Quotes[1].QualifyingData, encodePCRs(q0.PCRs)) // another report's digest
	for i, pcrs := range []map[uint32][]byte{softquote.PCRs("a"), {7: softquote.PCRs("b")[7]}, {}} {
		qd := bytes.Repeat([]byte{byte(i)}, 32)
		a, sig := soft.Quote(qd, pcrs, softquote.Clock{Clock: uint64(i) * 1000, ResetCount: 2})
		signed[softAK][sha256.Sum256(a)] = qd
		fuzzseed.Add(f, a, sig, qd, encodePCRs(pcrs))
	}
	notQuote := tpm2.Marshal(tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestCertify,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{})})
	fuzzseed.Add(f, notQuote, soft.Sign(notQuote), []byte{}, []byte{})
	fuzzseed.Add(f, []byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18}, []byte{0x00, 0x18, 0x00, 0x0b}, []byte{}, []byte{0})

	f.Fuzz(func(t *testing.T, attestation, signature, qd, pcrBytes []byte) {
		pcrs := decodePCRs(pcrBytes)
		for _, ak := range []*attest.AK{simAK, softAK} {
			res, err := attest.VerifyQuote(ak, attestation, signature, qd, pcrs)
			if err != nil {
				if !errors.Is(err, attest.ErrQuoteMalformed) && !errors.Is(err, attest.ErrQuoteSignature) &&
					!errors.Is(err, attest.ErrQualifyingData) && !errors.Is(err, attest.ErrPCRMismatch) {
					t.Fatalf("VerifyQuote refused with %v, which is none of its sentinels", err)
				}
				continue
			}
			made, ok := signed[ak][sha256.Sum256(attestation)]
			if !ok || !bytes.Equal(made, qd) {
				t.Fatalf("VerifyQuote accepted an attestation the AK did not sign for this qualifying data (signed: %v)", ok)
			}
			if diff := cmp.Diff(pcrs, res.PCRs); diff != "" {
				t.Fatalf("verified PCR values differ from those sent (-sent +verified):\n%s", diff)
			}
			a, err := tpm2.Unmarshal[tpm2.TPMSAttest](attestation)
			if err != nil {
				t.Fatalf("accepted an attestation that does not parse: %v", err)
			}
			info, err := a.Attested.Quote()
			if err != nil {
				t.Fatalf("accepted an attestation that is not a quote: %v", err)
			}
			h := sha256.New()
			for _, p := range slices.Sorted(maps.Keys(pcrs)) {
				h.Write(pcrs[p])
			}
			if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) || res.Clock.Clock != a.ClockInfo.Clock || res.Clock.ResetCount != a.ClockInfo.ResetCount {
				t.Fatal("verified content is not what the attestation holds")
			}
		}
	})
}

// FuzzParseAK parses arbitrary bytes as an AK public area. ParseAK must
// never panic; what it accepts is exactly the bytes sent, a restricted,
// TPM-resident ECDSA-SHA256 signing key on P-256, named as the TPM names
// it (SHA-256 over the public area).
func FuzzParseAK(f *testing.F) {
	fx := loadQuoteFixture(f)
	fuzzseed.Add(f, fx.AK)
	soft := softquote.NewAK("attest fuzz AK")
	fuzzseed.Add(f, soft.Public)
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](soft.Public)
	if err != nil {
		f.Fatal(err)
	}
	for _, mod := range []func(*tpm2.TPMTPublic){
		func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false },
		func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true },
		func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 },
		func(p *tpm2.TPMTPublic) {
			parms, _ := p.Parameters.ECCDetail()
			parms.CurveID = tpm2.TPMECCNistP384
		},
		func(p *tpm2.TPMTPublic) {
			p.Type = tpm2.TPMAlgRSA
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{KeyBits: 2048})
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
		},
	} {
		c := *pub
		c.Parameters = clonedParms(pub)
		mod(&c)
		fuzzseed.Add(f, tpm2.Marshal(c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ak, err := attest.ParseAK(data)
		if err != nil {
			return
		}
		if !bytes.Equal(ak.Raw, data) {
			t.Fatal("ParseAK kept other bytes than it was given")
		}
		p, err := tpm2.Unmarshal[tpm2.TPMTPublic](data)
		if err != nil {
			t.Fatalf("ParseAK accepted bytes that do not parse: %v", err)
		}
		a := p.ObjectAttributes
		if p.Type != tpm2.TPMAlgECC || p.NameAlg != tpm2.TPMAlgSHA256 || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.SignEncrypt || a.Decrypt {
			t.Fatalf("ParseAK accepted an AK with type %#x, nameAlg %#x, attributes %+v", p.Type, p.NameAlg, a)
		}
		key, ok := ak.Public.(*ecdsa.PublicKey)
		if !ok || key.Curve != elliptic.P256() {
			t.Fatalf("ParseAK accepted a %T key", ak.Public)
		}
		sum := sha256.Sum256(data)
		if want := append([]byte{0x00, 0x0b}, sum[:]...); !bytes.Equal(ak.Name, want) {
			t.Fatalf("AK name %x, want %x", ak.Name, want)
		}
	})
}

// clonedParms copies an ECC public area's parameters, which hold a pointer.
func clonedParms(p *tpm2.TPMTPublic) tpm2.TPMUPublicParms {
	parms, err := p.Parameters.ECCDetail()
	if err != nil {
		panic(err)
	}
	c := *parms
	return tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
}
