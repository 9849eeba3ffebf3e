package identity

import (
	"bytes"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"

	"github.com/posture-project/posture/internal/durable"
)

// KindTPM names the TPM identity in reports and on the wire.
const KindTPM = "tpm"

// NV indices of the EK certificates, from the TCG EK Credential Profile
// (low range: RSA 2048 and ECC NIST P-256 templates).
const (
	nvRSAEKCert = 0x01c00002
	nvECCEKCert = 0x01c0000a
)

// Files in the state directory that let later runs load the same AK.
// They hold a TPM2B_PUBLIC and a TPM2B_PRIVATE, the layout tpm2_load reads.
const (
	akPublicFile  = "tpm-ak.pub"
	akPrivateFile = "tpm-ak.priv"
)

// maxQuoteAttempts bounds the retries when a PCR is extended between the
// quote and the PCR read, which makes the values disagree with the quote.
const maxQuoteAttempts = 3

// maxPCR is the highest PCR index of a PC Client TPM.
const maxPCR = 23

// TPMOptions configure a TPM identity.
type TPMOptions struct {
	// PCRs is the sha256 PCR selection every quote covers. Empty means
	// PCRs 0-7, the firmware and boot loader measurements.
	PCRs []int
}

// TPM is a device identity whose keys live in a TPM: a restricted ECC P-256
// attestation key (AK) under the owner hierarchy's storage root key, and the
// endorsement key (EK) that the TPM manufacturer certified. Its methods are
// safe for concurrent use; they run one TPM command sequence at a time.
type TPM struct {
	mu     sync.Mutex
	tpm    transport.TPM
	closer io.Closer

	akPublic  tpm2.TPM2BPublic
	akPrivate tpm2.TPM2BPrivate
	akRaw     []byte

	ekTemplate tpm2.TPMTPublic
	ekRaw      []byte
	ekCert     []byte

	pcrs []uint32
}

// akTemplate is the AK: it signs only TPM-generated structures
// (restricted), so a quote by it cannot be forged by signing chosen bytes.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{
				HashAlg: tpm2.TPMAlgSHA256,
			}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// OpenTPMDevice opens a TPM. An empty addr means the platform TPM:
// /dev/tpmrm0 (the kernel resource manager) on Linux, TBS on Windows; other
// systems return an error wrapping errors.ErrUnsupported. On Linux addr may
// also be a device path. "tcp://host:port" reaches a TPM simulator speaking
// the Microsoft simulator protocol (swtpm, mssim) with its platform port at
// port+1; it must already be powered on and started, as swtpm is with
// --flags not-need-init,startup-clear. The caller closes the result, or hands
// it to NewTPM, which then closes it.
func OpenTPMDevice(addr string) (transport.TPMCloser, error) {
	if rest, ok := strings.CutPrefix(addr, "tcp://"); ok {
		return openTCP(rest)
	}
	return openPlatform(addr)
}

