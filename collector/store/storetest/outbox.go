package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector/store"
)

// outboxAll reads every message after after, for receiver.
func outboxAll(t *testing.T, s store.Store, after uint64, receiver string) []store.OutboxMessage {
	t.Helper()
	msgs, err := s.OutboxAfter(ctx, after, receiver, -1)
	if err != nil {
		t.Fatalf("OutboxAfter: %v", err)
	}
	return msgs
}

func kinds(msgs []store.OutboxMessage) []string {
	var k []string
	for _, m := range msgs {
		k = append(k, m.Kind)
	}
	return k
}

func outboxData(t *testing.T, m store.OutboxMessage) store.OutboxData {
	t.Helper()
	var d store.OutboxData
	if err := json.Unmarshal(m.Data, &d); err != nil {
		t.Fatalf("message %d data %q: %v", m.Seq, m.Data, err)
	}
	return d
}

var (
	since1 = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	since2 = time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
)

// standings: a standing is recorded by compare-and-set with an event and
// the messages of what changed, survives a reopen, and a device that
// stops being active loses its levels in the same transaction.
func (c *suite) standings(t *testing.T) {
	s, reopen := c.fresh(t)
	enroll(t, s, "dev-a")
	enroll(t, s, "dev-b")
	start, err := s.LastOutboxSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}

	first := store.Standing{Levels: []string{"open", "corp"}, Failing: []store.FailingCheck{{Check: "firewall", Since: since1}}}
	ev, err := s.RecordStanding(ctx, "dev-a", store.Standing{}, first, map[string]string{"firewall": "firewall is off"}, since1)
	if err != nil {
		t.Fatalf("RecordStanding: %v", err)
	}
	if ev.ID == 0 || ev.Kind != store.EventStanding || ev.Standing == nil || !ev.Standing.Equal(first) || ev.Device == nil || ev.Device.ID != "dev-a" {
		t.Fatalf("event = %+v, want a standing event with the standing and the device", ev)
	}
	msgs := outboxAll(t, s, start, "")
	if got, want := kinds(msgs), []string{store.OutboxCheckFailing, store.OutboxLevelGained, store.OutboxLevelGained}; !slices.Equal(got, want) {
		t.Fatalf("messages %v, want %v", got, want)
	}
	d := outboxData(t, msgs[0])
	if d.Check == nil || d.Check.Check != "firewall" || !d.Check.Since.Equal(since1) || d.Reason != "firewall is off" || d.Device == nil || d.Device.Hostname != "dev-a.example.org" {
		t.Errorf("check.failing says %+v", d)
	}
	if got := []string{outboxData(t, msgs[1]).Level, outboxData(t, msgs[2]).Level}; !slices.Equal(got, []string{"corp", "open"}) {
		t.Errorf("levels gained %v", got)
	}
	for _, m := range msgs {
		if m.EventID != ev.ID || m.DeviceID != "dev-a" || m.ID == "" || m.Receiver != "" {
			t.Errorf("message %+v: want the event's ID, the device, an ID, for every receiver", m)
		}
	}

	// A change made from what is no longer stored changes nothing.
	if _, err := s.RecordStanding(ctx, "dev-a", store.Standing{}, store.Standing{Levels: []string{"open"}}, nil, since2); !errors.Is(err, store.ErrStandingChanged) {
		t.Fatalf("RecordStanding from a stale standing: %v, want ErrStandingChanged", err)
	}
	// Recording what is stored writes nothing.
	if ev, err := s.RecordStanding(ctx, "dev-a", first, store.Standing{Levels: []string{"corp", "open"}, Failing: first.Failing}, nil, since2); err != nil || ev.ID != 0 {
		t.Fatalf("recording the same standing: %+v, %v; want nothing", ev, err)
	}
	if _, err := s.RecordStanding(ctx, "dev-x", store.Standing{}, first, nil, since2); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}

	// Passing again, a grace ending announced on another check, a level lost.
	second := store.Standing{Levels: []string{"open"}, Failing: []store.FailingCheck{{Check: "disk_encryption", Since: since2, BlocksAt: since2.Add(72 * time.Hour), Warned: true}}}
	last := msgs[len(msgs)-1].Seq
	if _, err := s.RecordStanding(ctx, "dev-a", first, second, nil, since2); err != nil {
		t.Fatalf("RecordStanding: %v", err)
	}
	msgs = outboxAll(t, s, last, "")
	if got, want := kinds(msgs), []string{store.OutboxCheckFailing, store.OutboxGraceEnding, store.OutboxCheckPassing, store.OutboxLevelLost}; !slices.Equal(got, want) {
		t.Fatalf("messages %v, want %v", got, want)
	}
	if d := outboxData(t, msgs[1]); d.Check == nil || !d.Check.BlocksAt.Equal(since2.Add(72*time.Hour)) {
		t.Errorf("grace.ending says %+v", d)
	}

	// Revoking loses every level with the revocation.
	last = msgs[len(msgs)-1].Seq
	ev, err = s.SetDeviceState(ctx, "dev-a", store.StateRevoked, "stolen", since2)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Standing == nil || len(ev.Standing.Levels) != 0 || len(ev.Standing.Failing) != 1 {
		t.Errorf("revocation event standing = %+v, want no levels and the failing check kept", ev.Standing)
	}
	msgs = outboxAll(t, s, last, "")
	if got, want := kinds(msgs), []string{store.OutboxDeviceRevoked, store.OutboxLevelLost}; !slices.Equal(got, want) {
		t.Fatalf("revocation messages %v, want %v", got, want)
	}
	if d := outboxData(t, msgs[0]); d.Device == nil || d.Device.State != "revoked" || d.Reason != "stolen" {
		t.Errorf("device.revoked says %+v", d)
	}
	// A revoked device is recorded without levels.
	revoked := *ev.Standing
	if ev, err := s.RecordStanding(ctx, "dev-a", revoked, store.Standing{Levels: []string{"open"}, Failing: revoked.Failing}, nil, since2); err != nil || ev.ID != 0 {
		t.Errorf("levels for a revoked device: %+v, %v; want nothing recorded", ev, err)
	}

	// An active device's change of state that keeps it active keeps its levels.
	if _, err := s.RecordStanding(ctx, "dev-b", store.Standing{}, store.Standing{Levels: []string{"open"}}, nil, since2); err != nil {
		t.Fatal(err)
	}
	if ev, err := s.SetDeviceState(ctx, "dev-b", store.StateActive, "checked", since2); err != nil || ev.Standing != nil {
		t.Errorf("active to active: %+v, %v; want the standing untouched", ev.Standing, err)
	}

	s = reopen(t, s)
	got := map[string]store.Standing{}
	if err := s.Standings(ctx, func(id string, st store.Standing) error { got[id] = st; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got["dev-a"].Equal(revoked) || !got["dev-b"].Equal(store.Standing{Levels: []string{"open"}}) {
		t.Errorf("Standings after a reopen = %+v", got)
	}
	// Events carry the standing, as every collector applies it.
	evs, err := s.Events(ctx, []uint64{ev.ID})
	if err != nil || len(evs) != 1 || evs[0].Standing == nil || !evs[0].Standing.Equal(revoked) {
		t.Errorf("Events = %+v, %v; want the revocation with its standing", evs, err)
	}
}

// outbox: device changes write their messages with the change; sequence
// numbers grow and IDs are unique; messages for one receiver reach only
// it; pruning keeps what a receiver has still to get.
func (c *suite) outbox(t *testing.T) {
	s, reopen := c.fresh(t)
	if n, err := s.LastOutboxSeq(ctx); err != nil || n != 0 {
		t.Fatalf("LastOutboxSeq of an empty outbox = %d, %v", n, err)
	}
	enroll(t, s, "dev-a")
	enroll(t, s, "dev-b")
	if _, err := s.SetDeviceState(ctx, "dev-a", store.StateSuspect, "chain broken", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDeviceState(ctx, "dev-a", store.StateActive, "checked", time.Now()); err != nil {
		t.Fatal(err)
	}
	appendChain(t, s, "dev-b", 1, 3) // reports send nothing
	msgs := outboxAll(t, s, 0, "")
	if got, want := kinds(msgs), []string{store.OutboxDeviceEnrolled, store.OutboxDeviceEnrolled, store.OutboxDeviceSuspect, store.OutboxDeviceActive}; !slices.Equal(got, want) {
		t.Fatalf("messages %v, want %v", got, want)
	}
	ids := map[string]bool{}
	for i, m := range msgs {
		if i > 0 && m.Seq <= msgs[i-1].Seq {
			t.Errorf("sequence numbers do not grow: %d after %d", m.Seq, msgs[i-1].Seq)
		}
		if len(m.ID) != 36 || ids[m.ID] {
			t.Errorf("message ID %q is not a fresh UUID", m.ID)
		}
		ids[m.ID] = true
	}
	if d := outboxData(t, msgs[2]); d.Device == nil || d.Device.ID != "dev-a" || d.Reason != "chain broken" || d.Device.Assurance != "software" {
		t.Errorf("device.suspect says %+v", d)
	}

	// One receiver's message.
	mine, err := s.AppendOutbox(ctx, []store.OutboxMessage{{At: time.Now(), Kind: store.OutboxVerification, Receiver: "ssf:one", Data: []byte(`{"state":"x"}`)}})
	if err != nil || len(mine) != 1 || mine[0].Seq <= msgs[3].Seq || mine[0].ID == "" {
		t.Fatalf("AppendOutbox = %+v, %v", mine, err)
	}
	if got := outboxAll(t, s, msgs[3].Seq, "ssf:one"); len(got) != 1 || got[0].ID != mine[0].ID {
		t.Errorf("the receiver's own messages: %+v", got)
	}
	if got := outboxAll(t, s, msgs[3].Seq, "ssf:two"); len(got) != 0 {
		t.Errorf("another receiver gets %+v", got)
	}
	if got, err := s.OutboxAfter(ctx, 0, "", 2); err != nil || len(got) != 2 || got[1].Seq != msgs[1].Seq {
		t.Errorf("OutboxAfter with a limit = %+v, %v", got, err)
	}
	last, err := s.LastOutboxSeq(ctx)
	if err != nil || last != mine[0].Seq {
		t.Errorf("LastOutboxSeq = %d, %v; want %d", last, err, mine[0].Seq)
	}

	// A receiver starts at the end; pruning keeps what it has not had.
	r, err := s.AddReceiver(ctx, "webhook:a", "webhook", nil, time.Now())
	if err != nil || r.Cursor != last || r.Kind != "webhook" {
		t.Fatalf("AddReceiver = %+v, %v; want its cursor at %d", r, err, last)
	}
	if _, err := s.SetDeviceState(ctx, "dev-b", store.StateSuspect, "x", time.Now()); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneOutbox(ctx, time.Now().Add(-time.Hour)); err != nil || n != 5 {
		t.Fatalf("PruneOutbox = %d, %v; want the 5 messages before the receiver's cursor", n, err)
	}
	if got := outboxAll(t, s, 0, ""); len(got) != 1 || got[0].Kind != store.OutboxDeviceSuspect || got[0].DeviceID != "dev-b" {
		t.Fatalf("after pruning: %v", kinds(got))
	}
	// Past the cutoff, what no receiver had goes too; the sequence goes on.
	if n, err := s.PruneOutbox(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("PruneOutbox past the cutoff = %d, %v", n, err)
	}
	floor, err := s.LastOutboxSeq(ctx)
	if err != nil || floor <= last {
		t.Errorf("LastOutboxSeq after pruning all = %d, %v; want above %d", floor, err, last)
	}
	s = reopen(t, s)
	enroll(t, s, "dev-c")
	if got := outboxAll(t, s, 0, ""); len(got) != 1 || got[0].Seq <= floor {
		t.Errorf("after a reopen, a new message %+v does not continue above %d", got, floor)
	}
	// With no receiver, pruning takes everything.
	if err := s.DeleteReceiver(ctx, "webhook:a"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneOutbox(ctx, time.Now().Add(-time.Hour)); err != nil || n != 1 {
		t.Errorf("PruneOutbox without receivers = %d, %v", n, err)
	}
}

// outboxInOrder: messages commit in the order of their sequence numbers,
// so a reader that moves its cursor past what it read never misses one
// that commits later, however many collectors write at once.
func (c *suite) outboxInOrder(t *testing.T) {
	s, _ := c.fresh(t)
	const devices, changes = 8, 15
	for i := range devices {
		enroll(t, s, fmt.Sprintf("dev-%d", i))
	}
	start, err := s.LastOutboxSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("dev-%d", i)
			for j := range changes {
				state := store.StateSuspect
				if j%2 == 1 {
					state = store.StateActive
				}
				if _, err := s.SetDeviceState(ctx, id, state, "flip", time.Now()); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	cursor, seen := start, 0
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		msgs, err := s.OutboxAfter(ctx, cursor, "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			cursor = m.Seq
			seen++
		}
	}
	msgs := outboxAll(t, s, cursor, "")
	seen += len(msgs)
	if seen != devices*changes {
		t.Errorf("a reader following the outbox saw %d messages, want %d: one committed below its cursor", seen, devices*changes)
	}
}

// receivers: leases keep one collector delivering each receiver; a lease
// that runs out passes to another; only the holder moves the cursor,
// which never goes back.
func (c *suite) receivers(t *testing.T) {
	s, reopen := c.fresh(t)
	now := time.Unix(1_800_000_000, 0).UTC()
	cfg := []byte(`{"endpoint":"https://receiver.example/events"}`)
	if _, err := s.AddReceiver(ctx, "ssf:s1", "ssf", cfg, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddReceiver(ctx, "webhook:w", "webhook", nil, now); err != nil {
		t.Fatal(err)
	}
	// Adding again keeps what is stored.
	if r, err := s.AddReceiver(ctx, "ssf:s1", "ssf", []byte(`{}`), now.Add(time.Hour)); err != nil || string(r.Config) != string(cfg) || !r.CreatedAt.Equal(now) {
		t.Errorf("AddReceiver of a known ID = %+v, %v; want it as stored", r, err)
	}
	ids := []string{"ssf:s1", "webhook:w", "webhook:unknown"}
	got, err := s.ClaimReceivers(ctx, "c1", ids, now.Add(30*time.Second), now)
	if err != nil || len(got) != 2 || got[0].Holder != "c1" || !got[0].LeaseUntil.Equal(now.Add(30*time.Second)) {
		t.Fatalf("first claim = %+v, %v", got, err)
	}
	if got, err := s.ClaimReceivers(ctx, "c2", ids, now.Add(40*time.Second), now.Add(10*time.Second)); err != nil || len(got) != 0 {
		t.Fatalf("claim of held leases = %+v, %v; want none", got, err)
	}
	if err := s.ReceiverDelivered(ctx, "ssf:s1", "c2", 5, 1, now); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("delivery by a collector without the lease: %v", err)
	}
	if err := s.ReceiverFailed(ctx, "ssf:s1", "c1", "connection refused", now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.ReceiverFailed(ctx, "ssf:s1", "c1", "503", now.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	r, err := s.Receiver(ctx, "ssf:s1")
	if err != nil || r.Attempts != 2 || !r.FailingSince.Equal(now.Add(time.Second)) || r.LastError != "503" {
		t.Errorf("after two failures: %+v, %v", r, err)
	}
	if err := s.ReceiverDelivered(ctx, "ssf:s1", "c1", 7, 3, now.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.ReceiverDelivered(ctx, "ssf:s1", "c1", 4, 0, now.Add(4*time.Second)); err != nil {
		t.Fatal(err)
	}
	r, _ = s.Receiver(ctx, "ssf:s1")
	if r.Cursor != 7 || r.Delivered != 3 || !r.DeliveredAt.Equal(now.Add(3*time.Second)) || r.Attempts != 0 || !r.FailingSince.IsZero() || r.LastError != "" {
		t.Errorf("after deliveries: %+v; want cursor 7, 3 delivered, failures cleared", r)
	}
	// The lease runs out: another collector takes it.
	got, err = s.ClaimReceivers(ctx, "c2", ids, now.Add(70*time.Second), now.Add(31*time.Second))
	if err != nil || len(got) != 2 || got[0].Cursor != 7 {
		t.Fatalf("claim after the lease ran out = %+v, %v", got, err)
	}
	if err := s.ReceiverDelivered(ctx, "ssf:s1", "c1", 9, 1, now); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("the old holder still records deliveries: %v", err)
	}
	if err := s.ReleaseReceivers(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ClaimReceivers(ctx, "c1", ids, now.Add(90*time.Second), now.Add(32*time.Second)); err != nil || len(got) != 2 {
		t.Errorf("claim after a release = %+v, %v", got, err)
	}
	if err := s.SetReceiverConfig(ctx, "ssf:s1", []byte(`{"status":"paused"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetReceiverConfig(ctx, "ssf:none", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetReceiverConfig of an unknown receiver: %v", err)
	}
	s = reopen(t, s)
	all, err := s.Receivers(ctx)
	if err != nil || len(all) != 2 || all[0].ID != "ssf:s1" || string(all[0].Config) != `{"status":"paused"}` || all[0].Holder != "c1" || all[1].Config != nil {
		t.Errorf("Receivers after a reopen = %+v, %v", all, err)
	}
	if err := s.DeleteReceiver(ctx, "ssf:s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Receiver(ctx, "ssf:s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted receiver: %v", err)
	}
	if err := s.DeleteReceiver(ctx, "ssf:s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
}

// receiversClaimedOnce: collectors claiming the same receivers at once
// never both get one.
func (c *suite) receiversClaimedOnce(t *testing.T) {
	s, _ := c.fresh(t)
	now := time.Now()
	var ids []string
	for i := range 20 {
		id := fmt.Sprintf("webhook:%02d", i)
		ids = append(ids, id)
		if _, err := s.AddReceiver(ctx, id, "webhook", nil, now); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu     sync.Mutex
		holder = map[string]string{}
		wg     sync.WaitGroup
	)
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			me := fmt.Sprintf("c%d", c)
			got, err := s.ClaimReceivers(ctx, me, ids, now.Add(time.Minute), now)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range got {
				if h, ok := holder[r.ID]; ok {
					t.Errorf("%s claimed by %s and %s", r.ID, h, me)
				}
				holder[r.ID] = me
			}
		}()
	}
	wg.Wait()
	if len(holder) != len(ids) {
		t.Errorf("%d of %d receivers claimed", len(holder), len(ids))
	}
}

// leases: one holder at a time; it passes on once it runs out or is
// released.
func (c *suite) leases(t *testing.T) {
	s, _ := c.fresh(t)
	now := time.Unix(1_800_000_000, 0)
	claim := func(holder string, at time.Time) bool {
		t.Helper()
		ok, err := s.ClaimLease(ctx, "standing", holder, at.Add(15*time.Second), at)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim("c1", now) || !claim("c1", now.Add(5*time.Second)) {
		t.Fatal("the first holder cannot take and renew the lease")
	}
	if claim("c2", now.Add(10*time.Second)) {
		t.Fatal("a second holder takes a running lease")
	}
	if !claim("c2", now.Add(21*time.Second)) {
		t.Fatal("a lease that ran out does not pass on")
	}
	if err := s.ReleaseLease(ctx, "standing", "c2"); err != nil {
		t.Fatal(err)
	}
	if !claim("c1", now.Add(22*time.Second)) {
		t.Error("a released lease does not pass on")
	}
}

// bindings: devices bound to users, Shared Signals clients and signing
// keys round-trip.
func (c *suite) bindings(t *testing.T) {
	s, reopen := c.fresh(t)
	enroll(t, s, "dev-a")
	at := time.Unix(1_800_000_000, 0).UTC()
	u := store.DeviceUser{DeviceID: "dev-a", Email: "ada@example.com", Issuer: "https://idp.example", Subject: "00u1", BoundAt: at}
	if err := s.BindDeviceUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	if err := s.BindDeviceUser(ctx, store.DeviceUser{DeviceID: "dev-x", Email: "x@example.com"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("binding an unknown device: %v", err)
	}
	u.Email = "ada.l@example.com"
	if err := s.BindDeviceUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	c1 := store.SSFClient{Name: "okta", TokenHash: hash("tok-1"), Audience: "https://example.okta.com", Level: "corp", CreatedAt: at}
	if err := s.AddSSFClient(ctx, c1); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSSFClient(ctx, store.SSFClient{Name: "okta", TokenHash: hash("tok-2"), CreatedAt: at}); err == nil {
		t.Error("a second client of the same name was added")
	}
	if err := s.AddSSFClient(ctx, store.SSFClient{Name: "other", TokenHash: hash("tok-1"), CreatedAt: at}); err == nil {
		t.Error("a second client with the same token was added")
	}
	k := store.SigningKey{KID: "k1", JWK: []byte(`{"kty":"RSA"}`), CreatedAt: at}
	if err := s.PublishSigningKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.PublishSigningKey(ctx, store.SigningKey{KID: "k1", JWK: []byte(`{}`), CreatedAt: at.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	got, err := s.DeviceUser(ctx, "dev-a")
	if err != nil || got != u {
		t.Errorf("DeviceUser = %+v, %v; want %+v", got, err, u)
	}
	clients, err := s.SSFClients(ctx)
	if err != nil || len(clients) != 1 || clients[0].Name != "okta" || string(clients[0].TokenHash) != string(c1.TokenHash) || clients[0].Level != "corp" || !clients[0].CreatedAt.Equal(at) {
		t.Errorf("SSFClients = %+v, %v", clients, err)
	}
	keys, err := s.SigningKeys(ctx)
	if err != nil || len(keys) != 1 || string(keys[0].JWK) != `{"kty":"RSA"}` {
		t.Errorf("SigningKeys = %+v, %v; want the first kept", keys, err)
	}
	if err := s.UnbindDeviceUser(ctx, "dev-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeviceUser(ctx, "dev-a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after unbinding: %v", err)
	}
	if err := s.RemoveSSFClient(ctx, "okta"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveSSFClient(ctx, "okta"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("removing twice: %v", err)
	}
}

// decisionsAnnounced: a saved decision marked to be announced writes its
// message in the same transaction, naming the device's user; a run saved
// again without the mark writes nothing more.
func (c *suite) decisionsAnnounced(t *testing.T) {
	s, _ := c.fresh(t)
	enroll(t, s, "dev-a")
	if err := s.BindDeviceUser(ctx, store.DeviceUser{DeviceID: "dev-a", Email: "ada@example.com"}); err != nil {
		t.Fatal(err)
	}
	start, _ := s.LastOutboxSeq(ctx)
	at := time.Unix(1_800_000_000, 0).UTC()
	d := store.Decision{Seq: 1, FirstAt: at, At: at, Count: 1, Device: "dev-a", Level: "corp", Caller: "gateway edge", Allowed: false, Score: 40,
		State: store.StateActive, Detail: []byte("detail"), Announce: true}
	if err := s.SaveDecisions(ctx, "c1", []store.Decision{d}, 10); err != nil {
		t.Fatal(err)
	}
	d.Count, d.Announce = 2, false
	if err := s.SaveDecisions(ctx, "c1", []store.Decision{d}, 10); err != nil {
		t.Fatal(err)
	}
	msgs := outboxAll(t, s, start, "")
	if len(msgs) != 1 || msgs[0].Kind != store.OutboxDecision || msgs[0].DeviceID != "dev-a" {
		t.Fatalf("messages %+v, want the one decision", msgs)
	}
	got := outboxData(t, msgs[0])
	if dd := got.Decision; dd == nil || dd.Collector != "c1" || dd.Level != "corp" || dd.Allowed || dd.Score != 40 || string(dd.Detail) != "detail" || !dd.At.Equal(at) {
		t.Errorf("decision message %+v", got.Decision)
	}
	if got.User == nil || got.User.Email != "ada@example.com" {
		t.Errorf("decision message user %+v", got.User)
	}
}
