package gatewayfront

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkForwardAuth measures a forward-auth answer (gateway bearer
// check, certificate decode and verification, a real collector's decision,
// response headers) next to a baseline handler that only decodes and
// parses the forwarded certificate, in the same run. It reports the ratio
// as x-baseline, and as cold-verify-ns what decoding, parsing and
// verifying the chain costs when it is not cached.
func BenchmarkForwardAuth(b *testing.B) {
	e := startCollector(b)
	dev := e.enroll()
	fa, err := NewForwardAuth(ForwardAuthConfig{Decider: e.c, TrustDomain: testTrustDomain, Roots: e.roots, BearerSecrets: []string{testSecret}})
	if err != nil {
		b.Fatal(err)
	}
	cert := nginxEscaped(dev.chain...)
	request := func() *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/check?level=basic", nil)
		r.Header.Set("Authorization", "Bearer "+testSecret)
		r.Header.Set(HeaderClientCert, cert)
		return r
	}
	parseOnly := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := decodeForwardedCert(r.Header.Get(HeaderClientCert)); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	serve := func(h http.Handler) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, request())
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}

	b.ReportAllocs()
	for b.Loop() {
		serve(fa)
	}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)

	// The baselines run after the timed loop (nested testing.Benchmark
	// calls would deadlock), over the same number of iterations.
	start := time.Now()
	for range b.N {
		serve(parseOnly)
	}
	baseline := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	n := min(b.N, 2000)
	start = time.Now()
	for range n {
		if _, err := newVerifier(e.roots, testTrustDomain).deviceEncoded(cert); err != nil {
			b.Fatal(err)
		}
	}
	cold := float64(time.Since(start).Nanoseconds()) / float64(n)

	b.ReportMetric(baseline, "baseline-ns/op")
	b.ReportMetric(perOp/baseline, "x-baseline")
	b.ReportMetric(cold, "cold-verify-ns")
}