func openTCP(hostport string) (transport.TPMCloser, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("TPM address tcp://%s: want tcp://host:port: %w", hostport, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || p == 65535 {
		return nil, fmt.Errorf("TPM address tcp://%s: port must be 1-65534 (the platform port is port+1)", hostport)
	}
	t, err := tcp.Open(tcp.Config{
		CommandAddress:  net.JoinHostPort(host, port),
		PlatformAddress: net.JoinHostPort(host, strconv.FormatUint(p+1, 10)),
	})
	if err != nil {
		return nil, fmt.Errorf("open TPM at tcp://%s (is swtpm running with --server and --ctrl on ports %d and %d?): %w", hostport, p, p+1, err)
	}
	return t, nil
}

// NewTPM builds the TPM identity. On first use it creates the AK and writes
// its public and private blobs to stateDir (mode 0600); the private blob is
// encrypted by the TPM and useless elsewhere. Later calls load that same AK,
// so the collector's enrollment stays valid. It reads the EK certificate
// from NV: with an RSA certificate the EK is the TCG RSA-2048 EK, else with an
// ECC certificate the ECC P-256 EK, else the RSA EK without certificate.
//
// NewTPM takes ownership of tpm when it succeeds: Close closes it if it is
// an io.Closer, as the result of OpenTPMDevice is. On error the caller
// keeps it. Every transient object is flushed before a method returns, so the
// TPM works without a resource manager (swtpm, /dev/tpm0).
func NewTPM(tpm transport.TPM, stateDir string, opts TPMOptions) (*TPM, error) {
	pcrs, err := pcrSelection(opts.PCRs)
	if err != nil {
		return nil, err
	}
	t := &TPM{tpm: tpm, pcrs: pcrs}
	if err := t.readEK(); err != nil {
		return nil, err
	}
	if err := t.loadOrCreateAK(stateDir); err != nil {
		return nil, err
	}
	if c, ok := tpm.(io.Closer); ok {
		t.closer = c
	}
	return t, nil
}

func pcrSelection(in []int) ([]uint32, error) {
	if len(in) == 0 {
		return []uint32{0, 1, 2, 3, 4, 5, 6, 7}, nil
	}
	out := make([]uint32, 0, len(in))
	for _, p := range in {
		if p < 0 || p > maxPCR {
			return nil, fmt.Errorf("PCR %d out of range: a TPM has PCRs 0-%d", p, maxPCR)
		}
		out = append(out, uint32(p))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Kind is "tpm".
func (t *TPM) Kind() string { return KindTPM }

// EKCertificate is the DER EK certificate read from NV, or nil when the TPM
// holds none (common on fTPMs whose vendor serves certificates online).
func (t *TPM) EKCertificate() []byte { return bytes.Clone(t.ekCert) }

// EKPublic is the marshalled TPMT_PUBLIC of the EK, which the collector
// encrypts its MakeCredential challenge to.
func (t *TPM) EKPublic() []byte { return bytes.Clone(t.ekRaw) }

// AKPublic is the marshalled TPMT_PUBLIC of the AK.
func (t *TPM) AKPublic() []byte { return bytes.Clone(t.akRaw) }

// Close releases the transport when NewTPM owns it (see NewTPM).
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closer == nil {
		return nil
	}
	err := t.closer.Close()
	t.closer = nil
	if err != nil {
		return fmt.Errorf("close TPM: %w", err)
	}
	return nil
}

// readEK picks the EK the certificate in NV speaks for and records its
// public area. The EK is a primary key: recreating it from the same
// template always yields the same key, so nothing is stored.
func (t *TPM) readEK() error {
	t.ekTemplate = tpm2.RSAEKTemplate
	for _, c := range []struct {
		index    uint32
		template tpm2.TPMTPublic
	}{
		{nvRSAEKCert, tpm2.RSAEKTemplate},
		{nvECCEKCert, tpm2.ECCEKTemplate},
	} {
		cert, err := t.readNV(c.index)
		if err != nil {
			return fmt.Errorf("read EK certificate at NV index %#x: %w", c.index, err)
		}
		if cert != nil {
			t.ekCert = trimDER(cert)
			t.ekTemplate = c.template
			break
		}
	}
	ek, err := t.createEK()
	if err != nil {
		return err
	}
	defer t.flush(ek.ObjectHandle)
	t.ekRaw = bytes.Clone(ek.OutPublic.Bytes())
	return nil
}

func (t *TPM) createEK() (*tpm2.CreatePrimaryResponse, error) {
	ek, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(t.ekTemplate),
	}.Execute(t.tpm)
	if err != nil {
		return nil, fmt.Errorf("create EK (is the endorsement hierarchy enabled, with an empty password?): %w", err)
	}
	return ek, nil
}

// readNV returns the contents of an NV index, or nil when it is not defined.
func (t *TPM) readNV(index uint32) ([]byte, error) {
	h := tpm2.TPMHandle(index)
	pub, err := tpm2.NVReadPublic{NVIndex: h}.Execute(t.tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("parse NV public area: %w", err)
	}
	nv := tpm2.NamedHandle{Handle: h, Name: pub.NVName}
	// EK certificate indices are normally readable with their own empty
	// auth; some are readable by the owner only.
	ownerRead := !info.Attributes.AuthRead && info.Attributes.OwnerRead
	chunk := t.nvBufferMax()
	out := make([]byte, 0, info.DataSize)
	for off := uint16(0); off < info.DataSize; {
		n := min(chunk, info.DataSize-off)
		cmd := tpm2.NVRead{AuthHandle: nv, NVIndex: nv, Size: n, Offset: off}
		if ownerRead {
			cmd.AuthHandle = tpm2.TPMRHOwner
		}
		rsp, err := cmd.Execute(t.tpm)
		if err != nil {
			return nil, fmt.Errorf("NV read at offset %d: %w", off, err)
		}
		if len(rsp.Data.Buffer) == 0 {
			return nil, fmt.Errorf("NV read at offset %d returned no data", off)
		}
		out = append(out, rsp.Data.Buffer...)
		off += uint16(len(rsp.Data.Buffer))
	}
	return out, nil
}

// nvBufferMax is how much one NV_Read may return on this TPM.
func (t *TPM) nvBufferMax() uint16 {
	const fallback = 512 // every TPM 2.0 supports at least this much
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(tpm2.TPMPTNVBufferMax),
		PropertyCount: 1,
	}.Execute(t.tpm)
	if err != nil {
		return fallback
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != tpm2.TPMPTNVBufferMax {
		return fallback
	}
	v := props.TPMProperty[0].Value
	if v == 0 || v > 0xffff {
		return fallback
	}
	return uint16(v)
}

// trimDER cuts the padding some TPM vendors leave after the certificate in
// its NV index. Contents that are not DER are returned as they are and fail
// later, at the collector, with a parse error.
func trimDER(b []byte) []byte {
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil {
		return b
	}
	return b[:len(b)-len(rest)]
}

// srk creates the storage root key: the TCG ECC P-256 SRK template in the
// owner hierarchy, which always yields the same key for the same owner seed.
func (t *TPM) srk() (*tpm2.CreatePrimaryResponse, error) {
	srk, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t.tpm)
	if err != nil {
		return nil, fmt.Errorf("create storage root key (is the owner hierarchy enabled, with an empty password?): %w", err)
	}
	return srk, nil
}

