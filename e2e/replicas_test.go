package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/posture-project/posture/internal/jsonview"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/postgres"
	"github.com/posture-project/posture/gatewayclient"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// binaries builds posture-collector and posture-agent once per test
// binary.
var binaries struct {
	once            sync.Once
	collector, agnt string
	err             error
}

func builtBinaries(t testing.TB) (collector, agentBin string) {
	t.Helper()
	binaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "posture-bin-")
		if err != nil {
			binaries.err = err
			return
		}
		binaries.collector, binaries.agnt = filepath.Join(dir, "posture-collector"), filepath.Join(dir, "posture-agent")
		for bin, pkg := range map[string]string{binaries.collector: "collector/cmd/posture-collector", binaries.agnt: "agent/cmd/posture-agent"} {
			if out, err := exec.Command("go", "build", "-o", bin, "github.com/posture-project/posture/"+pkg).CombinedOutput(); err != nil {
				binaries.err = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if binaries.err != nil {
		t.Fatal(binaries.err)
	}
	return binaries.collector, binaries.agnt
}

// removeBuiltBinaries removes what builtBinaries built, once the tests
// are done with it.
func removeBuiltBinaries() {
	if binaries.collector != "" {
		os.RemoveAll(filepath.Dir(binaries.collector))
	}
}

// replicaSet is several posture-collector processes sharing one
// PostgreSQL database, as operators run them.
type replicaSet struct {
	t    *testing.T
	bin  string
	dsn  string
	reps []*replica
}

// replica is one collector process of a set.
type replica struct {
	set     *replicaSet
	name    string
	dataDir string
	addr    string
	db      string   // --database; empty for SQLite in dataDir
	extra   []string // further flags of run
	cmd     *exec.Cmd
	logs    *syncBuffer
	exited  chan struct{}
	started time.Time
}

// startReplicas starts n collectors on a new database, with the CA of the
// first given to the others, as several-collectors.md says.
// Each option is applied to every replica before it starts.
func startReplicas(t *testing.T, n int, options ...func(*replica)) *replicaSet {
	t.Helper()
	bin, _ := builtBinaries(t)
	s := &replicaSet{t: t, bin: bin, dsn: testtools.Postgres(t)}
	for i := range n {
		r := &replica{set: s, name: fmt.Sprintf("collector-%c", 'a'+i), dataDir: t.TempDir(), addr: freeAddr(t), db: s.dsn}
		for _, o := range options {
			o(r)
		}
		if i > 0 {
			for _, f := range []string{"ca.crt", "ca.key"} {
				data, err := os.ReadFile(filepath.Join(s.reps[0].dataDir, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(r.dataDir, f), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		s.reps = append(s.reps, r)
		r.start()
	}
	// Each records itself at start; wait until every one sees the others,
	// so that tokens carry every address.
	eventually(t, "every collector recorded in the database", func() bool {
		out, code := s.reps[0].cli("replicas", "-o", "json")
		var resp posturev1.ListReplicasResponse
		return code == 0 && jsonview.Unmarshal([]byte(out), &resp) == nil && len(resp.GetReplicas()) == n
	})
	return s
}

// start runs the replica's process until it serves.
func (r *replica) start() {
	t := r.set.t
	t.Helper()
	r.logs, r.exited = &syncBuffer{}, make(chan struct{})
	args := []string{"run", "--data-dir", r.dataDir, "--name", r.name,
		"--listen", r.addr, "--advertise", r.addr, "--decay-interval", "1s", "--watch-heartbeat", "1s", "--log-format", "text"}
	if r.db != "" {
		args = append(args, "--database", r.db)
	}
	r.cmd = exec.Command(r.set.bin, append(args, r.extra...)...)
	stderr, err := r.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving := make(chan struct{})
	go func() {
		defer close(r.exited)
		lines := bufio.NewReader(stderr)
		for announced := false; ; {
			line, err := lines.ReadString('\n')
			r.logs.Write([]byte(line))
			if !announced && strings.Contains(line, "collector serving") {
				announced = true
				close(serving)
			}
			if err != nil {
				r.cmd.Wait()
				return
			}
		}
	}()
	t.Cleanup(r.stop)
	select {
	case <-serving:
		r.started = time.Now()
	case <-r.exited:
		t.Fatalf("%s exited before serving:\n%s", r.name, r.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("%s not serving after 60 s:\n%s", r.name, r.logs.String())
	}
}

// stop stops the process gracefully, if it runs.
func (r *replica) stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
}

// kill ends the process at once, as a crash or a lost machine does.
func (r *replica) kill() {
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
}

// cli runs an admin command against the replica.
func (r *replica) cli(args ...string) (string, int) {
	r.set.t.Helper()
	cmd := exec.Command(r.set.bin, append(args, "--data-dir", r.dataDir)...)
	out, err := cmd.Output()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return string(out) + string(exit.Stderr), exit.ExitCode()
	case err != nil:
		r.set.t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

// token creates an enrollment token on the replica.
func (r *replica) token(uses int) string {
	r.set.t.Helper()
	out, code := r.cli("token", "create", "--uses", fmt.Sprint(uses))
	if code != 0 {
		r.set.t.Fatalf("token create on %s: %s", r.name, out)
	}
	return strings.TrimSpace(out)
}

// device reads a device through the replica's admin socket.
func (r *replica) device(id string) (*posturev1.DevicePosture, error) {
	out, code := r.cli("devices", "show", id, "-o", "json")
	if code != 0 {
		return nil, fmt.Errorf("devices show on %s: %s", r.name, out)
	}
	var p posturev1.DevicePosture
	return &p, jsonview.Unmarshal([]byte(out), &p)
}

// gatewayCreds issues a gateway certificate on the replica and returns it
// with the CA pool to verify the collectors by.
func (r *replica) gatewayCreds(name string) (tls.Certificate, *x509.CertPool) {
	t := r.set.t
	t.Helper()
	dir := t.TempDir()
	if out, code := r.cli("gateway", "add", name, "--out", dir); code != 0 {
		t.Fatalf("gateway add: %s", out)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "gateway.crt"), filepath.Join(dir, "gateway.key"))
	if err != nil {
		t.Fatal(err)
	}
	cas, err := pki.ReadCertificates(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	return cert, roots
}

// runningAgent is an in-process agent and its state directory.
type runningAgent struct {
	id       string
	stateDir string
	stop     func()
}

// startAgent enrolls an in-process agent with token and runs it, reporting
// every 50 ms.
func startAgent(t *testing.T, token string) *runningAgent {
	t.Helper()
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, token, agent.EnrollOptions{Identity: agent.IdentitySoftware})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: 50 * time.Millisecond, Measurer: &fixedMeasurer{encrypted: true},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return &runningAgent{id: res.DeviceID, stateDir: stateDir, stop: stop}
}

// startAgentProcess enrolls and runs a posture-agent process with token.
func startAgentProcess(t *testing.T, token string) *runningAgent {
	t.Helper()
	_, bin := builtBinaries(t)
	stateDir := t.TempDir()
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
	cmd := exec.Command(bin, "run", "--state-dir", stateDir, "--interval", "100ms")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("posture-agent log:\n%s", logs.String())
		}
	})
	return &runningAgent{id: cfg.DeviceID, stateDir: stateDir, stop: stop}
}

// ackedHeadOrZero is the newest report the agent saw acknowledged, or 0
// while it has seen none (or its chain file is being replaced).
func (a *runningAgent) ackedHeadOrZero() uint64 {
	data, err := os.ReadFile(filepath.Join(a.stateDir, "chain.json"))
	if err != nil {
		return 0
	}
	var h struct {
		Seq uint64 `json:"seq"`
	}
	if json.Unmarshal(data, &h) != nil {
		return 0
	}
	return h.Seq
}

// ackedHead is the newest report the agent saw acknowledged.
func (a *runningAgent) ackedHead(t *testing.T) uint64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(a.stateDir, "chain.json"))
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(data, &h); err != nil {
		t.Fatal(err)
	}
	return h.Seq
}

