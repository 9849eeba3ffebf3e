package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// Enrolling a device again keeps its kind of identity, takes a weaker
// state the new enrollment earned, and starts the TPM clock afresh with a
// new key.
func TestReEnrollIdentity(t *testing.T) {
	ctx := context.Background()
	clock := store.TPMClock{Clock: 5000, ResetCount: 7, RestartCount: 9}
	tpmDevice := func() store.Device {
		d := newDevice("dev-t")
		d.Identity, d.IdentityKey, d.EKSHA256 = "tpm", []byte("ak-1"), "ek"
		return d
	}
	setup := func(t *testing.T) *store.Store {
		s, _ := openStore(t)
		tok := createToken(t, s, "first", 1, time.Now().Add(time.Hour))
		if _, err := s.EnrollDevice(ctx, tok, time.Now(), tpmDevice()); err != nil {
			t.Fatal(err)
		}
		r := newReport("dev-t", 1, "")
		r.TPM = &clock
		if err := s.AppendReport(ctx, r); err != nil {
			t.Fatal(err)
		}
		return s
	}
	again := func(t *testing.T, s *store.Store, d store.Device) (store.Device, uint32, error) {
		tok := createToken(t, s, "again-"+t.Name(), 1, time.Now().Add(time.Hour))
		got, err := s.EnrollDevice(ctx, tok, time.Now(), d)
		stored, terr := s.Token(ctx, tok)
		if terr != nil {
			t.Fatal(terr)
		}
		return got, stored.Used, err
	}

	t.Run("another kind of identity is refused", func(t *testing.T) {
		s := setup(t)
		d := tpmDevice()
		d.Identity, d.IdentityKey = "software", []byte("pkix-key")
		_, used, err := again(t, s, d)
		if !errors.Is(err, store.ErrIdentityKind) || used != 0 {
			t.Errorf("re-enroll as software: %v, token used %d; want ErrIdentityKind and the token unused", err, used)
		}
		if got, _ := s.Device(ctx, "dev-t"); got.Identity != "tpm" || string(got.IdentityKey) != "ak-1" {
			t.Errorf("device after the refusal: %s %q; want it unchanged", got.Identity, got.IdentityKey)
		}
	})
	t.Run("a pending claim makes an active device pending", func(t *testing.T) {
		s := setup(t)
		d := tpmDevice()
		d.State, d.StateReason, d.Assurance = statePending, "EK not verified", 0
		got, _, err := again(t, s, d)
		if err != nil || got.State != statePending || got.StateReason != "EK not verified" {
			t.Errorf("re-enroll earning pending: state %d %q, %v; want pending", got.State, got.StateReason, err)
		}
		if got.LastSeq != 1 {
			t.Errorf("chain head %d, want 1 kept", got.LastSeq)
		}
	})
	t.Run("a new key starts the TPM clock afresh", func(t *testing.T) {
		s := setup(t)
		d := tpmDevice()
		d.IdentityKey = []byte("ak-2")
		got, _, err := again(t, s, d)
		if err != nil || got.TPMClock != (store.TPMClock{}) || got.State != stateActive {
			t.Errorf("re-enroll with a new AK: clock %+v, state %d, %v; want no clock, active", got.TPMClock, got.State, err)
		}
		if stored, _ := s.Device(ctx, "dev-t"); stored.TPMClock != (store.TPMClock{}) {
			t.Errorf("stored clock %+v, want none", stored.TPMClock)
		}
	})
	t.Run("the same key keeps the TPM clock", func(t *testing.T) {
		s := setup(t)
		got, _, err := again(t, s, tpmDevice())
		if err != nil || got.TPMClock != clock {
			t.Errorf("re-enroll with the same AK: clock %+v, %v; want %+v", got.TPMClock, err, clock)
		}
	})
}
