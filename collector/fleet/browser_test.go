package fleet

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A browser certificate counts as its device (HeldCert) by its serial and
// its key, while it is its user's newest, unexpired, and the device still
// holds the device certificate, by serial and key, it was issued under;
// one that no longer counts says it is a browser certificate to renew.
// The device's own certificate counts as before, and a certificate that
// is neither is refused as replaced.
func TestHeldCert(t *testing.T) {
	d := newDB(t)
	f := newTestFleet(t)
	apply := func(ev store.Event) { f.Apply(d.read([]store.Event{ev})[0], nil) }
	apply(d.enroll("a", "01", []byte("key-a")))
	now := time.Now()
	browserKey := func(s string) []byte { sum := sha256.Sum256([]byte("browser key " + s)); return sum[:] }
	issue := func(user, serial string, under store.Cert, notAfter time.Time) {
		t.Helper()
		ev, err := d.st.AddBrowserCert(ctx, store.BrowserCert{DeviceID: "a", User: user, Serial: serial, KeySHA256: browserKey(serial),
			IssuedUnder: under.Serial, IssuedUnderKeySHA256: under.KeySHA256, IssuedAt: now, NotAfter: notAfter})
		if err != nil {
			t.Fatal(err)
		}
		apply(ev)
	}
	issue("alice", "b1", cert("01"), now.Add(time.Hour))
	// Issued under a certificate with the device's serial and another key:
	// minted, it never counts.
	issue("mallory", "b2", store.Cert{Serial: "01", KeySHA256: browserKey("not the device's")}, now.Add(time.Hour))
	issue("bob", "b3", cert("01"), now.Add(time.Minute))

	for _, tt := range []struct {
		name, serial string
		key          []byte
		at           time.Time
		want         error // nil, ErrNotBrowserCert or ErrOldCertificate
	}{
		{"device certificate", "01", certKey("01"), now, nil},
		{"browser certificate", "b1", browserKey("b1"), now, nil},
		{"browser certificate, another key", "b1", browserKey("other"), now, ErrOldCertificate},
		{"browser certificate by serial alone", "b1", nil, now, ErrOldCertificate},
		{"issued under a minted device certificate", "b2", browserKey("b2"), now, ErrNotBrowserCert},
		{"browser certificate expired", "b3", browserKey("b3"), now.Add(2 * time.Minute), ErrNotBrowserCert},
		{"neither", "99", browserKey("99"), now, ErrOldCertificate},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := f.HeldCert("a", tt.serial, tt.key, tt.at)
			if (err == nil) != (tt.want == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("HeldCert(%s) = %v, want %v", tt.serial, err, tt.want)
			}
		})
	}

	// A newer one for alice replaces hers.
	issue("alice", "b4", cert("01"), now.Add(time.Hour))
	if err := f.HeldCert("a", "b4", browserKey("b4"), now); err != nil {
		t.Errorf("alice's newer browser certificate: %v", err)
	}
	if err := f.HeldCert("a", "b1", browserKey("b1"), now); !errors.Is(err, ErrOldCertificate) {
		t.Errorf("alice's replaced browser certificate: %v, want it refused", err)
	}
	// Renewing the device certificate ends every browser certificate
	// issued under the old one.
	apply(d.renew("a", "01", "02"))
	if err := f.HeldCert("a", "b4", browserKey("b4"), now); !errors.Is(err, ErrNotBrowserCert) {
		t.Errorf("a browser certificate issued under the replaced device certificate: %v, want ErrNotBrowserCert", err)
	}
}

// Pending, suspect, revoked and unknown devices get no browser
// certificate; active ones do.
func TestCheckBrowserCertAllowed(t *testing.T) {
	d := newDB(t)
	f := newTestFleet(t)
	apply := func(ev store.Event) { f.Apply(d.read([]store.Event{ev})[0], nil) }
	for _, id := range []string{"active", "pending", "suspect", "revoked"} {
		apply(d.enroll(id, "01", []byte("key-"+id)))
	}
	apply(d.state("pending", posturev1.DeviceState_DEVICE_STATE_PENDING))
	apply(d.state("suspect", posturev1.DeviceState_DEVICE_STATE_SUSPECT))
	apply(d.state("revoked", posturev1.DeviceState_DEVICE_STATE_REVOKED))
	for id, want := range map[string]string{"active": "", "pending": "pending approval", "suspect": "suspect", "revoked": "revoked", "nobody": "not enrolled"} {
		err := f.CheckBrowserCertAllowed(id)
		if (err == nil) != (want == "") || (err != nil && !strings.Contains(strings.ToLower(err.Error()), want)) {
			t.Errorf("CheckBrowserCertAllowed(%s) = %v, want %q", id, err, want)
		}
	}
}
