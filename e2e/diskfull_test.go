package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
)

// fill writes to path until the filesystem holding it is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, size := range []int{1 << 20, 64 << 10, 4 << 10, 512} {
		buf := make([]byte, size)
		for {
			_, err := f.Write(buf)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

// metricValue is the value of the sample named (with its labels) in a
// Prometheus text exposition, or 0 when it is absent.
func metricValue(t *testing.T, body, sample string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// The collector's data directory fills up while agents stream: reports
// are refused without acknowledgement and stay spooled, the collector
// keeps running and says why in its log and its metrics, nothing is
// corrupted, and once space returns ingestion resumes by itself and every
// spooled report is stored, each measurement exactly once.
func TestCollectorDiskFull(t *testing.T) {
	t.Parallel()
	dataDir := testtools.SmallFS(t, 16<<20)
	c := startSQLiteCollector(t, dataDir)
	tok := c.token(10)
	var agents []*faultAgent
	for range 4 {
		agents = append(agents, startFaultAgent(t, tok, 20*time.Millisecond))
	}
	proc := startProcessAgent(t, tok)
	db := openDBFile(t, c.dbPath(), false)
	eventually(t, "reports stored", func() bool {
		h := heads(t, db)
		for _, a := range agents {
			if h[a.id] < 5 {
				return false
			}
		}
		return h[proc.id] >= 2
	})

	// Made while the database can be written: tokens for enrollments
	// while it cannot.
	var toks []string
	for range 5 {
		toks = append(toks, c.token(1))
	}
	filler := filepath.Join(dataDir, "filler")
	fill(t, filler)
	storage := `posture_reports_rejected_total{reason="storage"}`
	eventuallyWithin(t, 2*time.Minute, "reports refused for storage", func() bool {
		return metricValue(t, scrape(t, c.metrics), storage) >= 3
	})
	// Full for a while: the agents keep measuring and spooling, and the
	// collector keeps refusing.
	time.Sleep(3 * time.Second)
	select {
	case <-c.exited:
		t.Fatalf("the collector exited on a full disk:\n%s", c.logs.String())
	default:
	}
	// An enrollment is refused too, saying why, and leaves nothing behind.
	// (A small write may still find room in SQLite's log where a failed
	// larger one was: then another token tries.)
	var refusedTok, refusedDir string
	for _, tok := range toks {
		dir := t.TempDir()
		out, err := agentEnroll(t, tok, dir)
		if err == nil {
			t.Logf("an enrollment found room on the full disk; trying another")
			continue
		}
		if !strings.Contains(out, "could not store the enrollment") {
			t.Fatalf("enrollment on a full disk: %v: %s; want it refused as not stored", err, out)
		}
		refusedTok, refusedDir = tok, dir
		break
	}
	if refusedTok == "" {
		t.Fatalf("%d enrollments on a full disk all stored", len(toks))
	}
	logs := c.logs.String()
	for _, want := range []string{"cannot write reports to the database", "database or disk is full", "free space on the disk", `reason=storage`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the collector's log does not say %q:\n%s", want, logs)
		}
	}
	stats, _ := c.cli("stats", "-o", "json")
	for _, want := range []string{`"reportsRejected":{"storage"`, `"enrollmentsRejected":{"storage"`} {
		if !strings.Contains(strings.Join(strings.Fields(stats), ""), want) {
			t.Errorf("stats lack %s: %s", want, stats)
		}
	}
	want := proc.ackedHead(t) + uint64(spooled(t, proc.stateDir))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if out, err := agentEnroll(t, refusedTok, refusedDir); err != nil {
		t.Errorf("the same enrollment once space returned: %v: %s", err, out)
	}
	eventuallyWithin(t, 2*time.Minute, "what the agent process spooled stored once space returned", func() bool {
		return heads(t, db)[proc.id] >= want
	})
	drain(t, db, agents)
	eventuallyWithin(t, time.Minute, "the collector's log saying that reports are stored again", func() bool {
		return strings.Contains(c.logs.String(), "writing reports to the database again")
	})
	for _, a := range agents {
		a.stop()
	}
	proc.stop()
	c.stop()
	integrityCheck(t, c.dbPath())
	st := openStore(t, c.dbPath())
	for _, a := range agents {
		checkChain(t, st, a.id, a.ackedHeadDir(t))
		checkMeasurements(t, st, a.id, a.m.count())
	}
	checkChain(t, st, proc.id, proc.ackedHead(t))
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Another program holds SQLite's locks on the collector's database while
// agents stream: a reader in a transaction delays nothing (WAL), a writer
// holding the write lock longer than the collector waits for it gets
// reports refused without acknowledgement, said and counted as storage
// refusals; once it lets go, ingestion resumes by itself and every report
// is stored, each measurement exactly once.
func TestCollectorDatabaseLocked(t *testing.T) {
	t.Parallel()
	c := startSQLiteCollector(t, "")
	tok := c.token(10)
	var agents []*faultAgent
	for range 4 {
		agents = append(agents, startFaultAgent(t, tok, 40*time.Millisecond))
	}
	proc := startProcessAgent(t, tok)
	db := openDBFile(t, c.dbPath(), false)
	progress := func(what string, from map[string]uint64) {
		t.Helper()
		eventuallyWithin(t, 2*time.Minute, what, func() bool {
			h := heads(t, db)
			for _, a := range agents {
				if h[a.id] < from[a.id]+5 {
					return false
				}
			}
			return h[proc.id] >= from[proc.id]+2
		})
	}
	progress("reports stored", nil)

	// A reader holding a read transaction open.
	reader, err := openDBFile(t, c.dbPath(), false).Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.ExecContext(context.Background(), `BEGIN`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRowContext(context.Background(), `SELECT count(*) FROM reports`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	progress("reports stored while another program reads", heads(t, db))
	if _, err := reader.ExecContext(context.Background(), `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	reader.Close()

	// A writer holding the write lock.
	storage := `posture_reports_rejected_total{reason="storage"}`
	release := holdWriteLock(t, c.dbPath())
	eventuallyWithin(t, 2*time.Minute, "reports and report streams refused while another program holds the write lock", func() bool {
		m := scrape(t, c.metrics)
		return metricValue(t, m, storage) >= 1 && metricValue(t, m, `posture_report_streams_refused_total{reason="storage"}`) >= 1
	})
	logs := c.logs.String()
	for _, want := range []string{"cannot write reports to the database", "database is locked", "no other program holds a lock"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the collector's log does not say %q:\n%s", want, tail(logs, 20))
		}
	}
	want := proc.ackedHead(t) + uint64(spooled(t, proc.stateDir))
	release()
	progress("reports stored once the lock is released", heads(t, db))
	eventuallyWithin(t, 2*time.Minute, "what the agent process spooled stored", func() bool {
		return heads(t, db)[proc.id] >= want
	})
	drain(t, db, agents)
	for _, a := range agents {
		a.stop()
	}
	proc.stop()
	c.stop()
	integrityCheck(t, c.dbPath())
	st := openStore(t, c.dbPath())
	for _, a := range agents {
		checkChain(t, st, a.id, a.ackedHeadDir(t))
		checkMeasurements(t, st, a.id, a.m.count())
	}
	checkChain(t, st, proc.id, proc.ackedHead(t))
}