// checkChain fails unless the database holds the device's reports 1 to at
// least acked exactly once, each continuing the one before, and the device
// is not suspect (active, or revoked by the test).
func checkChain(t *testing.T, st store.Store, id string, acked uint64) {
	t.Helper()
	reports, err := st.Reports(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(reports)) < acked {
		t.Errorf("device %s: %d reports stored, but the agent saw %d acknowledged", id, len(reports), acked)
	}
	var prev []byte
	for i := len(reports) - 1; i >= 0; i-- {
		r := reports[i]
		if want := uint64(len(reports) - i); r.Seq != want {
			t.Fatalf("device %s: report %d has seq %d: a gap or a repeat", id, want, r.Seq)
		}
		var body posturev1.PostureReport
		if err := proto.Unmarshal(r.Body, &body); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body.GetPrevDigest(), prev) {
			t.Fatalf("device %s: report %d does not continue report %d", id, r.Seq, r.Seq-1)
		}
		prev = r.Digest
	}
	d, err := st.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != store.StateActive && d.State != store.StateRevoked {
		t.Errorf("device %s is in state %d (%s), want active", id, d.State, d.StateReason)
	}
}

func openDB(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	st, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Three collectors on one database answer alike: a device enrolled on any
// is known to all, a revocation made on one is denied by the others at
// once, and a gateway watching another hears of it.
func TestReplicasShareChanges(t *testing.T) {
	s := startReplicas(t, 3)
	a, b, c := s.reps[0], s.reps[1], s.reps[2]
	tok := a.token(10)
	var agents []*runningAgent
	for i := range 3 {
		agents = append(agents, startAgent(t, s.reps[i].token(1)))
	}
	agents = append(agents, startAgentProcess(t, tok))
	for _, ag := range agents {
		eventually(t, "reports of "+ag.id+" on every collector", func() bool {
			for _, r := range s.reps {
				if p, err := r.device(ag.id); err != nil || p.GetDevice().GetLastSeq() < 2 {
					return false
				}
			}
			return true
		})
	}

	cert, roots := c.gatewayCreds("edge")
	conn, err := gatewayclient.Dial([]string{c.addr}, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, "posture.local", &cert))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gw, err := gatewayclient.New(gatewayclient.Config{Conn: conn})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gw.Run(ctx)
	victim := agents[1].id
	eventually(t, "the gateway watching collector c allows the device", func() bool { return gw.Check(victim, "basic").Allowed })
	// The real agent measures this machine, which need not meet the level.
	allowed := map[string]bool{}
	for _, ag := range agents {
		allowed[ag.id] = gw.Check(ag.id, "basic").Allowed
	}

	if out, code := a.cli("devices", "revoke", victim, "--reason", "stolen"); code != 0 {
		t.Fatalf("revoke on a: %s", out)
	}
	for _, r := range []*replica{b, c} {
		eventually(t, "the revocation denied on "+r.name, func() bool {
			out, code := r.cli("check", victim, "--level", "basic")
			return code == 1 && strings.Contains(out, "revoked")
		})
	}
	eventually(t, "the gateway watching c hears of the revocation", func() bool {
		d := gw.Check(victim, "basic")
		return !d.Allowed && d.Device.GetState() == posturev1.DeviceState_DEVICE_STATE_REVOKED
	})
	// The other devices are untouched.
	for _, ag := range agents {
		if ag.id != victim && gw.Check(ag.id, "basic").Allowed != allowed[ag.id] {
			t.Errorf("device %s changed after another's revocation", ag.id)
		}
	}
}

