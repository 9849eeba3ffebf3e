package collector

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// metrics are the collector's Prometheus metrics. What the collector
// counts, it counts straight into Prometheus counters (stats, the
// decisions, the reports pruned); what other parts keep anyway (open
// streams, watchers, the feed's revision) is read by a function at scrape
// time rather than counted twice; only the fleet's states and levels are
// computed by the scrape.
type metrics struct {
	registry  *prometheus.Registry
	verify    prometheus.Histogram
	decisions *prometheus.CounterVec
	pruned    prometheus.Counter
}

func newMetrics(c *Collector) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		verify: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "posture_report_verify_seconds",
			Help:    "Time to verify one report's proof (signature or TPM quote).",
			Buckets: prometheus.ExponentialBuckets(20e-6, 2, 12),
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "posture_decisions_total",
			Help: "Access decisions answered, by level and result.",
		}, []string{"level", "result"}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "posture_store_reports_pruned_total",
			Help: "Stored reports deleted because they were older than the retention (--report-retention).",
		}),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	m.registry.MustRegister(m.verify, m.decisions, m.pruned, c.stats, &fleetMetrics{c: c},
		gauge("posture_watchers", "Gateways watching posture.",
			func() float64 { return float64(c.hub.Watchers()) }),
		counter("posture_watchers_dropped_total", "Watch streams ended because the gateway fell too far behind (it resumes from its last revision).",
			func() float64 { return float64(c.hub.Dropped()) }),
		gauge("posture_report_streams", "Open agent report streams.",
			func() float64 { return float64(c.fleet.StreamCount()) }),
		gauge("posture_events_applied_revision", "The newest database event this collector applied (the WatchPosture revision).",
			func() float64 { return float64(c.feed.Applied()) }),
		gauge("posture_events_gaps", "Event IDs skipped while their transactions had not committed, read again until they do.",
			func() float64 { return float64(c.feed.Gaps()) }),
		gauge("posture_anonymous_connections", "Connections to the TLS listener from clients without a certificate.",
			func() float64 { return float64(c.anonConns.count()) }),
		gauge("posture_anonymous_streams", "Calls open on the TLS listener from clients without a certificate.",
			func() float64 { return float64(c.anonStreams.count()) }),
		gauge("posture_enrollment_throttled_peers", "Peer addresses whose failed enrollments are being counted by the throttle.",
			func() float64 { return float64(c.throttle.tracked()) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if h, ok := c.store.(interface{ HistoryFailures() int64 }); ok {
		m.registry.MustRegister(counter("posture_store_history_failures_total", "Failed passes indexing stored reports by device (retried; the reports stay readable).",
			func() float64 { return float64(h.HistoryFailures()) }))
	}
	return m
}

// registerDeliveries adds what the outbox counts (events.go).
func (m *metrics) registerDeliveries(c *Collector) {
	d := c.deliveries
	m.registry.MustRegister(d.sent, d.failures, d.latency, receiverMetrics{c: c})
}

// decision counts one answered decision.
func (m *metrics) decision(level string, allowed bool) {
	result := "deny"
	if allowed {
		result = "allow"
	}
	m.decisions.WithLabelValues(level, result).Inc()
}

// GatewayRejections returns what a gateway front end (front names it:
// forward_auth, ext_authz) reports the requests it refused before asking
// for a decision to.
func (c *Collector) GatewayRejections(front string) *GatewayRejections {
	return &GatewayRejections{c: c, front: front}
}

// GatewayRejections counts the requests one gateway front end refused
// before a decision in posture_gateway_rejected_total{front,reason}, and
// logs each as a warning.
type GatewayRejections struct {
	c     *Collector
	front string
}

// Rejected counts and logs one refused request. reason must come from the
// front end's small fixed set, never from the request: each is a metric
// series. detail is what the caller was told.
func (g *GatewayRejections) Rejected(reason, detail string) {
	g.c.stats.GatewayRejected(g.front, reason)
	g.c.log.Warn("gateway request refused", "front", g.front, "reason", reason, "detail", detail)
}

// fleetMetrics counts the fleet's devices by state and by the levels they
// meet when Prometheus asks: these are the fleet's state at that moment,
// judged with the policy in force.
type fleetMetrics struct{ c *Collector }

var (
	descDevices     = prometheus.NewDesc("posture_devices", "Devices by state.", []string{"state"}, nil)
	descDeviceLevel = prometheus.NewDesc("posture_devices_allowed", "Devices that meet each access level now.", []string{"level"}, nil)
)

func (s *fleetMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDevices
	ch <- descDeviceLevel
}

func (s *fleetMetrics) Collect(ch chan<- prometheus.Metric) {
	c := s.c
	now := c.cfg.Now()
	states := map[string]int{}
	levels := map[string]int{}
	for _, l := range c.fleet.Policy().LevelNames() {
		levels[l] = 0
	}
	for _, id := range c.fleet.IDs() {
		// Each device with the policy it is judged by: a reload during
		// the scrape changes both together.
		subj, pol, ok := c.fleet.Judged(id)
		if !ok {
			continue
		}
		states[stateLabel(subj.State)]++
		// The set, not Decide per level: a scrape of a large fleet must
		// not format a reason for every denial.
		_, set := pol.AllowedSet(&subj, now)
		for i, l := range pol.LevelNames() {
			if set&(1<<i) != 0 {
				levels[l]++
			}
		}
	}
	for k, v := range states {
		ch <- prometheus.MustNewConstMetric(descDevices, prometheus.GaugeValue, float64(v), k)
	}
	for k, v := range levels {
		ch <- prometheus.MustNewConstMetric(descDeviceLevel, prometheus.GaugeValue, float64(v), k)
	}
}

func stateLabel(s posturev1.DeviceState) string {
	switch s {
	case posturev1.DeviceState_DEVICE_STATE_ACTIVE:
		return "active"
	case posturev1.DeviceState_DEVICE_STATE_SUSPECT:
		return "suspect"
	case posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return "revoked"
	case posturev1.DeviceState_DEVICE_STATE_PENDING:
		return "pending"
	}
	return "unknown"
}

// metricsServer serves /metrics, on its own listener apart from the API.
func (c *Collector) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(c.metrics.registry, promhttp.HandlerOpts{}))
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// serveMetrics runs srv on l until it is closed (before or after it
// starts: Serve then returns at once and closes l).
func serveMetrics(srv *http.Server, l net.Listener) error {
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics listener: %w", err)
	}
	return nil
}
