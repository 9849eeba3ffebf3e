package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// A renewal replaces the device's certificate serial only when it was asked
// with the current certificate or the one the last renewal replaced, and
// only for an active device; a refused renewal changes nothing.
func TestRenewCertificate(t *testing.T) {
	ctx := context.Background()
	serials := func(t *testing.T, s *store.Store) (cur, prev string) {
		t.Helper()
		d, err := s.Device(ctx, "dev-a")
		if err != nil {
			t.Fatal(err)
		}
		return d.CertSerial, d.PrevCertSerial
	}
	t.Run("current, then previous, then current again", func(t *testing.T) {
		s, path := openStore(t)
		enroll(t, s, "dev-a") // certificate "01"
		steps := []struct {
			askedWith, issued, wantCur, wantPrev string
		}{
			{"01", "02", "02", "01"}, // 01 renews; 02 never reaches the device
			{"01", "03", "03", "01"}, // so 01 asks again, and stays the previous
			{"03", "04", "04", "03"}, // 03 arrived and renews in turn
		}
		for _, st := range steps {
			d, err := s.RenewCertificate(ctx, "dev-a", st.askedWith, st.issued)
			if err != nil {
				t.Fatalf("renew with %s: %v", st.askedWith, err)
			}
			if d.CertSerial != st.wantCur || d.PrevCertSerial != st.wantPrev {
				t.Errorf("renew with %s returned %s/%s, want %s/%s", st.askedWith, d.CertSerial, d.PrevCertSerial, st.wantCur, st.wantPrev)
			}
			if cur, prev := serials(t, s); cur != st.wantCur || prev != st.wantPrev {
				t.Errorf("after renewing with %s: stored %s/%s, want %s/%s", st.askedWith, cur, prev, st.wantCur, st.wantPrev)
			}
		}
		// 01 is neither now.
		if _, err := s.RenewCertificate(ctx, "dev-a", "01", "05"); !errors.Is(err, store.ErrCertReplaced) {
			t.Errorf("renew with a certificate two renewals old: %v, want ErrCertReplaced", err)
		}
		// The fleet scan at start sees both serials.
		s2 := reopenStore(t, s, path)
		var row store.FleetRow
		if err := s2.ScanFleet(ctx, 1, func(_ int, r *store.FleetRow) error { row = *r; return nil }); err != nil {
			t.Fatal(err)
		}
		if row.CertSerial != "04" || row.PrevCertSerial != "03" {
			t.Errorf("fleet row after reopening: %s/%s, want 04/03", row.CertSerial, row.PrevCertSerial)
		}
	})
	t.Run("enrolling again forgets the previous certificate", func(t *testing.T) {
		s, _ := openStore(t)
		enroll(t, s, "dev-a")
		if _, err := s.RenewCertificate(ctx, "dev-a", "01", "02"); err != nil {
			t.Fatal(err)
		}
		d := newDevice("dev-a")
		d.CertSerial = "10"
		got, err := s.EnrollDevice(ctx, createToken(t, s, "again", 1, time.Now().Add(time.Hour)), time.Now(), d)
		if err != nil {
			t.Fatal(err)
		}
		if got.PrevCertSerial != "" {
			t.Errorf("EnrollDevice returned previous serial %q, want none", got.PrevCertSerial)
		}
		if cur, prev := serials(t, s); cur != "10" || prev != "" {
			t.Errorf("after enrolling again: %s/%s, want 10 and no previous", cur, prev)
		}
		for _, old := range []string{"01", "02"} {
			if _, err := s.RenewCertificate(ctx, "dev-a", old, "11"); !errors.Is(err, store.ErrCertReplaced) {
				t.Errorf("renew with %s from before enrolling again: %v, want ErrCertReplaced", old, err)
			}
		}
	})

	refusals := []struct {
		name  string
		setup func(t *testing.T, s *store.Store)
		want  error
	}{
		{"unknown device", func(*testing.T, *store.Store) {}, store.ErrNotFound},
		{"suspect", func(t *testing.T, s *store.Store) { enroll(t, s, "dev-a"); setState(t, s, stateSuspect) }, store.ErrDeviceNotActive},
		{"pending", func(t *testing.T, s *store.Store) { enroll(t, s, "dev-a"); setState(t, s, statePending) }, store.ErrDeviceNotActive},
		{"revoked", func(t *testing.T, s *store.Store) { enroll(t, s, "dev-a"); setState(t, s, stateRevoked) }, store.ErrDeviceRevoked},
		{"another certificate", func(t *testing.T, s *store.Store) { enroll(t, s, "dev-a") }, store.ErrCertReplaced},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openStore(t)
			tt.setup(t, s)
			asked := "01"
			if tt.name == "another certificate" {
				asked = "99"
			}
			before, _ := s.Device(ctx, "dev-a")
			if _, err := s.RenewCertificate(ctx, "dev-a", asked, "02"); !errors.Is(err, tt.want) {
				t.Fatalf("RenewCertificate = %v, want %v", err, tt.want)
			}
			if after, _ := s.Device(ctx, "dev-a"); after.CertSerial != before.CertSerial || after.PrevCertSerial != before.PrevCertSerial {
				t.Errorf("refused renewal changed the serials: %s/%s to %s/%s", before.CertSerial, before.PrevCertSerial, after.CertSerial, after.PrevCertSerial)
			}
		})
	}
}

func setState(t *testing.T, s *store.Store, state int32) {
	t.Helper()
	if err := s.SetDeviceState(context.Background(), "dev-a", state, "test"); err != nil {
		t.Fatal(err)
	}
}

// reopenStore closes s and opens the file again.
func reopenStore(t *testing.T, s *store.Store, path string) *store.Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	return s2
}