// A collector killed while agents stream to it and a gateway watches it:
// the agents continue on the others, every report an agent saw
// acknowledged is in the database exactly once with the chains unbroken
// and no device marked suspect, and the gateway resumes on another
// collector from its last revision without missing a change made
// meanwhile.
func TestReplicaFailover(t *testing.T) {
	s := startReplicas(t, 3)
	a, b := s.reps[0], s.reps[1]
	tok := a.token(10) // a first: the agents report to a
	var agents []*runningAgent
	for range 4 {
		agents = append(agents, startAgent(t, tok))
	}
	agents = append(agents, startAgentProcess(t, tok))
	for _, ag := range agents {
		eventually(t, "reports of "+ag.id, func() bool { p, err := b.device(ag.id); return err == nil && p.GetDevice().GetLastSeq() >= 3 })
	}

	cert, roots := a.gatewayCreds("edge")
	conn, err := gatewayclient.Dial([]string{a.addr, b.addr}, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, "posture.local", &cert))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	logs := &testtools.LogRecorder{}
	gw, err := gatewayclient.New(gatewayclient.Config{Conn: conn, Grace: time.Minute, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gw.Run(ctx)
	eventually(t, "the gateway synced on a", func() bool { return gw.Synced() })

	// A resume on another collector repeats what that collector published
	// in the slack before the revision: b must have run that long.
	if wait := time.Until(b.started.Add(3*time.Second + 5*time.Second)); wait > 0 {
		time.Sleep(wait)
	}
	before := map[string]uint64{}
	for _, ag := range agents {
		p, err := b.device(ag.id)
		if err != nil {
			t.Fatal(err)
		}
		before[ag.id] = p.GetDevice().GetLastSeq()
	}
	a.kill()
	victim := agents[0].id
	if out, code := b.cli("devices", "revoke", victim, "--reason", "lost while a was down"); code != 0 {
		t.Fatalf("revoke on b: %s", out)
	}
	eventuallyWithin(t, 2*time.Minute, "the gateway resumed on b and heard of the revocation", func() bool {
		d := gw.Check(victim, "basic")
		return gw.Synced() && !d.Allowed && d.Device.GetState() == posturev1.DeviceState_DEVICE_STATE_REVOKED
	})
	if !logs.Has(slog.LevelInfo, "resumed", "true") {
		t.Errorf("the gateway did not resume its watch on b (it took a snapshot): %q\nb's log:\n%s", logs.Lines(), b.logs.String())
	}
	for _, ag := range agents[1:] {
		eventuallyWithin(t, 2*time.Minute, "agent "+ag.id+" reporting to another collector", func() bool {
			p, err := b.device(ag.id)
			return err == nil && p.GetDevice().GetLastSeq() >= before[ag.id]+5
		})
	}
	for _, ag := range agents {
		ag.stop()
	}
	st := openDB(t, s.dsn)
	for _, ag := range agents {
		checkChain(t, st, ag.id, ag.ackedHead(t))
	}
}

// Two report streams of one device on two collectors at once: only the
// newer one stores reports; a report sent on the older one is refused as
// superseded and taken for nothing worse. One chain, no suspect.
func TestTwoStreamsOnTwoCollectors(t *testing.T) {
	s := startReplicas(t, 2)
	a, b := s.reps[0], s.reps[1]
	stateDir := t.TempDir()
	res, err := agent.EnrollWith(context.Background(), stateDir, a.token(1), agent.EnrollOptions{Identity: agent.IdentitySoftware})
	if err != nil {
		t.Fatal(err)
	}
	// b learns of the enrollment from the database's change feed; until
	// then it refuses the device as unknown, which is not what this test
	// is about.
	eventually(t, "b knowing the device", func() bool { _, err := b.device(res.DeviceID); return err == nil })
	cert, key := deviceCreds(t, stateDir)
	cas, err := pki.ReadCertificates(filepath.Join(stateDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cas[0])
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(roots, "posture.local", &cert))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	for round := range 5 {
		older, err := startReports(dial(a.addr), key, res.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		older.t = t
		newer, err := startReports(dial(b.addr), key, res.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		newer.t = t
		// Both were told the same head and sign the same next report,
		// each for its own nonce; the older sends first.
		sr := older.next()
		if err := older.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: sr}}); err != nil {
			t.Fatal(err)
		}
		if _, err := older.st.Recv(); status.Code(err) != codes.Aborted {
			t.Fatalf("round %d: the older stream's report: %v, want the stream ended as superseded (Aborted)", round, err)
		}
		if m := newer.send(newer.next()); m.GetAck() == nil {
			t.Fatalf("round %d: the newer stream's report: %v, want it acknowledged", round, m)
		}
		newer.st.CloseSend()
	}
	st := openDB(t, s.dsn)
	checkChain(t, st, res.DeviceID, 5)
	for _, r := range s.reps {
		if p, err := r.device(res.DeviceID); err != nil || p.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
			t.Errorf("on %s: %v, %v; want the device active", r.name, p.GetDevice(), err)
		}
	}
}

