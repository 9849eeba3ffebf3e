// Package stats counts what a collector accepted and refused since it
// started. The counts are this collector's: each replica sharing a
// database counts its own.
//
// The counters are Prometheus counters and counter vectors, counted where
// the event happens: /metrics serves them as they are (Stats is a
// prometheus.Collector), and Snapshot reads the same counters for the
// admin API's GetStats (posture-collector stats). Nothing is counted
// twice or copied at scrape time.
package stats

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Stats counts what the collector accepted and refused since it started.
type Stats struct {
	reportsAccepted     prometheus.Counter
	reportsRejected     *prometheus.CounterVec
	streamsRefused      *prometheus.CounterVec
	enrollments         prometheus.Counter
	enrollmentsRejected *prometheus.CounterVec
	rpcDenied           *prometheus.CounterVec
	gatewayRejected     *prometheus.CounterVec
	certsRenewed        prometheus.Counter
	renewalsRejected    *prometheus.CounterVec
	anonRefused         *prometheus.CounterVec
	browserIssued       prometheus.Counter
	browserRefused      *prometheus.CounterVec

	// gatewayMu guards gatewayPairs, the front and reason pairs counted
	// apart so far, to hold them to MaxGatewayRejections series.
	gatewayMu    sync.Mutex
	gatewayPairs map[GatewayRejection]struct{}
}

// GatewayRejection is a gateway front end and why it refused a request.
type GatewayRejection struct{ Front, Reason string }

// MaxGatewayRejections bounds the front and reason pairs counted apart;
// the front ends report a handful, and anything past the bound is "other"
// rather than a new metric series.
const MaxGatewayRejections = 64

// New makes zero counts.
func New() *Stats {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	return &Stats{
		reportsAccepted:     counter("posture_reports_accepted_total", "Reports verified and durably stored."),
		reportsRejected:     vec("posture_reports_rejected_total", "Reports rejected, by reason.", "reason"),
		streamsRefused:      vec("posture_report_streams_refused_total", "Agent report streams refused before any report, by reason (storage: the database could not be written; the agents keep their reports and reconnect).", "reason"),
		enrollments:         counter("posture_enrollments_total", "Devices enrolled."),
		enrollmentsRejected: vec("posture_enrollments_rejected_total", "Enrollments refused, by reason.", "reason"),
		rpcDenied:           vec("posture_rpc_denied_total", "RPCs refused by authorization, by method.", "method"),
		gatewayRejected:     vec("posture_gateway_rejected_total", "Gateway front-end requests refused before a decision (caller or device not authenticated, malformed request, too many connections without a certificate), by front end and reason.", "front", "reason"),
		certsRenewed:        counter("posture_certificates_renewed_total", "Device certificates issued by renewal."),
		renewalsRejected:    vec("posture_certificate_renewals_rejected_total", "Device certificate renewals refused, by reason.", "reason"),
		anonRefused:         vec("posture_anonymous_refused_total", "Connections and calls of clients without a certificate refused by the TLS listener's limits, by limit.", "limit"),
		browserIssued:       counter("posture_browser_certificates_issued_total", "Browser certificates issued to devices' users."),
		browserRefused:      vec("posture_browser_certificates_refused_total", "Browser certificates refused, by reason (malformed: the user or key; device_state: pending, suspect or revoked; unknown_device; storage).", "reason"),
		gatewayPairs:        map[GatewayRejection]struct{}{},
	}
}

// collectors are the counters in the order /metrics and Snapshot read them.
func (s *Stats) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.reportsAccepted, s.reportsRejected, s.streamsRefused, s.enrollments, s.enrollmentsRejected, s.rpcDenied, s.gatewayRejected, s.certsRenewed, s.renewalsRejected, s.anonRefused, s.browserIssued, s.browserRefused}
}

// Describe sends the counters' descriptions (prometheus.Collector).
func (s *Stats) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range s.collectors() {
		c.Describe(ch)
	}
}

// Collect sends the counters (prometheus.Collector).
func (s *Stats) Collect(ch chan<- prometheus.Metric) {
	for _, c := range s.collectors() {
		c.Collect(ch)
	}
}

// Accepted counts one report stored.
func (s *Stats) Accepted() { s.reportsAccepted.Inc() }

// Rejected counts one report refused, by reason.
func (s *Stats) Rejected(reason string) { s.reportsRejected.WithLabelValues(reason).Inc() }

// StreamRefused counts one report stream refused before any report was
// read, by reason (storage: the database could not be written).
func (s *Stats) StreamRefused(reason string) { s.streamsRefused.WithLabelValues(reason).Inc() }

