package sqlite_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/browsercert"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var makeFixture = flag.Bool("make-fixture", false, "write testdata/schema-vN.sql from a database this code writes (N: its schema version)")

// Fixtures are databases written by the collector of an earlier schema
// version, kept as SQL text (testdata/schema-vN.sql): the code of that
// version made them, so a migration is tested against what it really
// meets. Each new schema version adds its own fixture, made before the
// next change (go test -run Fixture -make-fixture).

// TestMigrateFromFixtures opens every fixture with this collector's store:
// the schema migrates forward at open, and every record is still there.
func TestMigrateFromFixtures(t *testing.T) {
	current := schemaVersion(t, newDatabase(t))
	if *makeFixture {
		writeFixture(t, current)
	}
	fixtures, _ := filepath.Glob("testdata/schema-v*.sql")
	if len(fixtures) == 0 {
		t.Fatal("no fixtures in testdata")
	}
	newest := 0
	for _, f := range fixtures {
		v, _ := strconv.Atoi(regexp.MustCompile(`schema-v(\d+)\.sql`).FindStringSubmatch(f)[1])
		newest = max(newest, v)
		t.Run(filepath.Base(f), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "posture.db")
			want := loadFixture(t, f, path)
			if got := schemaVersion(t, path); got != v {
				t.Fatalf("fixture says version %d, holds %d", v, got)
			}
			s, err := sqlite.Open(path)
			if err != nil {
				t.Fatalf("open a version %d database: %v", v, err)
			}
			got := counts(t, s)
			s.Close()
			if got != want {
				t.Errorf("after migrating from version %d: %s; the fixture holds %s", v, got, want)
			}
			if after := schemaVersion(t, path); after != current {
				t.Errorf("schema version %d after open, want %d", after, current)
			}
		})
	}
	if newest < current {
		t.Errorf("no fixture of schema version %d, this code's: make one before the next change (go test -run Fixture -make-fixture ./collector/store/sqlite)", current)
	}
}

