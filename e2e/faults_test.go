package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/agent/spool"
	"github.com/posture-project/posture/collector/store/sqlite"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// faultCollector is a posture-collector process on SQLite in its data
// directory, serving metrics, for tests that crash it, fill its disk or
// lock its database.
type faultCollector struct {
	*replica
	metrics string // metrics listen address
}

// startSQLiteCollector starts a collector process on SQLite in dataDir (a
// new temporary directory when empty).
func startSQLiteCollector(t *testing.T, dataDir string) *faultCollector {
	t.Helper()
	bin, _ := builtBinaries(t)
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	s := &replicaSet{t: t, bin: bin}
	metrics := freeAddr(t)
	r := &replica{set: s, name: "collector", dataDir: dataDir, addr: freeAddr(t), extra: []string{"--metrics-listen", metrics}}
	s.reps = append(s.reps, r)
	r.start()
	return &faultCollector{replica: r, metrics: metrics}
}

func (c *faultCollector) dbPath() string { return filepath.Join(c.dataDir, "posture.db") }

// openDBFile opens the SQLite database at path beside the collector, as
// another program on the host would: read-only unless write is set.
func openDBFile(t *testing.T, path string, write bool) *sql.DB {
	t.Helper()
	q := url.Values{"_busy_timeout": {"10000"}}
	if !write {
		q.Set("mode", "ro")
	}
	db, err := sql.Open("sqlite3", (&url.URL{Scheme: "file", Path: path, RawQuery: q.Encode()}).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// heads reads every device's chain head from the database.
func heads(t *testing.T, db *sql.DB) map[string]uint64 {
	t.Helper()
	rows, err := db.Query(`SELECT id, last_seq FROM devices`)
	if err != nil {
		t.Fatalf("read chain heads: %v", err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var (
			id  string
			seq uint64
		)
		if err := rows.Scan(&id, &seq); err != nil {
			t.Fatal(err)
		}
		out[id] = seq
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// integrityCheck fails unless SQLite finds the database file intact.
func integrityCheck(t *testing.T, path string) {
	t.Helper()
	var result string
	if err := openDBFile(t, path, false).QueryRow(`PRAGMA integrity_check`).Scan(&result); err != nil {
		t.Fatalf("integrity check: %v", err)
	}
	if result != "ok" {
		t.Errorf("integrity check of %s: %s", path, result)
	}
}

// countingMeasurer numbers each measurement in the kernel_version field
// (m-000001 …), like fixedMeasurer, and stops measuring when held, so that
// the agent can send everything it spooled.
type countingMeasurer struct {
	fixedMeasurer
	held atomic.Bool
}

func (m *countingMeasurer) Collect(ctx context.Context) *posturev1.PostureReport {
	if m.held.Load() {
		<-ctx.Done() // the agent is stopping: what this returns is never sent
		return healthyReport(true, "held")
	}
	return m.fixedMeasurer.Collect(ctx)
}

// faultAgent is an in-process agent whose every measurement is numbered.
type faultAgent struct {
	id       string
	stateDir string
	m        *countingMeasurer
	stop     func()
}

// startFaultAgent enrolls an in-process agent with token and runs it,
// measuring every interval and reconnecting quickly.
func startFaultAgent(t *testing.T, token string, interval time.Duration) *faultAgent {
	t.Helper()
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, token, agent.EnrollOptions{Identity: agent.IdentitySoftware})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	fa := &faultAgent{id: res.DeviceID, stateDir: stateDir, m: &countingMeasurer{fixedMeasurer: fixedMeasurer{encrypted: true}}}
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: interval, Measurer: fa.m,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	fa.stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(fa.stop)
	return fa
}

// spooled counts the reports waiting in an agent's spool.
func spooled(t *testing.T, stateDir string) int {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(stateDir, "spool"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	n := 0
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".rep") {
			n++
		}
	}
	return n
}

// inFlight says whether an agent has signed and sent a report whose
// answer it has not had yet (chain.json records it before sending).
func inFlight(stateDir string) bool {
	data, err := os.ReadFile(filepath.Join(stateDir, "chain.json"))
	if err != nil {
		return false
	}
	var h struct {
		Sent json.RawMessage `json:"sent"`
	}
	return json.Unmarshal(data, &h) == nil && len(h.Sent) > 0 && string(h.Sent) != "null"
}

// drain stops the agents measuring and waits until each has sent all it
// spooled and the database holds as many of its reports as it measured.
func drain(t *testing.T, db *sql.DB, agents []*faultAgent) {
	t.Helper()
	for _, a := range agents {
		a.m.held.Store(true)
	}
	for _, a := range agents {
		eventuallyWithin(t, 3*time.Minute, "agent "+a.id+" sent every measurement", func() bool {
			return spooled(t, a.stateDir) == 0 && heads(t, db)[a.id] >= uint64(a.m.count())
		})
	}
}

// checkMeasurements fails unless the device's stored reports carry its
// measurements 1 to n, each exactly once.
func checkMeasurements(t *testing.T, st *sqlite.Store, id string, n int) {
	t.Helper()
	reports, err := st.Reports(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range reports {
		var body posturev1.PostureReport
		if err := proto.Unmarshal(r.Body, &body); err != nil {
			t.Fatal(err)
		}
		seen[body.GetOs().GetKernelVersion()]++
	}
	for i := 1; i <= n; i++ {
		m := fmt.Sprintf("m-%06d", i)
		switch seen[m] {
		case 1:
		case 0:
			t.Errorf("device %s: measurement %s was never stored", id, m)
		default:
			t.Errorf("device %s: measurement %s stored %d times", id, m, seen[m])
		}
		delete(seen, m)
	}
	if len(seen) > 0 {
		t.Errorf("device %s: stored measurements beyond the %d taken: %v", id, n, seen)
	}
}

// openStore opens the collector's database, once it stopped, to check
// what it holds.
func openStore(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// holdWriteLock takes SQLite's write lock on the database at path, as
// another program writing to it would (BEGIN IMMEDIATE), and returns the
// function that releases it.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	db := openDBFile(t, path, true)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatalf("take the write lock: %v", err)
	}
	return sync.OnceFunc(func() {
		if _, err := conn.ExecContext(context.Background(), `ROLLBACK`); err != nil {
			t.Errorf("release the write lock: %v", err)
		}
		conn.Close()
	})
}

// The collector SIGKILLed again and again while agents stream to it: the
// moment a report is between the agent and its acknowledgement, and while
// a batch of reports waits for the database's write lock. After each
// restart on the same data directory every report an agent saw
// acknowledged is stored, what it had not is sent again and stored, each
// measurement exactly once, the chains unbroken and no device suspect.
func TestCollectorKilledWhileAgentsStream(t *testing.T) {
	t.Parallel()
	c := startSQLiteCollector(t, "")
	tok := c.token(20)
	var agents []*faultAgent
	for range 6 {
		agents = append(agents, startFaultAgent(t, tok, 40*time.Millisecond))
	}
	procs := []*runningAgent{startProcessAgent(t, tok), startProcessAgent(t, tok)}
	db := openDBFile(t, c.dbPath(), false)

	const rounds = 6
	cut := 0 // reports in flight when the collector died, over all rounds
	for round := range rounds {
		before := heads(t, db)
		eventuallyWithin(t, 2*time.Minute, fmt.Sprintf("round %d: reports of every agent stored", round), func() bool {
			now := heads(t, db)
			for _, a := range agents {
				if now[a.id] < before[a.id]+3 {
					return false
				}
			}
			for _, p := range procs {
				if now[p.id] < before[p.id]+2 {
					return false
				}
			}
			return true
		})
		var release func()
		if round%2 == 1 {
			// Another program holds the write lock: the writer waits in
			// BEGIN with a batch of reports received and verified.
			release = holdWriteLock(t, c.dbPath())
		} else {
			time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		}
		eventuallyWithin(t, time.Minute, fmt.Sprintf("round %d: a report in flight", round), func() bool {
			n := 0
			for _, a := range agents {
				if inFlight(a.stateDir) {
					n++
				}
			}
			if n == 0 {
				return false
			}
			c.kill()
			cut += n
			return true
		})
		if release != nil {
			release()
		}
		// What the process agents had acknowledged and spooled when the
		// collector died must all be stored once it is back.
		want := map[string]uint64{}
		for _, p := range procs {
			want[p.id] = p.ackedHead(t) + uint64(spooled(t, p.stateDir))
		}
		c.start()
		for _, p := range procs {
			eventuallyWithin(t, 2*time.Minute, "what agent process "+p.id+" had spooled stored after the restart", func() bool {
				return heads(t, db)[p.id] >= want[p.id]
			})
		}
	}
	t.Logf("%d rounds: %d reports in flight when the collector was killed", rounds, cut)

	drain(t, db, agents)
	for _, a := range agents {
		a.stop()
	}
	for _, p := range procs {
		p.stop()
	}
	c.stop()
	integrityCheck(t, c.dbPath())
	st := openStore(t, c.dbPath())
	for _, a := range agents {
		checkChain(t, st, a.id, a.ackedHeadDir(t))
		checkMeasurements(t, st, a.id, a.m.count())
	}
	for _, p := range procs {
		checkChain(t, st, p.id, p.ackedHead(t))
	}
}

// ackedHeadDir is the newest report the agent saw acknowledged.
func (a *faultAgent) ackedHeadDir(t *testing.T) uint64 {
	t.Helper()
	return (&runningAgent{stateDir: a.stateDir}).ackedHead(t)
}

// agentProcess is a posture-agent run process.
type agentProcess struct {
	cmd    *exec.Cmd
	logs   *os.File
	exited chan struct{}
}

// enrollProcess enrolls a state directory with posture-agent enroll and
// returns it with the device ID.
func enrollProcess(t *testing.T, token string) (stateDir, id string) {
	t.Helper()
	_, bin := builtBinaries(t)
	stateDir = t.TempDir()
	out, err := exec.Command(bin, "enroll", "--token", token, "--state-dir", stateDir, "--identity", "software").CombinedOutput()
	if err != nil {
		t.Fatalf("posture-agent enroll: %v\n%s", err, out)
	}
	var cfg struct {
		DeviceID string `json:"device_id"`
	}
	data, err := os.ReadFile(filepath.Join(stateDir, "agent.json"))
	if err != nil || json.Unmarshal(data, &cfg) != nil {
		t.Fatalf("agent.json: %v", err)
	}
	return stateDir, cfg.DeviceID
}

// runProcess runs posture-agent run on stateDir until it is killed or
// stopped, in a process group of its own with the commands it runs to
// measure.
func runProcess(t *testing.T, stateDir string, interval time.Duration) *agentProcess {
	t.Helper()
	_, bin := builtBinaries(t)
	logs, err := os.CreateTemp(t.TempDir(), "agent-*.log")
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{cmd: exec.Command(bin, "run", "--state-dir", stateDir, "--interval", interval.String()), logs: logs, exited: make(chan struct{})}
	// A file, not a pipe: a measuring command the kill leaves running
	// must not hold up Wait.
	p.cmd.Stdout, p.cmd.Stderr = logs, logs
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			out, _ := os.ReadFile(logs.Name())
			t.Logf("posture-agent log:\n%s", out)
		}
		logs.Close()
	})
	return p
}

