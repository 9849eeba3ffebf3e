package gatewayclient

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

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
