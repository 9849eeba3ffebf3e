package storetest

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// browser: measurement requests are events of known devices only; a
// user's newest browser certificate replaces the previous one, is carried
// by its event, survives a reopen, and expired ones are not listed.
func (c *suite) browser(t *testing.T) {
	s, again := c.fresh(t)
	enroll(t, s, "dev-a")
	now := time.Unix(1_800_000_000, 0).UTC()

	ev, err := s.RequestMeasurement(ctx, "dev-a", now)
	if err != nil || ev.ID == 0 || ev.Kind != store.EventMeasureRequested || ev.DeviceID != "dev-a" {
		t.Fatalf("RequestMeasurement = %+v, %v; want a measure_requested event of dev-a", ev, err)
	}
	last, _ := s.LastEventID(ctx)
	if _, err := s.RequestMeasurement(ctx, "nobody", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RequestMeasurement(unknown) = %v, want ErrNotFound", err)
	}
	if l, _ := s.LastEventID(ctx); l != last {
		t.Errorf("a refused request recorded event %d", l)
	}

	first := store.BrowserCert{DeviceID: "dev-a", User: "alice", Serial: "0a", KeySHA256: bytes.Repeat([]byte{1}, 32),
		IssuedUnder: "01", IssuedUnderKeySHA256: bytes.Repeat([]byte{9}, 32), IssuedAt: now, NotAfter: now.Add(time.Hour)}
	second := first
	second.Serial, second.KeySHA256, second.IssuedAt, second.NotAfter = "0b", bytes.Repeat([]byte{2}, 32), now.Add(time.Minute), now.Add(2*time.Hour)
	bob := first
	bob.User, bob.Serial, bob.NotAfter = "bob", "0c", now.Add(time.Second)
	for _, bc := range []store.BrowserCert{first, second, bob} {
		ev, err := s.AddBrowserCert(ctx, bc)
		if err != nil || ev.ID == 0 || ev.Kind != store.EventBrowserCert || ev.BrowserCert == nil || ev.BrowserCert.Serial != bc.Serial {
			t.Fatalf("AddBrowserCert(%s) = %+v, %v", bc.Serial, ev, err)
		}
		got, err := s.Events(ctx, []uint64{ev.ID})
		if err != nil || len(got) != 1 || got[0].BrowserCert == nil || got[0].BrowserCert.Serial != bc.Serial ||
			!bytes.Equal(got[0].BrowserCert.KeySHA256, bc.KeySHA256) || got[0].BrowserCert.IssuedUnder != "01" ||
			!bytes.Equal(got[0].BrowserCert.IssuedUnderKeySHA256, bc.IssuedUnderKeySHA256) {
			t.Errorf("event of %s read back as %+v, %v", bc.Serial, got, err)
		}
	}
	if _, err := s.AddBrowserCert(ctx, store.BrowserCert{DeviceID: "nobody", User: "x", Serial: "1", KeySHA256: []byte{1}, NotAfter: now}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddBrowserCert(unknown device) = %v, want ErrNotFound", err)
	}
	s = again(t, s)
	list, err := s.BrowserCerts(ctx, now.Add(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Serial != "0b" || list[0].User != "alice" || !list[0].NotAfter.Equal(second.NotAfter) ||
		!list[0].IssuedAt.Equal(second.IssuedAt) || !bytes.Equal(list[0].KeySHA256, second.KeySHA256) ||
		list[0].IssuedUnder != "01" || !bytes.Equal(list[0].IssuedUnderKeySHA256, second.IssuedUnderKeySHA256) {
		t.Errorf("BrowserCerts = %+v; want alice's second only (bob's expired)", list)
	}
}
