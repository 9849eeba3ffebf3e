package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
)

// KeySHA256 is the SHA-256 of a certificate's SubjectPublicKeyInfo (its
// DER). With the serial it names one issued certificate: a certificate
// minted with another's serial but another key (by whoever holds the CA
// key) has another.
func KeySHA256(cert *x509.Certificate) []byte {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return sum[:]
}

// certTagDomain starts what a certificate tag over a serial and a key
// hashes. A serial in hex holds no NUL, so the input never equals that of
// a tag over a serial alone.
const certTagDomain = "posture.v1.certificate\x00"

// CertTag condenses a device certificate to 8 bytes: the first 8 bytes
// (big-endian) of SHA-256("posture.v1.certificate" ‖ 0x00 ‖ serial ‖ 0x00 ‖
// keySHA256), where serial is the serial in lowercase hex without leading
// zeros (SerialHex) and keySHA256 is KeySHA256. It is what a collector keeps
// per device to recognise its newest certificate, and the certificate_tag
// of watch events.
//
// A certificate recorded before the collector recorded keys has no key
// hash (keySHA256 nil): its tag is the first 8 bytes of SHA-256(serial),
// as tags were before, which never equals a tag over a serial and a key.
// Checking a certificate against a tag therefore compares both CertTag
// forms (CertMatches): the serial-only form matches only a device whose
// key is not recorded yet.
func CertTag(serialHex string, keySHA256 []byte) uint64 {
	h := sha256.New()
	if keySHA256 != nil {
		h.Write([]byte(certTagDomain))
		h.Write([]byte(serialHex))
		h.Write([]byte{0})
		h.Write(keySHA256)
	} else {
		h.Write([]byte(serialHex))
	}
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// CertMatches says whether the certificate with serialHex and keySHA256
// is the one tag names: the tag over both, or, for a certificate whose key
// the collector has not recorded, over the serial alone. keySHA256 nil
// checks the serial alone, which matches only such a certificate.
func CertMatches(tag uint64, serialHex string, keySHA256 []byte) bool {
	return tag == CertTag(serialHex, keySHA256) || tag == CertTag(serialHex, nil)
}