// Events that commit out of the order of their IDs (a transaction that
// took the lower ID commits later) are all applied by every collector.
// The test writes two changes as a collector does, each with its event in
// the same transaction, and holds the first open.
func TestEventsOutOfOrderOnReplicas(t *testing.T) {
	s := startReplicas(t, 2)
	tok := s.reps[0].token(2)
	x, y := startAgent(t, tok), startAgent(t, tok)
	for _, ag := range []*runningAgent{x, y} {
		ag.stop()
	}
	st := openDB(t, s.dsn)
	ctx := context.Background()
	suspect := func(tx pgx.Tx, id string) {
		t.Helper()
		d, err := st.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		d.State, d.StateReason = store.StateSuspect, "held "+id
		ev := store.Event{Kind: store.EventState, DeviceID: id, Device: &d}
		data, err := store.EncodeEventData(ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `UPDATE devices SET state = $1, state_reason = $2 WHERE id = $3`, d.State, []byte(d.StateReason), id); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO events (at, kind, device_id, data) VALUES ($1, 'state', $2, $3)`, time.Now().UnixNano(), id, data); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify('posture_events', '')`); err != nil {
			t.Fatal(err)
		}
	}
	begin := func() pgx.Tx {
		conn, err := pgx.Connect(ctx, s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(ctx) })
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tx
	}
	held, quick := begin(), begin()
	suspect(held, x.id)  // takes the lower event ID
	suspect(quick, y.id) // the higher
	if err := quick.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range s.reps {
		eventually(t, "the later event applied on "+r.name, func() bool {
			p, err := r.device(y.id)
			return err == nil && p.GetDevice().GetState() == posturev1.DeviceState_DEVICE_STATE_SUSPECT
		})
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range s.reps {
		eventually(t, "the earlier event, committed last, applied on "+r.name, func() bool {
			out, code := r.cli("check", x.id, "--level", "basic")
			return code == 1 && strings.Contains(out, "suspect")
		})
	}
}