func (t *TPM) loadOrCreateAK(stateDir string) error {
	pubPath := filepath.Join(stateDir, akPublicFile)
	privPath := filepath.Join(stateDir, akPrivateFile)
	pubBlob, pubErr := os.ReadFile(pubPath)
	privBlob, privErr := os.ReadFile(privPath)
	switch {
	case pubErr == nil && privErr == nil:
		pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBlob)
		if err != nil {
			return fmt.Errorf("parse %s (remove %s and %s to create a new AK, then enroll again): %w", pubPath, pubPath, privPath, err)
		}
		priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBlob)
		if err != nil {
			return fmt.Errorf("parse %s (remove %s and %s to create a new AK, then enroll again): %w", privPath, pubPath, privPath, err)
		}
		t.akPublic, t.akPrivate = *pub, *priv
		// Loading proves the blobs belong to this TPM's SRK.
		srk, ak, err := t.loadAK()
		if err != nil {
			return fmt.Errorf("AK in %s does not load on this TPM (was the TPM cleared or the directory copied from another device? remove %s and %s, then enroll again): %w", stateDir, akPublicFile, akPrivateFile, err)
		}
		t.flush(ak.ObjectHandle)
		t.flush(srk.ObjectHandle)
	case errors.Is(pubErr, fs.ErrNotExist) && errors.Is(privErr, fs.ErrNotExist):
		if err := t.createAK(stateDir, pubPath, privPath); err != nil {
			return err
		}
	case pubErr != nil && !errors.Is(pubErr, fs.ErrNotExist):
		return fmt.Errorf("read AK public blob: %w", pubErr)
	case privErr != nil && !errors.Is(privErr, fs.ErrNotExist):
		return fmt.Errorf("read AK private blob: %w", privErr)
	default:
		return fmt.Errorf("AK state in %s is incomplete: %s and %s must both exist (remove the one left to create a new AK, then enroll again)", stateDir, akPublicFile, akPrivateFile)
	}
	t.akRaw = bytes.Clone(t.akPublic.Bytes())
	return nil
}

