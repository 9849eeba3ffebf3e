package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[int(float64(len(d)-1)*p)]
}

// BenchmarkCheckAccess measures CheckAccess over gRPC with mutual TLS on
// loopback, next to a gRPC health check on the same server and connection
// as the baseline; both are timed in the same run, interleaved, so machine
// noise hits them alike. Reported: p50 and p99 of each and their ratio.
func BenchmarkCheckAccess(b *testing.B) {
	e := startCollector(b)
	stateDir, id := e.enroll()
	runAgent(b, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(b, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	conn := e.gatewayConn("bench")
	gw, health := posturev1.NewGatewayServiceClient(conn), healthpb.NewHealthClient(conn)
	ctx := context.Background()
	req := &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"}

	for _, inflight := range []int{1, 16} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) {
			var mu sync.Mutex
			var base, check []time.Duration
			var wg sync.WaitGroup
			per := max(b.N/inflight, 1)
			b.ResetTimer()
			for range inflight {
				wg.Add(1)
				go func() {
					defer wg.Done()
					bl, cl := make([]time.Duration, 0, per), make([]time.Duration, 0, per)
					for range per {
						t0 := time.Now()
						if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
							b.Error(err)
							return
						}
						t1 := time.Now()
						r, err := gw.CheckAccess(ctx, req)
						if err != nil || !r.GetAllowed() {
							b.Errorf("CheckAccess: %v %v", err, r.GetReasons())
							return
						}
						bl, cl = append(bl, t1.Sub(t0)), append(cl, time.Since(t1))
					}
					mu.Lock()
					base, check = append(base, bl...), append(check, cl...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			b.StopTimer()
			if len(check) == 0 {
				return
			}
			bp50, bp99 := percentile(base, 0.50), percentile(base, 0.99)
			cp50, cp99 := percentile(check, 0.50), percentile(check, 0.99)
			b.ReportMetric(float64(cp50.Microseconds()), "check-p50-µs")
			b.ReportMetric(float64(cp99.Microseconds()), "check-p99-µs")
			b.ReportMetric(float64(bp50.Microseconds()), "health-p50-µs")
			b.ReportMetric(float64(bp99.Microseconds()), "health-p99-µs")
			b.ReportMetric(float64(cp99)/float64(bp99), "p99-ratio")
		})
	}
}

// BenchmarkCheckAccessServerSide measures the decision the collector makes
// for CheckAccess, in process, without the network.
func BenchmarkCheckAccessServerSide(b *testing.B) {
	e := startCollector(b)
	stateDir, id := e.enroll()
	runAgent(b, stateDir, &fixedMeasurer{encrypted: true}, time.Hour)
	eventually(b, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	req := &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: "trusted"}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r, err := e.c.CheckAccess(ctx, req); err != nil || !r.GetAllowed() {
			b.Fatal(err, r.GetReasons())
		}
	}
}

// BenchmarkIngest measures signed reports verified and durably stored per
// second over 100 concurrent agent streams, next to signature verification
// alone as the baseline, in the same run.
func BenchmarkIngest(b *testing.B) {
	const streams = 100
	e := startCollector(b)
	clients := make([]*reportClient, streams)
	for i := range clients {
		dir, id := e.enroll()
		cert, key := deviceCreds(b, dir)
		clients[i] = openReports(b, e, cert, key, id)
	}
	body, _ := proto.Marshal(healthyReport(true, "bench"))
	sr, _ := envelope.SignSoftware(clients[0].key, []byte("nonce"), body)

	// Baseline: verification alone, in parallel on the same cores.
	b.Run("verify-only", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := envelope.VerifySoftware(&clients[0].key.PublicKey, sr); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
	})
	b.Run("verify-and-store", func(b *testing.B) {
		per := max(b.N/streams, 1)
		var wg sync.WaitGroup
		b.ResetTimer()
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					r := healthyReport(true, "bench")
					r.DeviceId, r.Seq, r.PrevDigest, r.CreatedAt = c.id, c.seq+1, c.digest, timestamppb.Now()
					body, _ := proto.Marshal(r)
					sr, _ := envelope.SignSoftware(c.key, c.nonce, body)
					if err := c.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: sr}}); err != nil {
						b.Error(err)
						return
					}
					m, err := c.st.Recv()
					if err != nil || m.GetAck() == nil {
						b.Errorf("answer %v: %v", m, err)
						return
					}
					a := m.GetAck()
					c.seq, c.digest, c.nonce = a.GetSeq(), a.GetDigest(), a.GetNextNonce()
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(per*streams)/b.Elapsed().Seconds(), "reports/s")
	})
}

// BenchmarkRevocationToWatchers measures the time from a revocation to its
// arrival at each of 1,000 watchers (p50, p99).
func BenchmarkRevocationToWatchers(b *testing.B) {
	const watchers = 1000
	e := startCollector(b)
	conn := e.gatewayConn("bench")
	gw := posturev1.NewGatewayServiceClient(conn)
	var all []time.Duration
	for b.Loop() {
		b.StopTimer()
		ctx, cancel := context.WithCancel(context.Background())
		_, id := e.enroll()
		streams := make([]posturev1.GatewayService_WatchPostureClient, watchers)
		for i := range streams {
			st, _, _ := watchUntilSnapshotEnd(b, ctx, gw, 0)
			streams[i] = st
		}
		lat := make([]time.Duration, watchers)
		var wg sync.WaitGroup
		start := time.Now()
		for i, st := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					ev, err := st.Recv()
					if err != nil {
						return
					}
					if d := ev.GetDevice(); d.GetDeviceId() == id && d.GetState() == posturev1.DeviceState_DEVICE_STATE_REVOKED {
						lat[i] = time.Since(start)
						return
					}
				}
			}()
		}
		b.StartTimer()
		start = time.Now()
		if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "bench"}); err != nil {
			b.Fatal(err)
		}
		wg.Wait()
		b.StopTimer()
		all = append(all, lat...)
		cancel() // end this round's watchers before the next
		eventually(b, "watchers gone", func() bool { return e.stats().GetStreamsOpen() == 0 && e.c.Watchers() == 0 })
		b.StartTimer()
	}
	b.ReportMetric(float64(percentile(all, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-ms")
}
