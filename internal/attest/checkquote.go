package attest

import (
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Sizes of the tpm2-tss C structures that tpm2-tools writes to and reads
// from its "serialized" PCR file: tpm2_checkquote fread()s them whole.
const (
	tssNumPCRBanks      = 16 // TPM2_NUM_PCR_BANKS
	tssPCRSelectMax     = 4  // TPM2_PCR_SELECT_MAX
	tssPCRSelectionSize = 8  // TPMS_PCR_SELECTION: hash, sizeofSelect, pcrSelect[4], padding
	tssDigestBufferSize = 64 // sizeof(TPMU_HA)
	tssDigestsPerList   = 8  // TPML_DIGEST holds at most 8 digests
	tssDigestSize       = 2 + tssDigestBufferSize
	tssDigestListSize   = 4 + tssDigestsPerList*tssDigestSize
	tssPCRSelectionList = 4 + tssNumPCRBanks*tssPCRSelectionSize

	pcClientPCRs = 24
)

// WriteCheckquoteFiles writes a quote in the files tpm2-tools' independent
// verifier reads, so anyone can check a device's quote without Posture:
//
//	tpm2_checkquote -u ak.pem -m quote.msg -s quote.sig -g sha256 -q HEX -f pcrs.bin
//
// ak.pem is the AK public key (PKIX PEM), quote.msg the TPMS_ATTEST bytes,
// quote.sig the marshalled TPMT_SIGNATURE, and pcrs.bin the PCR values in
// the "serialized" layout: the TPML_PCR_SELECTION C structure, a uint32
// count of digest lists, then that many TPML_DIGEST structures of up to 8
// digests each, all little-endian. pcrs is read in ascending PCR order.
func WriteCheckquoteFiles(dir string, ak *AK, attest, signature []byte, pcrs map[uint32][]byte) error {
	if ak == nil {
		return fmt.Errorf("write checkquote files: no AK; parse it with ParseAK")
	}
	der, err := x509.MarshalPKIXPublicKey(ak.Public)
	if err != nil {
		return fmt.Errorf("write checkquote files: encode AK: %w", err)
	}
	pcrFile, err := serializedPCRs(pcrs)
	if err != nil {
		return fmt.Errorf("write checkquote files: %w", err)
	}
	for name, data := range map[string][]byte{
		"ak.pem":    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"quote.msg": attest,
		"quote.sig": signature,
		"pcrs.bin":  pcrFile,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("write checkquote files: %w", err)
		}
	}
	return nil
}

func serializedPCRs(pcrs map[uint32][]byte) ([]byte, error) {
	order := slices.Sorted(maps.Keys(pcrs))
	var bitmap [tssPCRSelectMax]byte
	for _, p := range order {
		if p >= pcClientPCRs {
			return nil, fmt.Errorf("PCR %d is beyond the %d PCRs of a PC Client TPM", p, pcClientPCRs)
		}
		if len(pcrs[p]) > tssDigestBufferSize {
			return nil, fmt.Errorf("PCR %d value is %d bytes, more than a TPM digest", p, len(pcrs[p]))
		}
		bitmap[p/8] |= 1 << (p % 8)
	}
	lists := (len(order) + tssDigestsPerList - 1) / tssDigestsPerList

	out := make([]byte, tssPCRSelectionList+4+lists*tssDigestListSize)
	le := binary.LittleEndian
	if len(order) > 0 {
		le.PutUint32(out[0:], 1)
		sel := out[4:]
		le.PutUint16(sel[0:], uint16(tpm2.TPMAlgSHA256))
		sel[2] = pcClientPCRs / 8 // sizeofSelect, as in the quote
		copy(sel[3:3+tssPCRSelectMax], bitmap[:])
	}
	le.PutUint32(out[tssPCRSelectionList:], uint32(lists))
	for i, p := range order {
		list := out[tssPCRSelectionList+4+(i/tssDigestsPerList)*tssDigestListSize:]
		le.PutUint32(list[0:], uint32(min(tssDigestsPerList, len(order)-i/tssDigestsPerList*tssDigestsPerList)))
		d := list[4+(i%tssDigestsPerList)*tssDigestSize:]
		le.PutUint16(d[0:], uint16(len(pcrs[p])))
		copy(d[2:], pcrs[p])
	}
	return out, nil
}