// A database of a newer schema than this collector knows is refused with a
// message that says what to do, and left as it is.
func TestRefuseNewerSchema(t *testing.T) {
	path := newDatabase(t)
	current := schemaVersion(t, path)
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE meta SET value = ? WHERE key = 'schema_version'`, current+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = sqlite.Open(path)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("database schema version %d is newer than this collector supports (%d)", current+1, current)) || !strings.Contains(err.Error(), "run a newer collector") {
		t.Errorf("open a newer database: %v", err)
	}
	if got := schemaVersion(t, path); got != current+1 {
		t.Errorf("the refused database is at version %d now", got)
	}
}

func newDatabase(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "posture.db")
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	return path
}

func schemaVersion(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v int
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// counts describes what a store holds: records by kind, and each device's
// chain head.
func counts(t *testing.T, s *sqlite.Store) string {
	t.Helper()
	n := map[string]int{}
	var heads []string
	err := s.Dump(context.Background(), func(r store.Record) error {
		switch {
		case r.Token != nil:
			n["tokens"]++
		case r.Gateway != nil:
			n["gateways"]++
		case r.Device != nil:
			n["devices"]++
			heads = append(heads, fmt.Sprintf("%s@%d", r.Device.ID, r.Device.LastSeq))
		case r.Report != nil:
			n["reports"]++
		case r.Decision != nil:
			n["decisions"]++
		case r.PinnedEK != nil:
			n["pinned"]++
		case r.Standing != nil:
			n["standings"]++
		case r.DeviceUser != nil:
			n["users"]++
		case r.SSFClient != nil:
			n["ssf_receivers"]++
		case r.Audit != nil:
			n["audit"]++
		case r.BrowserCert != nil:
			n["browser_certs"]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(heads)
	out := fmt.Sprintf("tokens=%d gateways=%d devices=%d reports=%d decisions=%d pinned=%d heads=%s",
		n["tokens"], n["gateways"], n["devices"], n["reports"], n["decisions"], n["pinned"], strings.Join(heads, ","))
	// Kinds of record later schema versions brought, named when there are
	// any (so that an older fixture's header still reads the same).
	for _, k := range []string{"standings", "users", "ssf_receivers", "audit", "browser_certs"} {
		if n[k] > 0 {
			out += fmt.Sprintf(" %s=%d", k, n[k])
		}
	}
	return out
}

// loadFixture builds the database at path from a fixture's SQL and returns
// what its header says it holds.
func loadFixture(t *testing.T, fixture, path string) string {
	t.Helper()
	data, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		if h, ok := strings.CutPrefix(sc.Text(), "-- holds: "); ok {
			want = h
		}
	}
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(string(data)); err != nil {
		t.Fatalf("load %s: %v", fixture, err)
	}
	return want
}

// writeFixture runs a collector of this code with an agent that reports,
// a revoked device, a gateway and a decision, and writes its database as
// testdata/schema-vN.sql.
func writeFixture(t *testing.T, version int) {
	dir := t.TempDir()
	// Schema version 12 brought the console: its sign-in links and the
	// audit log, in which every admin call below is recorded.
	c, err := collector.New(collector.Config{DataDir: dir, Listen: "127.0.0.1:0", Console: &collector.ConsoleConfig{Listen: "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	conn, err := collector.DialAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	adm := posturev1.NewAdminServiceClient(conn)
	tok, err := adm.CreateEnrollmentToken(ctx, &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: 3})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		res, err := agent.Enroll(ctx, t.TempDir(), tok.GetToken())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.DeviceID)
	}
	stateDir := t.TempDir()
	res, err := agent.Enroll(ctx, stateDir, tok.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "agent.sock")
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: 20 * time.Millisecond, Measurer: report{}, LocalSocket: socket})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	adone := make(chan struct{})
	go func() { defer close(adone); a.Run(actx) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		d, err := adm.GetDevice(ctx, &posturev1.GetDeviceRequest{DeviceId: res.DeviceID})
		if err == nil && d.GetDevice().GetLastSeq() >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no reports")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Schema version 13: a browser certificate.
	browserKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&browserKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := browsercert.Ask(socket, browsercert.Request{Op: browsercert.OpBrowserCert, PublicKey: pub}); err != nil {
		t.Fatal(err)
	}
	stopAgent()
	<-adone
	if _, err := adm.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: ids[0], Reason: "lost"}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.PreregisterEK(ctx, &posturev1.PreregisterEKRequest{EkSha256: []string{strings.Repeat("ab", 32)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := posturev1.NewGatewayServiceClient(conn).CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: res.DeviceID, AccessLevel: "basic"}); err != nil {
		t.Fatal(err)
	}
	// Schema version 11: a device's user and a Shared Signals receiver.
	if _, err := adm.BindDeviceUser(ctx, &posturev1.BindDeviceUserRequest{DeviceId: res.DeviceID, User: &posturev1.DeviceUser{Email: "ada@example.com"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.AddSSFReceiver(ctx, &posturev1.AddSSFReceiverRequest{Name: "okta", Audience: "https://okta.example", Level: "basic"}); err != nil {
		t.Fatal(err)
	}
	// Schema version 12 also keeps when a token was revoked.
	if _, err := adm.CreateEnrollmentToken(ctx, &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Description: "revoked"}); err != nil {
		t.Fatal(err)
	}
	toks, err := adm.ListEnrollmentTokens(ctx, &posturev1.ListEnrollmentTokensRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.RevokeEnrollmentToken(ctx, &posturev1.RevokeEnrollmentTokenRequest{Id: toks.GetTokens()[0].GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := posturev1.NewConsoleServiceClient(conn).CreateSignInLink(ctx, &posturev1.CreateSignInLinkRequest{Ttl: durationpb.New(time.Hour), Name: "first admin"}); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "posture.db")
	s, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	holds := counts(t, s)
	s.Close()
	sqlText := dump(t, path)
	out := fmt.Sprintf("-- A database of schema version %d, written by the collector of that version\n-- (go test -run Fixture -make-fixture ./collector/store/sqlite) on %s.\n-- holds: %s\n%s",
		version, time.Now().UTC().Format("2006-01-02"), holds, sqlText)
	if err := os.WriteFile(fmt.Sprintf("testdata/schema-v%d.sql", version), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dump writes a database as SQL: its tables, their rows, its indexes.
func dump(t *testing.T, path string) string {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	b.WriteString("PRAGMA page_size = 8192;\nPRAGMA journal_mode = WAL;\nBEGIN;\n")
	rows, err := db.Query(`SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table' DESC, rowid`)
	if err != nil {
		t.Fatal(err)
	}
	type obj struct{ typ, name, sql string }
	var objs []obj
	for rows.Next() {
		var o obj
		if err := rows.Scan(&o.typ, &o.name, &o.sql); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	rows.Close()
	for _, o := range objs {
		b.WriteString(o.sql + ";\n")
		if o.typ != "table" {
			continue
		}
		r, err := db.Query(`SELECT * FROM "` + o.name + `"`)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := r.Columns()
		for r.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := r.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			lits := make([]string, len(vals))
			for i, v := range vals {
				switch x := v.(type) {
				case nil:
					lits[i] = "NULL"
				case int64:
					lits[i] = strconv.FormatInt(x, 10)
				case float64:
					lits[i] = strconv.FormatFloat(x, 'g', -1, 64)
				case []byte:
					lits[i] = "X'" + hex.EncodeToString(x) + "'"
				case string:
					lits[i] = "'" + strings.ReplaceAll(x, "'", "''") + "'"
				case time.Time:
					t.Fatalf("%s: a time value; the dump wants the stored form", o.name)
				default:
					t.Fatalf("%s: %T", o.name, v)
				}
			}
			fmt.Fprintf(&b, "INSERT INTO \"%s\" VALUES (%s);\n", o.name, strings.Join(lits, ", "))
		}
		r.Close()
	}
	b.WriteString("COMMIT;\n")
	return b.String()
}

// report is a measurement for the fixture's reporting agent.
type report struct{}

func (report) Collect(context.Context) *posturev1.PostureReport {
	meta := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now(), Source: posturev1.Source_SOURCE_OS}
	return &posturev1.PostureReport{
		Os:   &posturev1.OSInfo{Meta: meta, Platform: "linux", Name: "debian", Version: "12", KernelVersion: "6.1.0"},
		Disk: &posturev1.DiskEncryption{Meta: meta, SystemEncrypted: true, Volumes: []*posturev1.Volume{{MountPoint: "/", Encrypted: true}}},
	}
}
