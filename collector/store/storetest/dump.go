package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/posture-project/posture/collector/store"
)

// RunDumpLoad fills a store that src opens, copies it (store.Copy) into
// an empty store that dst opens, and checks that the copy holds the same
// devices, tokens, reports, pinned EKs, gateways, decisions and settings,
// continues every device's report chain and streams, and gives new events
// IDs above the source's. Both stores must implement store.Dumper and
// store.Loader.
func RunDumpLoad(t *testing.T, src, dst Opener) {
	from, _ := src(t)
	t.Cleanup(func() { from.Close() })
	streamA := fill(t, from)
	to, _ := dst(t)
	t.Cleanup(func() { to.Close() })
	dumper, ok := from.(store.Dumper)
	if !ok {
		t.Fatalf("%T is not a store.Dumper", from)
	}
	loader, ok := to.(store.Loader)
	if !ok {
		t.Fatalf("%T is not a store.Loader", to)
	}
	if err := store.Copy(ctx, dumper, loader); err != nil {
		t.Fatalf("Copy: %v", err)
	}

	devices := allDevices(t, from)
	if diff := cmp.Diff(devices, allDevices(t, to)); diff != "" {
		t.Errorf("devices (-source +copy):\n%s", diff)
	}
	// Certificates keep the keys they were issued for, and one issued
	// before keys were recorded keeps none.
	for id, want := range map[string][2]store.Cert{"dev-a": {cert("02"), cert("01")}, "dev-c": {{Serial: "01"}, {}}} {
		d := device(t, to, id)
		got := [2]store.Cert{{Serial: d.CertSerial, KeySHA256: d.CertKeySHA256}, {Serial: d.PrevCertSerial, KeySHA256: d.PrevCertKeySHA256}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("certificates of %s in the copy (-want +got):\n%s", id, diff)
		}
	}
	for _, d := range devices {
		want, err := from.Reports(ctx, d.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := to.Reports(ctx, d.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("reports of %s (-source +copy):\n%s", d.ID, diff)
		}
		wantHead, werr := from.LatestReport(ctx, d.ID)
		gotHead, gerr := to.LatestReport(ctx, d.ID)
		if !errors.Is(gerr, werr) && !(errors.Is(werr, store.ErrNotFound) && errors.Is(gerr, store.ErrNotFound)) {
			t.Errorf("head report of %s: %v in the copy, %v in the source", d.ID, gerr, werr)
		}
		if diff := cmp.Diff(wantHead, gotHead, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("head report of %s (-source +copy):\n%s", d.ID, diff)
		}
	}
	if diff := cmp.Diff(fleet(t, from), fleet(t, to), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("fleet (-source +copy):\n%s", diff)
	}
	for _, secret := range []string{"fresh", "spent"} {
		want, err := from.Token(ctx, hash(secret))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := to.Token(ctx, hash(secret)); err != nil || !cmp.Equal(want, got) {
			t.Errorf("token %s in the copy: %+v, %v; want %+v", secret, got, err, want)
		}
	}
	for h, want := range map[string]bool{"aa": true, "bb": true, "cc": false} {
		if got, err := to.EKPinned(ctx, h); err != nil || got != want {
			t.Errorf("EKPinned(%s) in the copy = %v, %v; want %v", h, got, err, want)
		}
	}
	wantGateways, err := from.Gateways(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := to.Gateways(ctx); err != nil || !cmp.Equal(wantGateways, got) {
		t.Errorf("gateways in the copy: %v, %v; want %v", got, err, wantGateways)
	}
	for _, collector := range []string{"r-a", "r-b"} {
		want, err := from.Decisions(ctx, collector, 100)
		if err != nil {
			t.Fatal(err)
		}
		got, err := to.Decisions(ctx, collector, 100)
		if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); err != nil || diff != "" {
			t.Errorf("decisions of %s in the copy (%v) (-source +copy):\n%s", collector, err, diff)
		}
	}
	// Standings, users and Shared Signals receivers and streams.
	standings := func(s store.Store) map[string]store.Standing {
		got := map[string]store.Standing{}
		if err := s.Standings(ctx, func(id string, st store.Standing) error { got[id] = st; return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if diff := cmp.Diff(standings(from), standings(to)); diff != "" {
		t.Errorf("standings (-source +copy):\n%s", diff)
	}
	// The audit log, in its order (IDs are the copy's own).
	auditOf := func(s store.Store) []store.AuditRecord {
		recs, err := s.Audit(ctx, store.AuditQuery{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		for i := range recs {
			recs[i].ID = 0
		}
		return recs
	}
	if want, got := auditOf(from), auditOf(to); len(want) != 2 || !cmp.Equal(want, got) {
		t.Errorf("audit log (-source +copy):\n%s", cmp.Diff(want, got))
	}
	if u, err := to.DeviceUser(ctx, "dev-a"); err != nil || u.Email != "ada@example.com" {
		t.Errorf("the user of dev-a in the copy: %+v, %v", u, err)
	}
	browserCerts := func(s store.Store) []store.BrowserCert {
		got, err := s.BrowserCerts(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if want, got := browserCerts(from), browserCerts(to); len(want) != 1 || !cmp.Equal(want, got) {
		t.Errorf("browser certificates in the copy: %+v; the source has %+v (want one)", got, want)
	}
	wantClients, _ := from.SSFClients(ctx)
	if got, err := to.SSFClients(ctx); err != nil || !cmp.Equal(wantClients, got) {
		t.Errorf("SSF receivers in the copy: %+v, %v; want %+v", got, err, wantClients)
	}
	if r, err := to.Receiver(ctx, "ssf:s1"); err != nil || string(r.Config) != `{"stream_id":"s1"}` || r.Cursor != 0 {
		t.Errorf("the stream in the copy: %+v, %v", r, err)
	}
	if _, err := to.Receiver(ctx, "webhook:w"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a webhook (configured on the collector, not in the database) was copied: %v", err)
	}
	if err := to.ClaimIdentity(ctx, "aa11", "posture.local"); err != nil {
		t.Errorf("claiming the source's identity in the copy: %v", err)
	}
	if err := to.ClaimIdentity(ctx, "bb22", "posture.local"); !errors.Is(err, store.ErrIdentityMismatch) {
		t.Errorf("claiming another CA in the copy: %v, want ErrIdentityMismatch", err)
	}

	// Event IDs continue above the source's, though its events were
	// pruned and none were copied.
	last, err := from.LastEventID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := to.LastEventID(ctx); err != nil || got < last {
		t.Errorf("LastEventID of the copy = %d, %v; want at least the source's %d", got, err, last)
	}
	ev, err := to.SetDeviceState(ctx, "dev-c", store.StateSuspect, "after the copy", time.Now())
	if err != nil || ev.ID <= last {
		t.Errorf("first event in the copy: ID %d, %v; want above the source's last, %d", ev.ID, err, last)
	}
	// Streams and chains continue: a stream opened in the copy is newer
	// than the source's streams, and continues the head.
	h := stream(t, to, "dev-a")
	if h.Stream <= streamA || h.LastSeq != 4 {
		t.Errorf("stream in the copy: %d at head %d; want above %d, at 4", h.Stream, h.LastSeq, streamA)
	}
	r := report("dev-a", 5, "")
	r.Stream = streamA
	if _, err := to.AppendReport(ctx, r); !errors.Is(err, store.ErrSuperseded) {
		t.Errorf("report 5 in the copy on the source's stream: %v, want ErrSuperseded", err)
	}
	r.Stream = h.Stream
	if ev, err := to.AppendReport(ctx, r); err != nil || ev.ID <= last {
		t.Errorf("report 5 in the copy: event %d, %v; want it stored with an event above %d", ev.ID, err, last)
	}

	// A database that holds something already is not loaded into.
	if err := store.Copy(ctx, dumper, loader); !errors.Is(err, store.ErrNotEmpty) {
		t.Errorf("copying into a database that is not empty: %v, want ErrNotEmpty", err)
	}
}

// fill stores some of everything that a database holds, and returns the
// stream dev-a's reports came on.
func fill(t *testing.T, s store.Store) uint64 {
	t.Helper()
	if err := s.ClaimIdentity(ctx, "aa11", "posture.local"); err != nil {
		t.Fatal(err)
	}
	createToken(t, s, "fresh", 3, time.Date(2027, 1, 2, 3, 4, 5, 6, time.UTC))
	spent := createToken(t, s, "spent", 1, time.Now().Add(time.Hour))
	// dev-c's certificate was issued before keys were recorded.
	legacy := newDevice("dev-c")
	legacy.CertKeySHA256 = nil
	if _, _, err := s.EnrollDevice(ctx, spent, time.Now(), legacy); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeToken(ctx, spent, time.Date(2026, 4, 5, 6, 7, 8, 9, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PinEKs(ctx, []string{"aa", "bb"}, "batch", time.Date(2026, 5, 6, 7, 8, 9, 10, time.UTC)); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, g := range []store.Gateway{{Serial: "0a", Name: "edge-1"}, {Serial: "0b", Name: "edge-2"}} {
		g.IssuedAt, g.ExpiresAt = t0.Add(time.Duration(i)*time.Hour), t0.Add(365*24*time.Hour)
		if err := s.AddGateway(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.RevokeGateways(ctx, "edge-2", "", "lost", t0.Add(48*time.Hour)); err != nil {
		t.Fatal(err)
	}

	enroll(t, s, "dev-a")
	streamA := stream(t, s, "dev-a").Stream
	for seq := uint64(1); seq <= 4; seq++ {
		r := report("dev-a", seq, "")
		r.Stream = streamA
		if _, err := s.AppendReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.RenewCertificate(ctx, "dev-a", cert("01"), cert("02"), time.Now()); err != nil {
		t.Fatal(err)
	}
	tpm := newDevice("dev-b")
	tpm.Identity, tpm.IdentityKey, tpm.EKSHA256 = "tpm", []byte("ak"), "ek-b"
	tpm.State, tpm.StateReason, tpm.Hostname = store.StatePending, "EK not verified", "host\x00with a NUL \xff"
	if _, _, err := s.EnrollDevice(ctx, createToken(t, s, "tpm", 1, time.Now().Add(time.Hour)), time.Now(), tpm); err != nil {
		t.Fatal(err)
	}
	h := stream(t, s, "dev-b")
	for seq := uint64(1); seq <= 2; seq++ {
		r := report("dev-b", seq, "")
		r.Stream, r.TPM, r.Reboot = h.Stream, &store.TPMClock{Clock: 100 * seq, ResetCount: uint32(seq), RestartCount: 7}, seq == 2
		if seq == 1 {
			r.MeasuredBoot = []byte("reading")
		}
		if _, err := s.AppendReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	stream(t, s, "dev-b") // a newer stream, with nothing on it yet
	if _, err := s.SetDeviceState(ctx, "dev-a", store.StateSuspect, "chain broken", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDeviceState(ctx, "dev-a", store.StateActive, "checked", time.Now()); err != nil {
		t.Fatal(err)
	}

	for _, c := range []string{"r-a", "r-b"} {
		var ds []store.Decision
		for seq := uint64(1); seq <= 3; seq++ {
			ds = append(ds, store.Decision{Seq: seq, FirstAt: t0, At: t0.Add(time.Duration(seq) * time.Second), Count: seq,
				Device: "dev-a", Level: "trusted", Caller: "gateway " + c, Allowed: seq%2 == 0, Score: uint32(10 * seq),
				State: store.StateActive, Detail: []byte(fmt.Sprintf("detail %s/%d", c, seq))})
		}
		if err := s.SaveDecisions(ctx, c, ds, 10); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RecordStanding(ctx, "dev-a", store.Standing{}, store.Standing{Levels: []string{"basic"},
		Failing: []store.FailingCheck{{Check: "firewall", Since: t0, BlocksAt: t0.Add(72 * time.Hour), Warned: true}}}, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.BindDeviceUser(ctx, store.DeviceUser{DeviceID: "dev-a", Email: "ada@example.com", BoundAt: t0}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []store.AuditRecord{
		{At: t0, Actor: "ada@example.com", Role: "admin", Via: "console", From: "192.0.2.7", Action: "devices revoke", Target: "dev-b", Detail: "reason: stolen <b>"},
		{At: t0.Add(time.Second), Actor: "vic@example.com", Role: "viewer", Via: "console", From: "192.0.2.8", Action: "token create", Detail: "ttl 1h0m0s, uses 1", Outcome: "viewers may not call this"},
	} {
		if _, err := s.AppendAudit(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.AddBrowserCert(ctx, store.BrowserCert{DeviceID: "dev-a", User: "ada", Serial: "7b", KeySHA256: hash("browser key"),
		IssuedUnder: "01", IssuedUnderKeySHA256: hash("device key"), IssuedAt: t0, NotAfter: time.Now().Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSSFClient(ctx, store.SSFClient{Name: "okta", TokenHash: hash("token"), Audience: "https://example.okta.com", Level: "basic", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddReceiver(ctx, "ssf:s1", "ssf", []byte(`{"stream_id":"s1"}`), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddReceiver(ctx, "webhook:w", "webhook", nil, t0); err != nil {
		t.Fatal(err)
	}
	// The events are pruned: where their IDs stood is still copied.
	if _, err := s.PruneEvents(ctx, time.Now().Add(time.Hour), math.MaxUint64); err != nil {
		t.Fatal(err)
	}
	return streamA
}

// fleet is everything ScanFleet returns, by device.
func fleet(t *testing.T, s store.Store) map[string]store.FleetRow {
	t.Helper()
	rows := map[string]store.FleetRow{}
	err := s.ScanFleet(ctx, 1, func(_ int, r *store.FleetRow) error {
		row := *r
		row.IdentityKey, row.LastDigest, row.MeasuredBoot = bytes.Clone(r.IdentityKey), bytes.Clone(r.LastDigest), bytes.Clone(r.MeasuredBoot)
		row.CertKeySHA256, row.PrevCertKeySHA256 = bytes.Clone(r.CertKeySHA256), bytes.Clone(r.PrevCertKeySHA256)
		if r.Report != nil {
			rep := *r.Report
			rep.Digest, rep.Body, rep.Proof = bytes.Clone(rep.Digest), bytes.Clone(rep.Body), bytes.Clone(rep.Proof)
			row.Report = &rep
		}
		rows[row.ID] = row
		return nil
	})
	if err != nil {
		t.Fatalf("ScanFleet: %v", err)
	}
	return rows
}
