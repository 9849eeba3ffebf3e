package postgres_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/postgres"
	"github.com/posture-project/posture/internal/testtools"
)

var ctx = context.Background()

// openClosed opens a Store on dsn and closes it when the test ends.
func openClosed(t *testing.T, dsn string, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	s := open(t, dsn, opts...)
	t.Cleanup(func() { s.Close() })
	return s
}

func enroll(t *testing.T, s store.Store, id string) {
	t.Helper()
	hash := sha256.Sum256([]byte("token-" + id))
	if err := s.CreateToken(ctx, store.Token{Hash: hash[:], ExpiresAt: time.Now().Add(time.Hour), Uses: 1}); err != nil {
		t.Fatal(err)
	}
	d := store.Device{ID: id, Hostname: id, Platform: "linux", Identity: "software", IdentityKey: []byte("key-" + id)}
	if _, _, err := s.EnrollDevice(ctx, hash[:], time.Now(), d); err != nil {
		t.Fatal(err)
	}
}

// report is a device's report at seq in the chain of variant; it
// continues the report before it in the chain of "".
func report(id string, seq uint64, variant string) store.Report {
	digest := func(seq uint64, variant string) []byte {
		d := sha256.Sum256(fmt.Appendf(nil, "%s/%d %s", id, seq, variant))
		return d[:]
	}
	r := store.Report{DeviceID: id, Seq: seq, Digest: digest(seq, variant), Nonce: []byte("n"),
		Body: []byte("body " + variant), Proof: []byte("p"), ReceivedAt: time.Unix(1_700_000_000+int64(seq), 0)}
	if seq > 1 {
		r.PrevDigest = digest(seq-1, "")
	}
	return r
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(ctx) })
	return c
}

// Event IDs are taken when a transaction records its event, so one that
// took a lower ID can commit after one that took a higher: the later
// commit's event shows up below IDs already listed, and both are listed
// in the end. (A collector tracks the gap until it fills.)
func TestEventsCommittedOutOfOrder(t *testing.T) {
	dsn := testtools.Postgres(t)
	s := openClosed(t, dsn)
	enroll(t, s, "dev-a")
	enroll(t, s, "dev-b")
	last, err := s.LastEventID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Each transaction changes its device the way the store does: the
	// row's lock first, then the event.
	change := func(c *pgx.Conn, device string) (pgx.Tx, uint64) {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `UPDATE devices SET state = $1, state_reason = 'x' WHERE id = $2`, store.StateSuspect, device); err != nil {
			t.Fatal(err)
		}
		data, err := store.EncodeEventData(store.Event{Kind: store.EventState, DeviceID: device})
		if err != nil {
			t.Fatal(err)
		}
		var id uint64
		if err := tx.QueryRow(ctx, `INSERT INTO events (at, kind, device_id, data) VALUES ($1, 'state', $2, $3) RETURNING id`,
			time.Now().UnixNano(), device, data).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return tx, id
	}
	slow, low := change(connect(t, dsn), "dev-a")
	fast, high := change(connect(t, dsn), "dev-b")
	if high <= low {
		t.Fatalf("IDs %d then %d: want them to grow", low, high)
	}
	if err := fast.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.EventIDs(ctx, last, 10); err != nil || !slices.Equal(ids, []uint64{high}) {
		t.Fatalf("with %d committed and %d not yet: EventIDs = %v, %v; want [%d]", high, low, ids, err, high)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ids, err := s.EventIDs(ctx, last, 10)
	if err != nil || !slices.Equal(ids, []uint64{low, high}) {
		t.Fatalf("after both committed: EventIDs = %v, %v; want [%d %d]", ids, err, low, high)
	}
	evs, err := s.Events(ctx, ids)
	if err != nil || len(evs) != 2 || evs[0].DeviceID != "dev-a" || evs[1].DeviceID != "dev-b" {
		t.Fatalf("Events = %+v, %v; want dev-a's then dev-b's", evs, err)
	}
	if got, err := s.LastEventID(ctx); err != nil || got != high {
		t.Errorf("LastEventID = %d, %v; want %d", got, err, high)
	}
}