func (t *TPM) createAK(stateDir, pubPath, privPath string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("create TPM state directory: %w", err)
	}
	srk, err := t.srk()
	if err != nil {
		return err
	}
	defer t.flush(srk.ObjectHandle)
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		InPublic:     tpm2.New2B(akTemplate),
	}.Execute(t.tpm)
	if err != nil {
		return fmt.Errorf("create AK: %w", err)
	}
	t.akPublic, t.akPrivate = rsp.OutPublic, rsp.OutPrivate
	// The private blob goes first: a public blob alone is never taken
	// for a complete AK.
	if err := durable.WriteFileAtomic(privPath, tpm2.Marshal(rsp.OutPrivate), 0o600); err != nil {
		return fmt.Errorf("save AK: %w", err)
	}
	if err := durable.WriteFileAtomic(pubPath, tpm2.Marshal(rsp.OutPublic), 0o600); err != nil {
		return fmt.Errorf("save AK: %w", err)
	}
	return nil
}

// loadAK loads the SRK and the AK under it; the caller flushes both.
func (t *TPM) loadAK() (srk *tpm2.CreatePrimaryResponse, ak *tpm2.LoadResponse, err error) {
	srk, err = t.srk()
	if err != nil {
		return nil, nil, err
	}
	ak, err = tpm2.Load{
		ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		InPrivate:    t.akPrivate,
		InPublic:     t.akPublic,
	}.Execute(t.tpm)
	if err != nil {
		t.flush(srk.ObjectHandle)
		return nil, nil, fmt.Errorf("load AK: %w", err)
	}
	return srk, ak, nil
}

// flush frees a transient handle. A failure leaves a slot taken until the
// TPM resets, which the next command reports as out of memory, so it is
// not worth failing an otherwise complete operation over.
func (t *TPM) flush(h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(t.tpm)
}

// ActivateCredential answers the collector's MakeCredential challenge: the
// TPM releases the secret only if the EK decrypts it and the AK it names is
// loaded in this same TPM, which proves the AK's residency to the collector.
func (t *TPM) ActivateCredential(credentialBlob, encryptedSecret []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	srk, ak, err := t.loadAK()
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	defer t.flush(srk.ObjectHandle)
	defer t.flush(ak.ObjectHandle)
	ek, err := t.createEK()
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	defer t.flush(ek.ObjectHandle)

	// The TCG EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT).
	sess, closeSess, err := tpm2.PolicySession(t.tpm, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return nil, fmt.Errorf("activate credential: start policy session: %w", err)
	}
	defer func() { _ = closeSess() }()
	if _, err := (tpm2.PolicySecret{
		AuthHandle:    tpm2.TPMRHEndorsement,
		PolicySession: sess.Handle(),
		NonceTPM:      sess.NonceTPM(),
	}).Execute(t.tpm); err != nil {
		return nil, fmt.Errorf("activate credential: satisfy the EK policy with endorsement authorization: %w", err)
	}
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.NamedHandle{Handle: ak.ObjectHandle, Name: ak.Name},
		KeyHandle:      tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name, Auth: sess},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encryptedSecret},
	}.Execute(t.tpm)
	if err != nil {
		return nil, fmt.Errorf("activate credential: the TPM rejected the challenge; it was made for another TPM's EK or another AK (enroll again with this device's EK and AK): %w", err)
	}
	return bytes.Clone(rsp.CertInfo.Buffer), nil
}

// Quote is a TPM2_Quote by the AK and the PCR values it covers.
type Quote struct {
	// Attest is the TPMS_ATTEST structure exactly as the TPM signed it.
	Attest []byte
	// Signature is the marshalled TPMT_SIGNATURE over Attest.
	Signature []byte
	// PCRs maps each quoted sha256 PCR index to its value.
	PCRs map[uint32][]byte
}

