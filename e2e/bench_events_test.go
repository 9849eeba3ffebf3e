package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/webhook"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// arrivals records when each receiver (by URL path) heard of each device.
type arrivals struct {
	mu   sync.Mutex
	at   map[string]map[string]time.Time // path → device → when
	wake chan struct{}
}

func (a *arrivals) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := "" // the device's ID for its enrollment, "ID#revoked" for its revocation
	if strings.HasPrefix(r.URL.Path, "/ssf/") {
		// A SET's payload, read without checking it: the SSF test checks
		// signatures; this one times deliveries.
		parts := strings.Split(string(body), ".")
		if len(parts) == 3 {
			payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
			var c struct {
				SubID struct {
					ID     string `json:"id"`
					Device struct {
						ID string `json:"id"`
					} `json:"device"`
				} `json:"sub_id"`
				Events map[string]json.RawMessage `json:"events"`
			}
			json.Unmarshal(payload, &c)
			if _, ok := c.Events[sessionRevoked]; ok {
				key = c.SubID.ID + c.SubID.Device.ID + "#revoked"
			}
		}
		w.WriteHeader(http.StatusAccepted)
	} else {
		var ev struct {
			Type string `json:"type"`
			Data struct {
				Device struct{ ID string } `json:"device"`
			} `json:"data"`
		}
		json.Unmarshal(body, &ev)
		switch ev.Type {
		case "device.enrolled":
			key = ev.Data.Device.ID
		case "device.revoked":
			key = ev.Data.Device.ID + "#revoked"
		}
	}
	if key == "" {
		return
	}
	now := time.Now()
	a.mu.Lock()
	if a.at[r.URL.Path] == nil {
		a.at[r.URL.Path] = map[string]time.Time{}
	}
	if _, seen := a.at[r.URL.Path][key]; !seen {
		a.at[r.URL.Path][key] = now
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// BenchmarkRevocationToReceivers measures a revocation reaching a webhook
// receiver and a Shared Signals receiver (a device.revoked event and a
// session-revoked SET) from the admin's call, with 100 receivers
// configured (50 webhooks, 50 SSF push streams), each its own path on a
// server on this machine; p99 must stay under a second. The baseline is
// the same with one webhook and one stream, in the same run
// (p99-to-2-receivers).
func BenchmarkRevocationToReceivers(b *testing.B) {
	var baseline float64
	for _, n := range []int{2, 100} {
		b.Run(fmt.Sprintf("receivers=%d", n), func(b *testing.B) {
			rec := &arrivals{at: map[string]map[string]time.Time{}, wake: make(chan struct{}, 1)}
			srv := httptest.NewServer(rec)
			b.Cleanup(srv.Close)
			ssfAddr := freeAddr(b)
			var hooks []webhook.Config
			var paths []string
			for i := range n / 2 {
				hooks = append(hooks, webhook.Config{Name: fmt.Sprintf("hook-%d", i), URL: fmt.Sprintf("%s/hook/%d", srv.URL, i), Secret: []byte("benchmark-webhook-secret-0123456")})
				paths = append(paths, fmt.Sprintf("/hook/%d", i))
			}
			e := startCollectorWith(b, func(c *collector.Config) {
				c.Events.Webhooks = hooks
				c.Events.SSF = collector.SSFConfig{Issuer: "https://" + ssfAddr, Listen: ssfAddr}
			})
			ctx := context.Background()
			if _, err := e.admin.AddSSFReceiver(ctx, &posturev1.AddSSFReceiverRequest{Name: "rp", Audience: "https://rp.example", Level: "basic"}); err != nil {
				b.Fatal(err)
			}
			for i := range n / 2 {
				if _, err := e.admin.CreateSSFStream(ctx, &posturev1.CreateSSFStreamRequest{Receiver: "rp", EndpointUrl: fmt.Sprintf("%s/ssf/%d", srv.URL, i)}); err != nil {
					b.Fatal(err)
				}
				paths = append(paths, fmt.Sprintf("/ssf/%d", i))
			}
			watched := []string{"/hook/0", "/ssf/0"}
			// Every receiver is held (delivered to) before timing starts.
			eventually(b, "every receiver held", func() bool {
				s := e.stats()
				held := 0
				for _, r := range s.GetReceivers() {
					if r.GetState() == "ok" {
						held++
					}
				}
				return held == n
			})
			var lat, all []time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				_, id := e.enroll()
				// Its enrollment reached every webhook (streams take no
				// enrollments): the pipes are quiet.
				waitHeard(b, rec, id, paths[:n/2])
				b.StartTimer()
				t0 := time.Now()
				if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: id, Reason: "benchmark"}); err != nil {
					b.Fatal(err)
				}
				at := waitHeard(b, rec, id+"#revoked", watched)
				lat = append(lat, at.Sub(t0))
				b.StopTimer()
				everyone := waitHeard(b, rec, id+"#revoked", paths)
				all = append(all, everyone.Sub(t0))
				b.StartTimer()
			}
			b.StopTimer()
			p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-all-receivers-ms")
			b.ReportMetric(0, "ns/op")
			if n == 2 {
				baseline = float64(p99)
			} else if baseline > 0 {
				b.ReportMetric(float64(p99)/baseline, "p99-to-2-receivers")
			}
			if p99 >= time.Second {
				b.Errorf("p99 %v: a revocation must reach the receivers within a second", p99)
			}
		})
	}
}

// waitHeard waits until every path heard key (a device ID for its
// enrollment, "ID#revoked" for its revocation) and returns when the last
// did.
func waitHeard(b testing.TB, rec *arrivals, key string, paths []string) time.Time {
	b.Helper()
	deadline := time.After(10 * time.Second)
	for {
		rec.mu.Lock()
		latest, ok := time.Time{}, true
		for _, p := range paths {
			t, seen := rec.at[p][key]
			if !seen {
				ok = false
				break
			}
			if t.After(latest) {
				latest = t
			}
		}
		rec.mu.Unlock()
		if ok {
			return latest
		}
		select {
		case <-rec.wake:
		case <-time.After(5 * time.Millisecond):
		case <-deadline:
			b.Fatalf("%s not heard by every receiver within 10 s", key)
		}
	}
}