// waitWake waits for a signal on Wake, and fails the test after a while.
func waitWake(t *testing.T, s store.Store, what string) {
	t.Helper()
	select {
	case <-s.Wake():
	case <-time.After(10 * time.Second):
		t.Fatalf("no wake-up %s", what)
	}
}

func drain(s store.Store) {
	for {
		select {
		case <-s.Wake():
		default:
			return
		}
	}
}

// Two collectors on one database: a change one commits wakes the other
// (and itself).
func TestWakeAcrossCollectors(t *testing.T) {
	dsn := testtools.Postgres(t)
	a, b := openClosed(t, dsn), openClosed(t, dsn)
	enroll(t, a, "dev-a")
	waitWake(t, b, "for another collector's enrollment")
	drain(a)
	drain(b)
	if _, err := a.SetDeviceState(ctx, "dev-a", store.StateSuspect, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	waitWake(t, b, "for another collector's state change")
	waitWake(t, a, "for its own state change")

	h, err := b.OpenReportStream(ctx, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	drain(a)
	r := report("dev-a", 1, "")
	r.Stream = h.Stream
	if _, err := b.AppendReport(ctx, r); err != nil {
		t.Fatal(err)
	}
	waitWake(t, a, "for another collector's report")
}

// The listening connection is lost (here: its server process ended);
// the store connects again, signals Wake once since notifications may
// have been missed, and hears other collectors again.
func TestWakeAfterReconnect(t *testing.T) {
	dsn := testtools.Postgres(t)
	s := openClosed(t, dsn, postgres.ListenBackoff(10*time.Millisecond, 100*time.Millisecond))
	other := openClosed(t, dsn)
	admin := connect(t, dsn)
	drain(s)
	tag, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query = 'LISTEN posture_events' AND pid <> pg_backend_pid()`)
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 2 {
		t.Fatalf("ended %d listening connections, want 2 (one per store)", tag.RowsAffected())
	}
	waitWake(t, s, "after listening again")
	drain(s)
	enroll(t, other, "dev-a")
	waitWake(t, s, "for a change after listening again")
}

// Two collectors append reports of one device on two streams at once:
// exactly one chain is stored, the older stream is told it was
// superseded, and no honest report is taken for a fork.
func TestTwoCollectorsOneDevice(t *testing.T) {
	dsn := testtools.Postgres(t)
	a, b := openClosed(t, dsn), openClosed(t, dsn)
	enroll(t, a, "dev-a")
	h, err := a.OpenReportStream(ctx, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	first := report("dev-a", 1, "")
	first.Stream = h.Stream
	if _, err := a.AppendReport(ctx, first); err != nil {
		t.Fatal(err)
	}
	const rounds = 30
	for round := range rounds {
		seq := uint64(round + 2)
		// The agent moved from collector a to b (or back): the stream it
		// opened last is the newer.
		older, newer := store.Store(a), store.Store(b)
		if round%2 == 1 {
			older, newer = b, a
		}
		ho, err := older.OpenReportStream(ctx, "dev-a")
		if err != nil {
			t.Fatal(err)
		}
		hn, err := newer.OpenReportStream(ctx, "dev-a")
		if err != nil {
			t.Fatal(err)
		}
		var errOlder, errNewer error
		var wg sync.WaitGroup
		wg.Go(func() {
			r := report("dev-a", seq, "held back on the older stream")
			r.Stream = ho.Stream
			_, errOlder = older.AppendReport(ctx, r)
		})
		wg.Go(func() {
			r := report("dev-a", seq, "")
			r.Stream = hn.Stream
			_, errNewer = newer.AppendReport(ctx, r)
		})
		wg.Wait()
		if errNewer != nil || !errors.Is(errOlder, store.ErrSuperseded) {
			t.Fatalf("round %d: newer stream %v, older stream %v; want nil and ErrSuperseded", round, errNewer, errOlder)
		}
	}
	d, err := b.Device(ctx, "dev-a")
	if err != nil || d.LastSeq != rounds+1 || string(d.LastDigest) != string(report("dev-a", rounds+1, "").Digest) {
		t.Errorf("head %d %x, %v; want the newer streams' chain at %d", d.LastSeq, d.LastDigest, err, rounds+1)
	}
	if n, err := a.CountReports(ctx, "dev-a"); err != nil || n != rounds+1 {
		t.Errorf("CountReports = %d, %v; want %d", n, err, rounds+1)
	}
}

// Two collectors append reports of many devices at once, each device from
// one of them: their shared transactions lock devices in one order, so
// none waits for the other in a cycle, and every report is stored.
func TestTwoCollectorsManyDevices(t *testing.T) {
	dsn := testtools.Postgres(t)
	stores := []store.Store{openClosed(t, dsn), openClosed(t, dsn)}
	const devices, perDevice = 40, 15
	for i := range devices {
		enroll(t, stores[0], fmt.Sprintf("dev-%02d", i))
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range devices {
		wg.Go(func() {
			id := fmt.Sprintf("dev-%02d", i)
			s := stores[i%2]
			h, err := s.OpenReportStream(ctx, id)
			if err != nil {
				t.Error(err)
				return
			}
			for seq := uint64(1); seq <= perDevice; seq++ {
				r := report(id, seq, "")
				r.Stream = h.Stream
				if _, err := s.AppendReport(ctx, r); err != nil {
					t.Errorf("%s/%d: %v", id, seq, err)
					return
				}
			}
		})
	}
	wg.Wait()
	// A deadlock would cost a second (deadlock_timeout) before the server
	// broke it.
	t.Logf("%d reports from two collectors in %v", devices*perDevice, time.Since(start))
	for i := range devices {
		id := fmt.Sprintf("dev-%02d", i)
		if d, err := stores[1].Device(ctx, id); err != nil || d.LastSeq != perDevice {
			t.Errorf("%s: head %d, %v; want %d", id, d.LastSeq, err, perDevice)
		}
	}
}

// A report whose statement fails fails its shared transaction; the others
// of that transaction are appended again alone, and only it fails.
func TestAppendFailureStaysWithItsReport(t *testing.T) {
	dsn := testtools.Postgres(t)
	s := openClosed(t, dsn)
	const devices = 30
	heads := make([]store.StreamHead, devices)
	for i := range devices {
		id := fmt.Sprintf("dev-%02d", i)
		enroll(t, s, id)
		h, err := s.OpenReportStream(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		heads[i] = h
	}
	// A report stored past dev-00's head, as no append stores one: the
	// head moves to seq 1, and then storing the report collides with it.
	bad := report("dev-00", 1, "")
	if _, err := connect(t, dsn).Exec(ctx, `INSERT INTO reports (device_id, seq, digest, nonce, body, proof, received_at)
		VALUES ('dev-00', 1, 'x', '', '', '', 0)`); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		errs := make([]error, devices)
		var wg sync.WaitGroup
		for i := range devices {
			wg.Go(func() {
				r := report(fmt.Sprintf("dev-%02d", i), uint64(round+1), "")
				if i == 0 {
					r = bad
				}
				r.Stream = heads[i].Stream
				_, errs[i] = s.AppendReport(ctx, r)
			})
		}
		wg.Wait()
		if errs[0] == nil {
			t.Errorf("round %d: the colliding report was stored", round)
		}
		for i, err := range errs[1:] {
			if err != nil {
				t.Errorf("round %d: dev-%02d: %v", round, i+1, err)
			}
		}
	}
	if d, err := s.Device(ctx, "dev-00"); err != nil || d.LastSeq != 0 {
		t.Errorf("dev-00 head %d, %v: the failed append moved it", d.LastSeq, err)
	}
}

// Collectors starting together on an empty database migrate it once,
// one after the other.
func TestOpenConcurrently(t *testing.T) {
	dsn := testtools.Postgres(t)
	const n = 4
	stores := make([]*postgres.Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = postgres.Open(ctx, dsn) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("Open %d: %v", i, errs[i])
			continue
		}
		stores[i].Close()
	}
}

// A database that a newer collector migrated is refused, and says so.
func TestOpenRefusesNewerSchema(t *testing.T) {
	dsn := testtools.Postgres(t)
	open(t, dsn).Close()
	if _, err := connect(t, dsn).Exec(ctx, `UPDATE meta SET value = value + 1 WHERE key = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	s, err := postgres.Open(ctx, dsn)
	if err == nil {
		s.Close()
		t.Fatal("Open of a database with a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "newer than this collector supports") {
		t.Errorf("Open error = %v; want it to say the schema is newer", err)
	}
}

// A server that cannot be reached is named in the error.
func TestOpenUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = postgres.Open(ctx, "postgres://posture:secret@"+addr+"/posture?connect_timeout=2")
	if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "cannot reach PostgreSQL") {
		t.Errorf("Open = %v; want it to name %s and say it cannot be reached", err, addr)
	}
	if err != nil && strings.Contains(err.Error(), "secret") {
		t.Errorf("Open error shows the password: %v", err)
	}
}

// A database of schema version 1, whose device certificates have no key
// hash, is migrated: its device keeps its certificate serial without one,
// the first key to claim the serial is recorded, and a renewal records
// the new certificate's key.
func TestMigrateCertKeys(t *testing.T) {
	dsn := testtools.Postgres(t)
	// At version 1, as a collector from before left it.
	if _, err := connect(t, dsn).Exec(ctx, `CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);`+postgres.Migrations[0]+`
		INSERT INTO meta (key, value) VALUES ('schema_version', 1);
		INSERT INTO devices (id, hostname, platform, identity, identity_key, assurance, state, state_reason, enrolled_at, cert_serial)
		VALUES ('dev-a', 'a', 'linux', 'software', '\x01', 1, 1, '', 1, '1f')`); err != nil {
		t.Fatal(err)
	}
	s := openClosed(t, dsn)
	d, err := s.Device(ctx, "dev-a")
	if err != nil || d.CertSerial != "1f" || d.CertKeySHA256 != nil || d.PrevCertKeySHA256 != nil {
		t.Fatalf("device after migration: serial %q, keys %x %x, %v; want 1f without keys", d.CertSerial, d.CertKeySHA256, d.PrevCertKeySHA256, err)
	}
	var row store.FleetRow
	if err := s.ScanFleet(ctx, 1, func(_ int, r *store.FleetRow) error { row = *r; return nil }); err != nil || row.CertKeySHA256 != nil {
		t.Errorf("fleet row after migration: key %x, %v; want none", row.CertKeySHA256, err)
	}
	key := sha256.Sum256([]byte("the device's TLS key"))
	if _, ev, err := s.BindCertKey(ctx, "dev-a", store.Cert{Serial: "1f", KeySHA256: key[:]}, time.Now()); err != nil || ev.ID == 0 {
		t.Fatalf("BindCertKey after migration: event %d, %v", ev.ID, err)
	}
	next := sha256.Sum256([]byte("the renewed TLS key"))
	d, _, err = s.RenewCertificate(ctx, "dev-a", store.Cert{Serial: "1f", KeySHA256: key[:]}, store.Cert{Serial: "20", KeySHA256: next[:]}, time.Now())
	if err != nil || !bytes.Equal(d.CertKeySHA256, next[:]) || !bytes.Equal(d.PrevCertKeySHA256, key[:]) {
		t.Errorf("renewal after migration: %+v, %v; want both keys recorded", d, err)
	}
}