// withoutAges drops what changes as time passes from a JSON answer: how
// old evidence and reports are.
func withoutAges(t *testing.T, out string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var strip func(any) any
	strip = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k := range x {
				if strings.HasSuffix(k, "Age") || strings.HasSuffix(k, "_age") {
					delete(x, k)
				} else {
					x[k] = strip(x[k])
				}
			}
		case []any:
			for i := range x {
				x[i] = strip(x[i])
			}
		}
		return v
	}
	b, _ := json.Marshal(strip(v))
	return string(b)
}

// A collector on SQLite moved to PostgreSQL with migrate answers the same:
// its devices, their postures and its decisions; its agents report on; a
// second migrate into the now full database is refused.
func TestMigrate(t *testing.T) {
	bin, _ := builtBinaries(t)
	dsn := testtools.Postgres(t)
	s := &replicaSet{t: t, bin: bin}
	r := &replica{set: s, name: "collector-a", dataDir: t.TempDir(), addr: freeAddr(t)}
	s.reps = append(s.reps, r)
	r.start()
	var agents []*runningAgent
	for range 3 {
		agents = append(agents, startAgent(t, r.token(1)))
	}
	for _, ag := range agents {
		eventually(t, "reports of "+ag.id, func() bool { p, err := r.device(ag.id); return err == nil && p.GetDevice().GetLastSeq() >= 3 })
	}
	r.token(5) // a token left unused
	r.gatewayCreds("edge-1")
	r.gatewayCreds("edge-2")
	for _, cmd := range [][]string{
		{"gateway", "revoke", "edge-2", "--reason", "retired"},
		{"devices", "revoke", agents[2].id, "--reason", "stolen"},
		{"check", agents[0].id, "--level", "basic"},
		{"check", agents[2].id, "--level", "basic"},
	} {
		if out, code := r.cli(cmd...); code > 1 {
			t.Fatalf("%s: %s", cmd, out)
		}
	}
	for _, ag := range agents {
		ag.stop()
	}
	query := func() map[string]string {
		out := map[string]string{}
		for name, cmd := range map[string][]string{
			"devices list": {"devices", "list", "-o", "json"},
			"devices show": {"devices", "show", agents[0].id, "-o", "json"},
			"revoked show": {"devices", "show", agents[2].id, "-o", "json"},
			"decisions":    {"decisions", "-o", "json"},
			"gateways":     {"gateway", "list", "-o", "json"},
		} {
			o, code := r.cli(cmd...)
			if code != 0 {
				t.Fatalf("%s: %s", name, o)
			}
			out[name] = withoutAges(t, o)
		}
		return out
	}
	before := query()
	r.stop()

	migrate := func() (string, int) {
		cmd := exec.Command(bin, "migrate", "--from", filepath.Join(r.dataDir, "posture.db"), "--to", dsn)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := migrate(); code != 0 || !strings.Contains(out, "copied and checked") {
		t.Fatalf("migrate: exit %d: %s", code, out)
	}
	r.db = dsn
	r.start()
	after := query()
	for name, want := range before {
		if after[name] != want {
			t.Errorf("%s after the move differs:\nbefore %s\nafter  %s", name, want, after[name])
		}
	}
	// The agents report on, to the moved collector.
	ag := agents[0]
	p, err := r.device(ag.id)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{StateDir: ag.stateDir, Interval: 50 * time.Millisecond, Measurer: &fixedMeasurer{encrypted: true},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	eventually(t, "the agent reporting to the moved collector", func() bool {
		q, err := r.device(ag.id)
		return err == nil && q.GetDevice().GetLastSeq() >= p.GetDevice().GetLastSeq()+3
	})
	cancel()
	<-done
	checkChain(t, openDB(t, dsn), ag.id, ag.ackedHead(t))

	r.stop()
	if out, code := migrate(); code == 0 || !strings.Contains(out, "not empty") {
		t.Errorf("a second migrate into the full database: exit %d: %s; want it refused", code, out)
	}
}