// Quote signs qualifyingData (at most 64 bytes; the report digest) together
// with the current PCR values. It reads the PCRs after quoting and quotes
// again if a PCR was extended in between, so the values match the quote.
func (t *TPM) Quote(qualifyingData []byte) (*Quote, error) {
	if len(qualifyingData) > 64 {
		return nil, fmt.Errorf("quote: qualifying data is %d bytes, a TPM accepts at most 64 (send a digest)", len(qualifyingData))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	srk, ak, err := t.loadAK()
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	defer t.flush(srk.ObjectHandle)
	defer t.flush(ak.ObjectHandle)

	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: pcrBitmap(t.pcrs),
	}}}
	for range maxQuoteAttempts {
		rsp, err := tpm2.Quote{
			SignHandle:     tpm2.NamedHandle{Handle: ak.ObjectHandle, Name: ak.Name},
			QualifyingData: tpm2.TPM2BData{Buffer: qualifyingData},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}.Execute(t.tpm)
		if err != nil {
			return nil, fmt.Errorf("quote: %w", err)
		}
		pcrs, err := t.readPCRs()
		if err != nil {
			return nil, fmt.Errorf("quote: %w", err)
		}
		attest := bytes.Clone(rsp.Quoted.Bytes())
		quoted, err := quotedDigest(attest)
		if err != nil {
			return nil, fmt.Errorf("quote: %w", err)
		}
		if bytes.Equal(quoted, pcrDigest(t.pcrs, pcrs)) {
			return &Quote{Attest: attest, Signature: tpm2.Marshal(rsp.Signature), PCRs: pcrs}, nil
		}
	}
	return nil, fmt.Errorf("quote: PCRs changed between quote and read %d times in a row; something is extending PCRs %v continuously", maxQuoteAttempts, t.pcrs)
}

func pcrBitmap(pcrs []uint32) []byte {
	b := make([]byte, 3) // PCRs 0-23, the PC Client size
	for _, p := range pcrs {
		b[p/8] |= 1 << (p % 8)
	}
	return b
}

// readPCRs reads the selected sha256 PCRs. TPM2_PCR_Read returns at most 8
// digests per call, and may return fewer: it asks again for what is missing.
func (t *TPM) readPCRs() (map[uint32][]byte, error) {
	out := make(map[uint32][]byte, len(t.pcrs))
	for {
		var missing []uint32
		for _, p := range t.pcrs {
			if _, ok := out[p]; !ok {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 {
			return out, nil
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{
			PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: pcrBitmap(missing[:min(8, len(missing))])}},
		}}.Execute(t.tpm)
		if err != nil {
			return nil, fmt.Errorf("read PCRs: %w", err)
		}
		var got []uint32
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			if s.Hash != tpm2.TPMAlgSHA256 {
				continue
			}
			for i, b := range s.PCRSelect {
				for bit := range 8 {
					if b&(1<<bit) != 0 {
						got = append(got, uint32(i*8+bit))
					}
				}
			}
		}
		if len(got) == 0 || len(got) != len(rsp.PCRValues.Digests) {
			return nil, fmt.Errorf("read PCRs: TPM returned %d sha256 PCRs and %d values for %v (is the sha256 PCR bank active?)", len(got), len(rsp.PCRValues.Digests), missing)
		}
		for i, p := range got {
			out[p] = bytes.Clone(rsp.PCRValues.Digests[i].Buffer)
		}
	}
}

// quotedDigest extracts the PCR digest from the attestation the TPM just
// signed; the collector verifies the whole structure independently.
func quotedDigest(attest []byte) ([]byte, error) {
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
	if err != nil {
		return nil, fmt.Errorf("parse attestation: %w", err)
	}
	q, err := a.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("parse attestation: %w", err)
	}
	return q.PCRDigest.Buffer, nil
}

func pcrDigest(order []uint32, pcrs map[uint32][]byte) []byte {
	h := sha256.New()
	for _, p := range order {
		h.Write(pcrs[p])
	}
	return h.Sum(nil)
}