// startProcessAgent enrolls and runs a posture-agent process with token,
// measuring every 100 ms.
func startProcessAgent(t *testing.T, token string) *runningAgent {
	t.Helper()
	stateDir, id := enrollProcess(t, token)
	p := runProcess(t, stateDir, 100*time.Millisecond)
	return &runningAgent{id: id, stateDir: stateDir, stop: p.stop}
}

// kill ends the agent and what it runs at once, as a crash of the service
// does.
func (p *agentProcess) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// stop stops the agent gracefully, if it runs.
func (p *agentProcess) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.kill()
	}
}

// spoolWriting says whether a spool write is under way: Put writes a
// temporary file, flushes it and renames it into place.
func spoolWriting(stateDir string) bool {
	des, _ := os.ReadDir(filepath.Join(stateDir, "spool"))
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".tmp") {
			return true
		}
	}
	return false
}

// A posture-agent process SIGKILLed again and again while it writes its
// spool, with the collector up (reports leaving the spool as others
// arrive) and down (the spool growing): each time it starts again with a
// consistent spool, nothing set aside as corrupt, and its reports continue
// the chain the collector holds.
func TestAgentKilledWhileSpooling(t *testing.T) {
	t.Parallel()
	c := startSQLiteCollector(t, "")
	stateDir, id := enrollProcess(t, c.token(1))
	db := openDBFile(t, c.dbPath(), false)

	const rounds = 6
	torn := 0 // rounds whose kill left a spool write unfinished
	for round := range rounds {
		down := round%2 == 1
		if down {
			c.kill()
		}
		p := runProcess(t, stateDir, 5*time.Millisecond)
		before, head := spooled(t, stateDir), heads(t, db)[id]
		eventuallyWithin(t, time.Minute, fmt.Sprintf("round %d: the agent measuring and reporting", round), func() bool {
			if down {
				return spooled(t, stateDir) >= before+5
			}
			return heads(t, db)[id] >= head+3
		})
		time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
		deadline := time.Now().Add(5 * time.Second)
		for !spoolWriting(stateDir) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Microsecond)
		}
		p.kill()
		if spoolWriting(stateDir) {
			torn++
		}
		// The spool opens as the agent opens it, with every entry whole.
		sp, err := spool.Open(filepath.Join(stateDir, "spool"), 0)
		if err != nil {
			t.Fatalf("round %d: open the spool after the kill: %v", round, err)
		}
		if sp.Corrupt() != 0 || spoolWriting(stateDir) {
			t.Fatalf("round %d: the spool after the kill: %d entries set aside as corrupt, temporary files left: %v", round, sp.Corrupt(), spoolWriting(stateDir))
		}
		// Open checked every entry whole; the oldest, the next to send,
		// holds a measurement.
		if e, ok, err := sp.Oldest(); err != nil {
			t.Fatalf("round %d: read the spool: %v", round, err)
		} else if ok {
			// An entry is the report's protobuf alone.
			var rep posturev1.PostureReport
			if err := proto.Unmarshal(e.Data, &rep); err != nil || rep.GetOs().GetMeta().GetObservedAt() == nil {
				t.Fatalf("round %d: spool entry %d does not hold a report: %q", round, e.ID, e.Data)
			}
		}
		if down {
			c.start()
		}
	}
	t.Logf("%d rounds: %d kills left a spool write unfinished", rounds, torn)

	// After the last kill the agent sends what it spooled, continuing the
	// chain.
	want := (&runningAgent{stateDir: stateDir}).ackedHead(t) + uint64(spooled(t, stateDir))
	p := runProcess(t, stateDir, 50*time.Millisecond)
	eventuallyWithin(t, 2*time.Minute, "the spooled reports stored", func() bool { return heads(t, db)[id] >= want })
	p.stop()
	c.stop()
	integrityCheck(t, c.dbPath())
	checkChain(t, openStore(t, c.dbPath()), id, (&runningAgent{stateDir: stateDir}).ackedHead(t))
}
