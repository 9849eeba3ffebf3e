package store

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// The rules below decide what a change makes of a device, the same in
// every backend: a backend reads the device, asks the rule, and writes
// what it returns (or nothing, on an error), in one transaction.

// CheckToken refuses a token that cannot enroll at now.
func CheckToken(t Token, now time.Time) error {
	switch {
	case !t.ExpiresAt.After(now):
		return ErrTokenExpired
	case t.Used >= t.Uses:
		return ErrTokenUsedUp
	}
	return nil
}

// Enrolled is what an enrollment of d at now stores, given the device as
// stored before (nil for a new device): see Store.EnrollDevice.
func Enrolled(existing *Device, d Device, now time.Time) (Device, error) {
	if d.ID == "" {
		return Device{}, errors.New("the device ID is empty")
	}
	if d.EnrolledAt.IsZero() {
		d.EnrolledAt = now
	}
	d.EnrolledAt = d.EnrolledAt.UTC()
	if d.State == 0 {
		d.State = StateActive
	}
	if existing == nil {
		d.PrevCertSerial, d.PrevCertKeySHA256 = "", nil
		d.LastSeq, d.LastDigest, d.LastSeen = 0, nil, time.Time{}
		d.TPMClock, d.Reboots = TPMClock{}, 0
		return d, nil
	}
	switch {
	case existing.State == StateRevoked:
		return Device{}, ErrDeviceRevoked
	case existing.Identity != d.Identity:
		return Device{}, ErrIdentityKind
	}
	// The collector has just proven the identity again (for a TPM, a new
	// AK in the same TPM), so the key and its assurance are replaced; the
	// state and report chain are kept, except that a pending device takes
	// the state the new enrollment earned, and an active one becomes
	// pending when that is all the new enrollment earned.
	stored := *existing
	stored.Hostname, stored.Platform = d.Hostname, d.Platform
	stored.CertSerial, stored.CertKeySHA256, stored.EnrolledAt = d.CertSerial, d.CertKeySHA256, d.EnrolledAt
	stored.PrevCertSerial, stored.PrevCertKeySHA256 = "", nil
	stored.Identity, stored.IdentityKey, stored.Assurance, stored.EKSHA256 = d.Identity, d.IdentityKey, d.Assurance, d.EKSHA256
	if existing.State == StatePending || (existing.State == StateActive && d.State == StatePending) {
		stored.State, stored.StateReason = d.State, d.StateReason
	}
	if !bytes.Equal(existing.IdentityKey, d.IdentityKey) {
		stored.TPMClock = TPMClock{}
	}
	return stored, nil
}

// WithState is d in state, for reason: see Store.SetDeviceState.
func WithState(d Device, state int32, reason string) (Device, error) {
	if d.State == StateRevoked {
		return Device{}, ErrDeviceRevoked
	}
	d.State, d.StateReason = state, reason
	return d, nil
}

// Renewed is d with issued as its certificate in place of askedWith:
// see Store.RenewCertificate.
func Renewed(d Device, askedWith, issued Cert) (Device, error) {
	switch {
	case issued.Serial == "" || len(issued.KeySHA256) != sha256.Size:
		return Device{}, fmt.Errorf("the issued certificate's serial (%q) or key hash (%d bytes) is missing", issued.Serial, len(issued.KeySHA256))
	case d.State == StateRevoked:
		return Device{}, ErrDeviceRevoked
	case d.State != StateActive:
		return Device{}, ErrDeviceNotActive
	case askedWith.Is(d.CertSerial, d.CertKeySHA256):
		d.PrevCertSerial, d.PrevCertKeySHA256 = d.CertSerial, d.CertKeySHA256
	case askedWith.Is(d.PrevCertSerial, d.PrevCertKeySHA256):
	case askedWith.Serial == d.CertSerial || askedWith.Serial == d.PrevCertSerial:
		return Device{}, ErrCertKey
	default:
		return Device{}, ErrCertReplaced
	}
	d.CertSerial, d.CertKeySHA256 = issued.Serial, issued.KeySHA256
	return d, nil
}

// Bound is d with cert's key hash recorded for the certificate with its
// serial, and whether that changed anything: see Store.BindCertKey.
func Bound(d Device, cert Cert) (Device, bool, error) {
	bind := func(key *[]byte) (bool, error) {
		switch {
		case *key == nil:
			*key = cert.KeySHA256
			return true, nil
		case bytes.Equal(*key, cert.KeySHA256):
			return false, nil
		}
		return false, ErrCertKey
	}
	var (
		changed bool
		err     error
	)
	switch {
	case len(cert.KeySHA256) != sha256.Size:
		return Device{}, false, fmt.Errorf("a certificate key hash is %d bytes, not %d", len(cert.KeySHA256), sha256.Size)
	case d.State == StateRevoked:
		return Device{}, false, ErrDeviceRevoked
	case cert.Serial != "" && cert.Serial == d.CertSerial:
		changed, err = bind(&d.CertKeySHA256)
	case cert.Serial != "" && cert.Serial == d.PrevCertSerial:
		changed, err = bind(&d.PrevCertKeySHA256)
	default:
		return Device{}, false, ErrCertReplaced
	}
	if err != nil {
		return Device{}, false, err
	}
	return d, changed, nil
}

// Approved is the pending device d made active with assurance: see
// Store.ApproveDevice.
func Approved(d Device, assurance int32) (Device, error) {
	switch {
	case d.State != StatePending:
		return Device{}, ErrNotPending
	case d.EKSHA256 == "":
		return Device{}, errors.New("the device has no TPM endorsement key to pin")
	}
	d.State, d.StateReason, d.Assurance = StateActive, "", assurance
	return d, nil
}

// AppendRefusal says why a report that did not move its device's head by
// compare-and-set is refused, from what is stored: the device's state, its
// newest report stream and head, and the digest of the report stored
// under r.Seq (nil when none is). A nil answer means the very same report
// is stored already.
func AppendRefusal(state int32, stream, lastSeq uint64, lastDigest []byte, hasHead bool, storedAtSeq []byte, r Report) error {
	switch {
	case state == StateRevoked:
		return ErrDeviceRevoked
	case storedAtSeq != nil && bytes.Equal(storedAtSeq, r.Digest):
		return nil
	case stream != r.Stream:
		// The stream's fault first: a stream that was replaced reports
		// nothing, so that a report held back on it is not taken for a
		// fork of what the newer stream stored.
		return ErrSuperseded
	case storedAtSeq != nil:
		return ErrConflict
	case hasHead && r.Seq <= lastSeq:
		// Older than the head, and its place is no longer stored (pruned):
		// it cannot continue the chain.
		return ErrConflict
	case r.Seq > lastSeq+1 || (!hasHead && r.Seq > 1):
		return ErrSequenceGap
	}
	return ErrChainBroken
}

// Continues says whether r continues the head (lastSeq, lastDigest;
// hasHead false before the first report): the condition of the
// compare-and-set, for backends that check it in code.
func Continues(hasHead bool, lastSeq uint64, lastDigest []byte, r Report) bool {
	if !hasHead {
		return r.Seq == lastSeq+1 && len(r.PrevDigest) == 0
	}
	return r.Seq == lastSeq+1 && bytes.Equal(r.PrevDigest, lastDigest)
}
