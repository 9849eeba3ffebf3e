package gatewayclient

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// scriptedCollector serves WatchPosture: the n-th call goes live (a
// snapshot of one device, then the stream ends as in a collector restart)
// when live[n] holds, and fails before any event otherwise.
type scriptedCollector struct {
	posturev1.UnimplementedGatewayServiceServer
	live []bool

	mu    sync.Mutex
	calls int
}

func (s *scriptedCollector) WatchPosture(_ *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
	s.mu.Lock()
	n := s.calls
	s.calls++
	s.mu.Unlock()
	if n >= len(s.live) || !s.live[n] {
		return status.Error(codes.Unavailable, "collector is starting")
	}
	for _, ev := range []*posturev1.PostureEvent{
		{Revision: 1, Event: &posturev1.PostureEvent_Device{Device: &posturev1.DeviceDecision{DeviceId: "d", AllowedLevels: []string{"trusted"}}}},
		{Revision: 1, Event: &posturev1.PostureEvent_SnapshotEnd{SnapshotEnd: &posturev1.SnapshotEnd{}}},
	} {
		if err := st.Send(ev); err != nil {
			return err
		}
	}
	return status.Error(codes.Unavailable, "collector is shutting down")
}

// serve runs srv over an in-memory listener and returns a connection to it.
func serve(t *testing.T, srv posturev1.GatewayServiceServer) *grpc.ClientConn {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	posturev1.RegisterGatewayServiceServer(s, srv)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("passthrough:///collector",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

var errEnough = errors.New("enough attempts")

// The delay before each reconnection doubles while attempts fail and
// starts over after a watch that went live.
func TestRunBackoff(t *testing.T) {
	const F, L = false, true
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	tests := []struct {
		name string
		live []bool
		want []time.Duration // delays before jitter of ±20 %
	}{
		{"failures back off up to 5 s", []bool{F, F, F, F, F, F, F, F}, []time.Duration{ms(100), ms(200), ms(400), ms(800), ms(1600), ms(3200), ms(5000), ms(5000)}},
		{"a live watch starts over", []bool{F, F, F, F, F, F, F, L, F, F}, []time.Duration{ms(100), ms(200), ms(400), ms(800), ms(1600), ms(3200), ms(5000), ms(100), ms(200), ms(400)}},
		{"live watches reconnect quickly", []bool{L, L, L}, []time.Duration{ms(100), ms(100), ms(100)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Config{Conn: serve(t, &scriptedCollector{live: tt.live})})
			if err != nil {
				t.Fatal(err)
			}
			var waits []time.Duration
			c.sleep = func(_ context.Context, d time.Duration) error {
				waits = append(waits, d)
				if len(waits) == len(tt.want) {
					return errEnough
				}
				return nil
			}
			if err := c.Run(context.Background()); !errors.Is(err, errEnough) {
				t.Fatalf("Run: %v", err)
			}
			for i, d := range waits {
				if lo, hi := tt.want[i]*8/10, tt.want[i]*12/10; d < lo || d > hi {
					t.Errorf("delays %v, want %v ± 20 %%", waits, tt.want)
					break
				}
			}
		})
	}
}

// funcCollector serves WatchPosture with watch, told which call (from 0)
// it serves.
type funcCollector struct {
	posturev1.UnimplementedGatewayServiceServer
	watch func(call int, req *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error

	mu    sync.Mutex
	calls int
}

func (f *funcCollector) WatchPosture(req *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
	f.mu.Lock()
	n := f.calls
	f.calls++
	f.mu.Unlock()
	return f.watch(n, req, st)
}

func (f *funcCollector) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// send sends events, ending the call's script at the first error.
func send(st grpc.ServerStreamingServer[posturev1.PostureEvent], evs ...*posturev1.PostureEvent) error {
	for _, ev := range evs {
		if err := st.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func deviceEvent(rev uint64) *posturev1.PostureEvent {
	return &posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_Device{Device: &posturev1.DeviceDecision{DeviceId: "d", AllowedLevels: []string{"trusted"}}}}
}

func snapshotEnd(rev uint64, resumed bool, heartbeat time.Duration) *posturev1.PostureEvent {
	end := &posturev1.SnapshotEnd{Resumed: resumed}
	if heartbeat > 0 {
		end.HeartbeatInterval = durationpb.New(heartbeat)
	}
	return &posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_SnapshotEnd{SnapshotEnd: end}}
}

func heartbeatEvent(rev uint64) *posturev1.PostureEvent {
	return &posturev1.PostureEvent{Revision: rev, Event: &posturev1.PostureEvent_Heartbeat{Heartbeat: &posturev1.Heartbeat{}}}
}

// fakeClock is a settable clock for Config.Now.
type fakeClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// run starts a client of srv with a one-minute grace period on clk.
func run(t *testing.T, srv posturev1.GatewayServiceServer, clk *fakeClock) *Client {
	t.Helper()
	c, err := New(Config{Conn: serve(t, srv), Grace: time.Minute, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A watch stream that goes silent for three of the heartbeat intervals
// its collector announced is abandoned like a lost connection: the grace
// period starts, checks fail closed after it, and the client resumes from
// the last event it applied. A new stream that stalls before its first
// event is abandoned too.
func TestSilentStreamAbandoned(t *testing.T) {
	const interval = 100 * time.Millisecond
	abandoned := make(chan struct{}) // closed when the first stream's context ends
	release := make(chan struct{})   // lets the collector answer again
	since := make(chan uint64, 100)
	srv := &funcCollector{watch: func(n int, req *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
		if n == 0 {
			if err := send(st, deviceEvent(5), snapshotEnd(5, false, interval), heartbeatEvent(5)); err != nil {
				return err
			}
			// Stalled: the connection stays up and says nothing.
			<-st.Context().Done()
			close(abandoned)
			return st.Context().Err()
		}
		since <- req.GetSinceRevision()
		select {
		case <-release:
		case <-st.Context().Done():
			return st.Context().Err()
		}
		if err := send(st, snapshotEnd(5, true, interval)); err != nil {
			return err
		}
		// Live from here on.
		for {
			select {
			case <-st.Context().Done():
				return st.Context().Err()
			case <-time.After(interval):
				if err := send(st, heartbeatEvent(5)); err != nil {
					return err
				}
			}
		}
	}}
	clk := &fakeClock{}
	c := run(t, srv, clk)
	eventually(t, "client synced", c.Synced)
	select {
	case <-abandoned:
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not abandon a stream silent for 10 s, 100 heartbeat intervals")
	}
	eventually(t, "client no longer synced", func() bool { return !c.Synced() })
	if d := c.Check("d", "trusted"); !d.Allowed {
		t.Errorf("within the grace period: denied: %s", d.Reason)
	}
	clk.advance(2 * time.Minute)
	if d := c.Check("d", "trusted"); d.Allowed || !strings.Contains(d.Reason, "failing closed") || !strings.Contains(d.Reason, "neither an event nor a heartbeat") {
		t.Errorf("after the grace period: %+v, want a fail-closed denial saying why the watch broke", d)
	}
	// Streams that stall before their first event are abandoned as well,
	// and the client tries again.
	eventually(t, "three attempts to resume", func() bool { return srv.callCount() >= 4 })
	close(release)
	eventually(t, "client resynced", c.Synced)
	if d := c.Check("d", "trusted"); !d.Allowed {
		t.Errorf("after the collector answered again: denied: %s", d.Reason)
	}
	for len(since) > 0 {
		if s := <-since; s != 5 {
			t.Errorf("resumed from revision %d, want 5, the last one applied", s)
		}
	}
}

// Heartbeats keep a quiet stream: the client never gives up on a
// collector that keeps sending them, however long no event comes.
func TestHeartbeatsKeepQuietStream(t *testing.T) {
	const interval = time.Second // the client waits 3 s; heartbeats come every 0.1 s
	srv := &funcCollector{watch: func(_ int, _ *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
		if err := send(st, deviceEvent(5), snapshotEnd(5, false, interval)); err != nil {
			return err
		}
		for {
			select {
			case <-st.Context().Done():
				return st.Context().Err()
			case <-time.After(100 * time.Millisecond):
				if err := send(st, heartbeatEvent(5)); err != nil {
					return err
				}
			}
		}
	}}
	c := run(t, srv, &fakeClock{})
	eventually(t, "client synced", c.Synced)
	for end := time.Now().Add(MissedHeartbeats*interval + time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !c.Synced() || srv.callCount() != 1 {
			t.Fatalf("the client left a stream that sent heartbeats (synced %v, %d watch calls)", c.Synced(), srv.callCount())
		}
	}
}

// A collector that announces no heartbeat interval sends none: the client
// waits on its stream however quiet (the connection's keepalive is then
// what notices a silent collector), even after another stream announced
// one.
func TestNoHeartbeatAnnounced(t *testing.T) {
	const interval = 100 * time.Millisecond
	srv := &funcCollector{watch: func(n int, _ *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
		if n == 0 {
			// Announces heartbeats, then ends (a restart, say).
			if err := send(st, deviceEvent(5), snapshotEnd(5, false, interval)); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "collector is shutting down")
		}
		// A collector without heartbeats: it resumes and has nothing more to say.
		if err := send(st, snapshotEnd(5, true, 0)); err != nil {
			return err
		}
		<-st.Context().Done()
		return st.Context().Err()
	}}
	c := run(t, srv, &fakeClock{})
	eventually(t, "client resumed", func() bool { return srv.callCount() == 2 && c.Synced() })
	for end := time.Now().Add(5 * MissedHeartbeats * interval); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !c.Synced() || srv.callCount() != 2 {
			t.Fatalf("the client left a quiet stream from a collector without heartbeats (synced %v, %d watch calls)", c.Synced(), srv.callCount())
		}
	}
}

// A heartbeat moves the revision the client resumes from: the collector
// sent every change up to its revision before it. One below the revision
// applied does not take it back.
func TestHeartbeatAdvancesRevision(t *testing.T) {
	since := make(chan uint64, 1)
	srv := &funcCollector{watch: func(n int, req *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
		if n == 0 {
			if err := send(st, deviceEvent(5), snapshotEnd(5, false, time.Minute), heartbeatEvent(9), heartbeatEvent(7)); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "collector is shutting down")
		}
		if n == 1 {
			since <- req.GetSinceRevision()
		}
		<-st.Context().Done()
		return st.Context().Err()
	}}
	c := run(t, srv, &fakeClock{})
	select {
	case s := <-since:
		if s != 9 {
			t.Errorf("resumed from revision %d after heartbeats at 9 and 7; want 9", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not resume")
	}
	if r := c.Revision(); r != 9 {
		t.Errorf("Revision() = %d, want 9", r)
	}
}

// A first watch that stalls before any collector announced its heartbeat
// interval is abandoned after MissedHeartbeats of the longest interval a
// collector may have, and the client tries again.
func TestFirstWatchStalled(t *testing.T) {
	defer func(d time.Duration) { maxCollectorHeartbeat = d }(maxCollectorHeartbeat)
	maxCollectorHeartbeat = 100 * time.Millisecond
	srv := &funcCollector{watch: func(n int, _ *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
		if n == 0 {
			<-st.Context().Done() // a proxy holding the stream, nothing behind it
			return st.Context().Err()
		}
		if err := send(st, deviceEvent(5), snapshotEnd(5, false, time.Second)); err != nil {
			return err
		}
		<-st.Context().Done()
		return st.Context().Err()
	}}
	c := run(t, srv, &fakeClock{})
	eventually(t, "client synced on its second watch", func() bool { return c.Synced() && srv.callCount() == 2 })
}
