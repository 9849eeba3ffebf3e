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

// metrics are the collector's Prometheus metrics. Counters the collector
// keeps anyway (stats, the fleet) are read at scrape time rather than
// counted twice.
type metrics struct {
	registry  *prometheus.Registry
	verify    prometheus.Histogram
	decisions *prometheus.CounterVec
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
	}
	m.registry.MustRegister(m.verify, m.decisions, &scrape{c: c},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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

// scrape reads the collector's own counters when Prometheus asks.
type scrape struct{ c *Collector }

var (
	descAccepted    = prometheus.NewDesc("posture_reports_accepted_total", "Reports verified and durably stored.", nil, nil)
	descRejected    = prometheus.NewDesc("posture_reports_rejected_total", "Reports rejected, by reason.", []string{"reason"}, nil)
	descStreamsRef  = prometheus.NewDesc("posture_report_streams_refused_total", "Agent report streams refused before any report, by reason (storage: the database could not be written; the agents keep their reports and reconnect).", []string{"reason"}, nil)
	descEnrolled    = prometheus.NewDesc("posture_enrollments_total", "Devices enrolled.", nil, nil)
	descEnrollRej   = prometheus.NewDesc("posture_enrollments_rejected_total", "Enrollments refused, by reason.", []string{"reason"}, nil)
	descDenied      = prometheus.NewDesc("posture_rpc_denied_total", "RPCs refused by authorization, by method.", []string{"method"}, nil)
	descWatchers    = prometheus.NewDesc("posture_watchers", "Gateways watching posture.", nil, nil)
	descDropped     = prometheus.NewDesc("posture_watchers_dropped_total", "Watch streams ended because the gateway fell too far behind (it resumes from its last revision).", nil, nil)
	descStreams     = prometheus.NewDesc("posture_report_streams", "Open agent report streams.", nil, nil)
	descDevices     = prometheus.NewDesc("posture_devices", "Devices by state.", []string{"state"}, nil)
	descDeviceLevel = prometheus.NewDesc("posture_devices_allowed", "Devices that meet each access level now.", []string{"level"}, nil)
	descHistoryFail = prometheus.NewDesc("posture_store_history_failures_total", "Failed passes indexing stored reports by device (retried; the reports stay readable).", nil, nil)
	descPruned      = prometheus.NewDesc("posture_store_reports_pruned_total", "Stored reports deleted because they were older than the retention (--report-retention).", nil, nil)
	descRenewed     = prometheus.NewDesc("posture_certificates_renewed_total", "Device certificates issued by renewal.", nil, nil)
	descRenewRej    = prometheus.NewDesc("posture_certificate_renewals_rejected_total", "Device certificate renewals refused, by reason.", []string{"reason"}, nil)
	descRevision    = prometheus.NewDesc("posture_events_applied_revision", "The newest database event this collector applied (the WatchPosture revision).", nil, nil)
	descGaps        = prometheus.NewDesc("posture_events_gaps", "Event IDs skipped while their transactions had not committed, read again until they do.", nil, nil)
	descGatewayRej  = prometheus.NewDesc("posture_gateway_rejected_total", "Gateway front-end requests refused before a decision (caller or device not authenticated, malformed request, too many connections without a certificate), by front end and reason.", []string{"front", "reason"}, nil)
	descAnonConns   = prometheus.NewDesc("posture_anonymous_connections", "Connections to the TLS listener from clients without a certificate.", nil, nil)
	descAnonStreams = prometheus.NewDesc("posture_anonymous_streams", "Calls open on the TLS listener from clients without a certificate.", nil, nil)
	descAnonRefused = prometheus.NewDesc("posture_anonymous_refused_total", "Connections and calls of clients without a certificate refused by the TLS listener's limits, by limit.", []string{"limit"}, nil)
	descThrottled   = prometheus.NewDesc("posture_enrollment_throttled_peers", "Peer addresses whose failed enrollments are being counted by the throttle.", nil, nil)
)

func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccepted, descRejected, descStreamsRef, descEnrolled, descEnrollRej, descDenied, descWatchers, descDropped, descStreams, descDevices, descDeviceLevel, descHistoryFail, descPruned, descGatewayRej, descRenewed, descRenewRej, descRevision, descGaps, descAnonConns, descAnonStreams, descAnonRefused, descThrottled} {
		ch <- d
	}
}

func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	c := s.c
	st := c.stats.Snapshot()
	ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(st.ReportsAccepted))
	ch <- prometheus.MustNewConstMetric(descEnrolled, prometheus.CounterValue, float64(st.Enrollments))
	for k, v := range st.ReportsRejected {
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range st.StreamsRefused {
		ch <- prometheus.MustNewConstMetric(descStreamsRef, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range st.EnrollmentsRejected {
		ch <- prometheus.MustNewConstMetric(descEnrollRej, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range st.RPCDenied {
		ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(v), k)
	}
	ch <- prometheus.MustNewConstMetric(descRenewed, prometheus.CounterValue, float64(st.CertsRenewed))
	for k, v := range st.RenewalsRejected {
		ch <- prometheus.MustNewConstMetric(descRenewRej, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range st.GatewayRejected {
		ch <- prometheus.MustNewConstMetric(descGatewayRej, prometheus.CounterValue, float64(v), k.Front, k.Reason)
	}
	for k, v := range st.AnonRefused {
		ch <- prometheus.MustNewConstMetric(descAnonRefused, prometheus.CounterValue, float64(v), k)
	}
	ch <- prometheus.MustNewConstMetric(descAnonConns, prometheus.GaugeValue, float64(c.anonConns.count()))
	ch <- prometheus.MustNewConstMetric(descAnonStreams, prometheus.GaugeValue, float64(c.anonStreams.count()))
	ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.GaugeValue, float64(c.throttle.tracked()))
	ch <- prometheus.MustNewConstMetric(descWatchers, prometheus.GaugeValue, float64(c.hub.Watchers()))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(c.hub.Dropped()))
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(c.fleet.StreamCount()))
	if h, ok := c.store.(interface{ HistoryFailures() int64 }); ok {
		ch <- prometheus.MustNewConstMetric(descHistoryFail, prometheus.CounterValue, float64(h.HistoryFailures()))
	}
	ch <- prometheus.MustNewConstMetric(descPruned, prometheus.CounterValue, float64(c.reportsPruned.Load()))
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(c.feed.Applied()))
	ch <- prometheus.MustNewConstMetric(descGaps, prometheus.GaugeValue, float64(c.feed.Gaps()))
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