// Enrolled counts one enrollment.
func (s *Stats) Enrolled() { s.enrollments.Inc() }

// EnrollRejected counts one enrollment refused, by reason.
func (s *Stats) EnrollRejected(reason string) { s.enrollmentsRejected.WithLabelValues(reason).Inc() }

// Renewed counts one certificate renewal.
func (s *Stats) Renewed() { s.certsRenewed.Inc() }

// RenewRejected counts one renewal refused, by reason.
func (s *Stats) RenewRejected(reason string) { s.renewalsRejected.WithLabelValues(reason).Inc() }

// AnonymousRefused counts a connection or call of a client without a
// certificate refused by one of the listener's limits (a fixed set).
func (s *Stats) AnonymousRefused(limit string) { s.anonRefused.WithLabelValues(limit).Inc() }

// Denied counts one RPC refused by authorization, by method.
func (s *Stats) Denied(method string) { s.rpcDenied.WithLabelValues(method).Inc() }

// GatewayRejected counts one gateway front-end request refused before a decision, by front end and reason.
func (s *Stats) GatewayRejected(front, reason string) {
	k := GatewayRejection{front, reason}
	s.gatewayMu.Lock()
	if _, ok := s.gatewayPairs[k]; !ok {
		if len(s.gatewayPairs) >= MaxGatewayRejections {
			k = GatewayRejection{"other", "other"}
		}
		s.gatewayPairs[k] = struct{}{}
	}
	s.gatewayMu.Unlock()
	s.gatewayRejected.WithLabelValues(k.Front, k.Reason).Inc()
}

// BrowserCertIssued counts one browser certificate issued.
func (s *Stats) BrowserCertIssued() { s.browserIssued.Inc() }

// BrowserCertRefused counts one browser certificate refused, by reason.
func (s *Stats) BrowserCertRefused(reason string) { s.browserRefused.WithLabelValues(reason).Inc() }

// Snapshot is the counts at one moment.
type Snapshot struct {
	ReportsAccepted, Enrollments, CertsRenewed                        uint64
	ReportsRejected, EnrollmentsRejected, RPCDenied, RenewalsRejected map[string]uint64
	StreamsRefused                                                    map[string]uint64
	GatewayRejected                                                   map[GatewayRejection]uint64
	AnonRefused                                                       map[string]uint64
	BrowserCertsIssued                                                uint64
	BrowserCertsRefused                                               map[string]uint64
}

// Snapshot reads the counters. Each is read whole; counts that change
// while it reads may land on either side of it, as on a scrape.
func (s *Stats) Snapshot() Snapshot {
	gw := map[GatewayRejection]uint64{}
	for _, c := range read(s.gatewayRejected) {
		gw[GatewayRejection{c.labels["front"], c.labels["reason"]}] = c.n
	}
	return Snapshot{
		ReportsAccepted:     total(s.reportsAccepted),
		Enrollments:         total(s.enrollments),
		ReportsRejected:     byLabel(s.reportsRejected, "reason"),
		StreamsRefused:      byLabel(s.streamsRefused, "reason"),
		EnrollmentsRejected: byLabel(s.enrollmentsRejected, "reason"),
		RPCDenied:           byLabel(s.rpcDenied, "method"),
		GatewayRejected:     gw,
		CertsRenewed:        total(s.certsRenewed),
		RenewalsRejected:    byLabel(s.renewalsRejected, "reason"),
		AnonRefused:         byLabel(s.anonRefused, "limit"),
		BrowserCertsIssued:  total(s.browserIssued),
		BrowserCertsRefused: byLabel(s.browserRefused, "reason"),
	}
}

// count is one series of a counter: its labels and its value.
type count struct {
	labels map[string]string
	n      uint64
}

// read collects c's series.
func read(c prometheus.Collector) []count {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	var out []count
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil || pb.GetCounter() == nil {
			continue // a counter always writes itself; nothing else is here
		}
		labels := map[string]string{}
		for _, l := range pb.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		out = append(out, count{labels, uint64(pb.GetCounter().GetValue())})
	}
	return out
}

// total reads a counter without labels.
func total(c prometheus.Counter) uint64 {
	var n uint64
	for _, s := range read(c) {
		n += s.n
	}
	return n
}

// byLabel reads a one-label vector as a map from the label's value.
func byLabel(v *prometheus.CounterVec, label string) map[string]uint64 {
	out := map[string]uint64{}
	for _, c := range read(v) {
		out[c.labels[label]] = c.n
	}
	return out
}
