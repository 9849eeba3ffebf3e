package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/pki"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The collector stores a report but its acknowledgement is lost, and the
// device stays offline until its spool is full and drops the measurement
// that report was made from. Back online, the Welcome names the stored
// report; the agent recognises it from its chain head, goes on from it, and
// the device stays active with every later measurement stored once, in
// order.
func TestLostAcknowledgementSurvivesSpoolDrop(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	p := startProxy(t, e.addr)
	redirectAgent(t, stateDir, p.addr())
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: time.Hour, SpoolMax: 3, Measurer: &fixedMeasurer{encrypted: true},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, a)
	lastSeq := func() uint64 {
		d, err := e.device(id)
		if err != nil {
			return 0
		}
		return d.GetDevice().GetLastSeq()
	}
	eventually(t, "report 1", func() bool { return lastSeq() == 1 })
	// Its acknowledgement must have reached the agent before replies are
	// lost: a stored report's acknowledgement may still be on its way.
	acked := &runningAgent{stateDir: stateDir}
	eventually(t, "report 1 acknowledged to the agent", func() bool { return acked.ackedHeadOrZero() == 1 })

	p.loseReplies()
	if err := a.Measure(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "report 2 stored, its acknowledgement lost", func() bool { return lastSeq() == 2 })
	p.goOffline()
	for range 3 { // the spool holds 3: the third drops measurement 2
		if err := a.Measure(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	p.goOnline()
	eventually(t, "the measurements taken offline stored", func() bool { return lastSeq() == 5 })

	d, err := e.device(id)
	if err != nil {
		t.Fatal(err)
	}
	if d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device state %v (%s), want active", d.GetDevice().GetState(), d.GetDevice().GetStateReason())
	}
	if rej := e.stats().GetReportsRejected(); len(rej) != 0 {
		t.Errorf("reports rejected: %v", rej)
	}
	want := []string{"m-000001", "m-000002", "m-000003", "m-000004", "m-000005"}
	if got := storedMeasurements(t, e, id); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stored measurements by seq: %v, want %v", got, want)
	}
}

// A report refused because of the device's clock stays spooled and is sent
// again: once the clocks agree, the measurement is stored.
func TestClockSkewKeepsMeasurement(t *testing.T) {
	e := startCollector(t)
	stateDir, id := e.enroll()
	e.clock.Advance(time.Hour) // the device's clock is an hour behind
	m := &fixedMeasurer{encrypted: true}
	runAgent(t, stateDir, m, time.Hour)
	eventually(t, "the report refused and sent again", func() bool { return e.stats().GetReportsRejected()["clock_skew"] >= 2 })

	e.clock.Advance(-time.Hour) // NTP sets the clock right
	eventually(t, "the report stored", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() == 1
	})
	d, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.GetReport().GetOs().GetKernelVersion(); got != "m-000001" || m.count() != 1 {
		t.Errorf("stored measurement %q after %d measured, want m-000001, the one first refused", got, m.count())
	}
	if d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_ACTIVE {
		t.Errorf("device state %v (%s), want active", d.GetDevice().GetState(), d.GetDevice().GetStateReason())
	}
}

// A report refused for what it is (here signed by a key the collector did
// not enroll) is dropped, with an error in the log saying why, rather than
// sent again and again ahead of every later measurement.
func TestBadSignatureDropsMeasurement(t *testing.T) {
	e := startCollector(t)
	stateDir, _ := e.enroll()
	other, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePrivateKey(filepath.Join(stateDir, "identity.key"), other); err != nil {
		t.Fatal(err)
	}
	logs := &testtools.LogRecorder{}
	a, err := agent.New(agent.Config{StateDir: stateDir, Interval: time.Hour, Measurer: &fixedMeasurer{encrypted: true},
		Logger: slog.New(logs), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, a)
	rejected := func() uint64 { return e.stats().GetReportsRejected()["bad_signature"] }
	eventually(t, "the report refused", func() bool { return rejected() >= 1 })
	eventually(t, "the drop logged", func() bool { return logs.Has(slog.LevelError, "reason", "bad_signature") })
	time.Sleep(300 * time.Millisecond) // several reconnect backoffs
	if n := rejected(); n != 1 {
		t.Errorf("%d bad_signature rejections of one measurement, want 1: it was sent again", n)
	}
	if err := a.Measure(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the next measurement sent", func() bool { return rejected() == 2 })
}

// runUntilCleanup runs a until the test ends.
func runUntilCleanup(t *testing.T, a *agent.Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// redirectAgent points an enrolled agent at addr instead of the collector
// it enrolled with.
func redirectAgent(t *testing.T, stateDir, addr string) {
	t.Helper()
	path := filepath.Join(stateDir, "agent.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var enr map[string]any
	if err := json.Unmarshal(data, &enr); err != nil {
		t.Fatal(err)
	}
	enr["collector"] = addr
	if data, err = json.Marshal(enr); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// storedMeasurements stops the collector and returns the measurement number
// (the kernel_version fixedMeasurer writes) of each stored report of the
// device, by sequence number from 1.
func storedMeasurements(t *testing.T, e *env, id string) []string {
	t.Helper()
	e.stop()
	st, err := sqlite.Open(filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reports, err := st.Reports(context.Background(), id, 100000)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(reports))
	for _, rep := range reports {
		var r posturev1.PostureReport
		if err := proto.Unmarshal(rep.Body, &r); err != nil {
			t.Fatal(err)
		}
		if r.GetSeq() < 1 || r.GetSeq() > uint64(len(out)) || out[r.GetSeq()-1] != "" {
			t.Fatalf("stored seq %d among %d reports: the chain has a gap or a repeat", r.GetSeq(), len(reports))
		}
		out[r.GetSeq()-1] = r.GetOs().GetKernelVersion()
	}
	return out
}
