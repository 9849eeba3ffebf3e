package console_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// benchReport is a real report's bytes: a healthy Debian laptop, its disk
// encrypted or not.
func benchReport(id string, seq uint64, encrypted bool, at time.Time) []byte {
	meta := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.New(at), Source: posturev1.Source_SOURCE_OS}
	b, err := proto.Marshal(&posturev1.PostureReport{DeviceId: id, Seq: seq, CreatedAt: timestamppb.New(at),
		Os:         &posturev1.OSInfo{Meta: meta, Platform: "linux", Name: "debian", Version: "12", KernelVersion: "6.1.0-28-amd64"},
		Disk:       &posturev1.DiskEncryption{Meta: meta, SystemEncrypted: encrypted, Volumes: []*posturev1.Volume{{MountPoint: "/", Encrypted: encrypted, Device: "/dev/nvme0n1p3"}}},
		SecureBoot: &posturev1.SecureBoot{Meta: meta, Enabled: true},
		Updates:    &posturev1.Updates{Meta: meta, Manager: "apt", Pending: uint32(seq % 7), SecurityPending: uint32(seq % 3 / 2)},
		Firewall:   &posturev1.Firewall{Meta: meta, Enabled: true, Product: "nftables"},
		ScreenLock: &posturev1.ScreenLock{Meta: meta, Enabled: true, TimeoutSeconds: 300},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// loadFleet writes a database of devices devices, each with a head
// report, and one more device (returned) with history reports, one a
// minute up to now, through the store's loader: one transaction.
func loadFleet(b *testing.B, path string, devices, history int) string {
	b.Helper()
	st, err := sqlite.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	var recs []store.Record
	add := func(id, host string, reports int, encrypted func(seq uint64) bool) {
		var prev []byte
		for seq := uint64(1); seq <= uint64(reports); seq++ {
			at := now.Add(-time.Duration(uint64(reports)-seq) * time.Minute)
			body := benchReport(id, seq, encrypted(seq), at)
			d := sha256.Sum256(body)
			recs = append(recs, store.Record{Report: &store.Report{DeviceID: id, Seq: seq, Digest: d[:], Nonce: d[:8], Body: body, Proof: d[:], ReceivedAt: at}})
			prev = d[:]
		}
		dev := store.DeviceRecord{Device: store.Device{ID: id, Hostname: host, Platform: "linux", Identity: "software", IdentityKey: []byte("key-" + id),
			Assurance: 1, State: 1, EnrolledAt: now.Add(-400 * 24 * time.Hour), CertSerial: "1", LastSeq: uint64(reports), LastDigest: prev, LastSeen: now}}
		recs = append(recs, store.Record{Device: &dev})
	}
	for i := range devices {
		id := fmt.Sprintf("%032x", i)
		add(id, fmt.Sprintf("laptop-%06d.example.com", i), 1, func(uint64) bool { return i%3 != 0 })
	}
	chart := fmt.Sprintf("%032x", devices)
	add(chart, "year-of-reports.example.com", history, func(seq uint64) bool { return seq/10000%2 == 0 })
	// The loader wants devices before their reports.
	slices.SortStableFunc(recs, func(a, b store.Record) int {
		return rank(a) - rank(b)
	})
	i := 0
	if err := st.Load(context.Background(), func() (store.Record, bool, error) {
		if i == len(recs) {
			return store.Record{}, false, nil
		}
		i++
		return recs[i-1], true, nil
	}); err != nil {
		b.Fatal(err)
	}
	return chart
}

// cursor is the device list's cursor after a device (its "after").
func cursor(host, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(host + "\x00" + id))
}

func rank(r store.Record) int {
	if r.Device != nil {
		return 0
	}
	return 1
}

// p99 is the 99th percentile of ds, and the median.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(ds)
	return ds[len(ds)/2], ds[(len(ds)*99+99)/100-1]
}

// BenchmarkConsole renders the console's pages for a fleet of 100,000
// devices, and the device page of one with a year of reports at one a
// minute (525,600) with its score chart, over HTTPS with a session, next
// to the collector's health endpoint (gRPC health over TLS) in the same
// run. Each reports its median and 99th percentile, and the 99th
// percentile's ratio to the health endpoint's. Filling the database takes
// about a minute.
func BenchmarkConsole(b *testing.B) {
	const devices, history = 100_000, 525_600
	dir := b.TempDir()
	start := time.Now()
	chart := loadFleet(b, filepath.Join(dir, "posture.db"), devices, history)
	b.Logf("loaded %d devices and %d reports of one in %v", devices, history, time.Since(start).Round(time.Second))

	c, err := collector.New(collector.Config{DataDir: dir, Listen: "127.0.0.1:0", TrustDomain: trustDomain, Console: &collector.ConsoleConfig{Listen: "127.0.0.1:0"}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	s := &site{c: c, dir: dir, url: c.ConsoleURL()}
	conn, err := collector.DialAdmin(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	s.admin, s.cons = posturev1.NewAdminServiceClient(conn), posturev1.NewConsoleServiceClient(conn)
	ck := s.linkSession(b)
	client := s.client()

	roots := x509.NewCertPool()
	roots.AddCert(c.CA())
	hc, err := grpc.NewClient(c.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})))
	if err != nil {
		b.Fatal(err)
	}
	defer hc.Close()
	health := healthpb.NewHealthClient(hc)

	var healthP99 time.Duration
	measure := func(b *testing.B, one func() error) {
		var ds []time.Duration
		for b.Loop() {
			t0 := time.Now()
			if err := one(); err != nil {
				b.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
		}
		p50, p99 := percentiles(ds)
		b.ReportMetric(float64(p50.Microseconds())/1000, "ms-p50")
		b.ReportMetric(float64(p99.Microseconds())/1000, "ms-p99")
		if healthP99 == 0 {
			healthP99 = p99
		} else {
			b.ReportMetric(float64(p99)/float64(healthP99), "p99/health-p99")
		}
	}
	b.Run("health", func(b *testing.B) {
		measure(b, func() error {
			_, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
			return err
		})
	})
	for _, page := range []struct{ name, path string }{
		{"overview", "/"},
		{"devices", "/devices"},
		{"devices-search", "/devices?q=laptop-0421"},
		{"devices-filtered", "/devices?level=trusted&failing=security_updates&assurance=software"},
		{"devices-page-500", "/devices?after=" + cursor("laptop-049999.example.com", fmt.Sprintf("%032x", 49999))},
		{"device", "/devices/" + fmt.Sprintf("%032x", 4242)},
		{"device-year-chart", "/devices/" + chart},
		{"decisions", "/decisions"},
		{"policy", "/policy"},
		{"gateways", "/gateways"},
		{"audit", "/audit"},
	} {
		b.Run(page.name, func(b *testing.B) {
			measure(b, func() error {
				req, _ := http.NewRequest("GET", s.url+page.path, nil)
				req.AddCookie(ck)
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("%s: %s", page.path, resp.Status)
				}
				return err
			})
		})
	}
}
