package collector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/api"
	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/siem"
	"github.com/posture-project/posture/collector/ssf"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/webhook"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// EventsConfig configures what leaves Posture: webhooks, SIEM exports and
// the Shared Signals transmitter, all delivered from the outbox in the
// database (see collector/outbox). Receivers configured here are this
// collector's to deliver; with several collectors, give each the same.
type EventsConfig struct {
	// Webhooks post signed JSON events (collector/webhook).
	Webhooks []webhook.Config
	// SSF configures the Shared Signals transmitter (collector/ssf); off
	// without an Issuer.
	SSF SSFConfig
	// SIEM exports OCSF JSON lines to files or syslog servers
	// (collector/siem).
	SIEM []siem.Config
	// ReceiverLease is how long a collector's claim to deliver to a
	// receiver lasts without renewal: how soon another collector takes
	// over from one that stopped (outbox.DefaultLease).
	ReceiverLease time.Duration
	// RetryMin and RetryMax bound the pause between failed attempts to a
	// receiver, doubling from one to the other (1s and 5m).
	RetryMin, RetryMax time.Duration
	// DownAfter is how long a receiver's attempts fail before it is marked
	// down in stats and metrics (10m).
	DownAfter time.Duration
	// OutboxRetention is how long a message waits for a receiver that
	// does not take it before it is dropped (7 days).
	OutboxRetention time.Duration
}

// SSFConfig configures the Shared Signals transmitter.
type SSFConfig struct {
	// Issuer is the https URL receivers know the transmitter by: the iss
	// of every SET, below which its endpoints are. Every collector sharing
	// a database is given the same (receivers reach them through one
	// name).
	Issuer string
	// Listen is the address its HTTP endpoints are served on, with TLS
	// from the collector CA, or in plain HTTP on a loopback address behind
	// a proxy (Plaintext).
	Listen    string
	Plaintext bool
}

// setupEvents makes the outbox's dispatcher and records this collector's
// configured receivers in the database (a new one starts at the end of
// the outbox).
func (c *Collector) setupEvents(ctx context.Context) error {
	ev := c.cfg.Events
	var receivers []outbox.Receiver
	seen := map[string]bool{}
	for _, wc := range ev.Webhooks {
		if wc.UserAgent == "" {
			wc.UserAgent = "posture-collector/" + Version
		}
		w, err := webhook.New(wc)
		if err != nil {
			return err
		}
		receivers = append(receivers, w.Receiver())
	}
	for _, sc := range ev.SIEM {
		if sc.Version == "" {
			sc.Version = Version
		}
		x, err := siem.New(sc)
		if err != nil {
			return err
		}
		c.exports = append(c.exports, x)
		receivers = append(receivers, x.Receiver())
		if x.Decisions() {
			c.decisions.Announce(true)
		}
	}
	for _, r := range receivers {
		if seen[r.ID] {
			return fmt.Errorf("receiver %s is configured twice; give each webhook and SIEM export its own name", r.ID)
		}
		seen[r.ID] = true
		if _, err := c.store.AddReceiver(ctx, r.ID, r.Kind, nil, time.Now()); err != nil {
			return err
		}
	}
	c.deliveries = newDeliveryMetrics()
	c.outbox = outbox.New(outbox.Config{
		Store: c.store, Holder: c.replica.id, Logger: c.log,
		Lease: ev.ReceiverLease, MinBackoff: ev.RetryMin, MaxBackoff: ev.RetryMax, DownAfter: ev.DownAfter, Retention: ev.OutboxRetention,
		Receivers: func(ctx context.Context) ([]outbox.Receiver, error) {
			rs := append([]outbox.Receiver(nil), receivers...)
			if c.ssf != nil {
				streams, err := c.ssf.Receivers(ctx)
				if err != nil {
					return nil, err
				}
				rs = append(rs, streams...)
			}
			return rs, nil
		},
		Delivered: c.deliveries.delivered,
		Failed:    c.deliveries.failed,
	})
	if ev.SSF.Issuer == "" {
		if ev.SSF.Listen != "" {
			return errors.New("--ssf-listen needs --ssf-issuer: the URL receivers know the transmitter by")
		}
		return nil
	}
	if ev.SSF.Listen == "" {
		return errors.New("--ssf-issuer needs --ssf-listen: the address the transmitter's endpoints are served on")
	}
	key, err := ssf.LoadOrCreateKey(filepath.Join(c.cfg.DataDir, ssf.KeyFile))
	if err != nil {
		return err
	}
	c.ssf, err = ssf.New(ctx, ssf.Config{Issuer: ev.SSF.Issuer, Key: key, Store: c.store, Logger: c.log, Now: c.cfg.Now,
		Changed: c.outbox.Reconfigure, Wrote: c.outbox.Wake, Client: &http.Client{Timeout: 10 * time.Second}})
	if err != nil {
		return err
	}
	return c.listenSSF()
}

// listenSSF binds the transmitter's HTTP endpoints: TLS from the
// collector CA, or plain HTTP on loopback behind a proxy.
func (c *Collector) listenSSF() error {
	cfg := c.cfg.Events.SSF
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("--ssf-listen %q: %w", cfg.Listen, err)
	}
	c.ssfSrv = &http.Server{Handler: c.ssf.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 64 << 10}
	if cfg.Plaintext {
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("--ssf-plaintext is allowed only on a loopback address, not %q: receivers' tokens would cross the network in the clear", host)
		}
	} else {
		hosts := []string{host}
		if u, err := url.Parse(cfg.Issuer); err == nil {
			hosts = append(hosts, u.Hostname())
		}
		if c.ssfSrv.TLSConfig, err = c.ServingTLS(hosts...); err != nil {
			return err
		}
		// Receivers present no client certificate: their token
		// authenticates them.
		c.ssfSrv.TLSConfig.ClientAuth = tls.NoClientCert
	}
	if c.ssfListener, err = net.Listen("tcp", cfg.Listen); err != nil {
		return fmt.Errorf("--ssf-listen: %w", err)
	}
	return nil
}

// serveSSF runs the transmitter's endpoints until the server closes.
func (c *Collector) serveSSF() error {
	var err error
	if c.ssfSrv.TLSConfig != nil {
		err = c.ssfSrv.ServeTLS(c.ssfListener, "", "")
	} else {
		err = c.ssfSrv.Serve(c.ssfListener)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("SSF listener: %w", err)
	}
	return nil
}

// SSFAddr is the address the transmitter's endpoints listen on; empty
// when it is off.
func (c *Collector) SSFAddr() string {
	if c.ssfListener == nil {
		return ""
	}
	return c.ssfListener.Addr().String()
}

// receiverStatus lists the outbox's receivers as stats shows them.
func (c *Collector) receiverStatus(ctx context.Context) ([]*posturev1.ReceiverStatus, error) {
	st, err := c.outbox.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*posturev1.ReceiverStatus, 0, len(st))
	for _, s := range st {
		r := &posturev1.ReceiverStatus{Id: s.ID, Kind: s.Kind, State: s.State, Pending: s.Pending, Delivered: s.Delivered,
			Attempts: s.Attempts, LastError: s.LastError, Holder: s.Holder}
		if !s.DeliveredAt.IsZero() {
			r.DeliveredAt = timestamppb.New(s.DeliveredAt)
		}
		if !s.FailingSince.IsZero() {
			r.FailingSince = timestamppb.New(s.FailingSince)
		}
		out = append(out, r)
	}
	return out, nil
}

// deliveryMetrics count what the outbox delivered.
type deliveryMetrics struct {
	sent     *prometheus.CounterVec
	failures *prometheus.CounterVec
	latency  prometheus.Histogram
}

func newDeliveryMetrics() *deliveryMetrics {
	return &deliveryMetrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "posture_outbox_delivered_total",
			Help: "Messages delivered from the outbox, by receiver.",
		}, []string{"receiver"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "posture_outbox_failures_total",
			Help: "Failed delivery attempts, by receiver and whether the receiver rejected the message for good (it is then passed over).",
		}, []string{"receiver", "rejected"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "posture_outbox_delivery_seconds",
			Help:    "Time from a change to its message's delivery.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
	}
}

func (m *deliveryMetrics) delivered(receiver string, latency time.Duration) {
	m.sent.WithLabelValues(receiver).Inc()
	m.latency.Observe(latency.Seconds())
}

func (m *deliveryMetrics) failed(receiver string, rejected bool) {
	m.failures.WithLabelValues(receiver, fmt.Sprint(rejected)).Inc()
}

var (
	descReceiverPending = prometheus.NewDesc("posture_outbox_pending", "Messages written after a receiver's cursor, not delivered yet (a bound: other receivers' messages count too).", []string{"receiver"}, nil)
	descReceiverDown    = prometheus.NewDesc("posture_receiver_down", "1 for a receiver whose deliveries have failed for longer than --receiver-down-after, else 0.", []string{"receiver"}, nil)
	descReceiverHeld    = prometheus.NewDesc("posture_receiver_held", "1 for a receiver this collector delivers to, else 0.", []string{"receiver"}, nil)
)

// receiverMetrics reads the receivers' state at scrape time.
type receiverMetrics struct{ c *Collector }

func (r receiverMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- descReceiverPending
	ch <- descReceiverDown
	ch <- descReceiverHeld
}

func (r receiverMetrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := r.c.outbox.Status(ctx)
	if err != nil {
		return
	}
	held := map[string]bool{}
	for _, id := range r.c.outbox.Held() {
		held[id] = true
	}
	for _, s := range st {
		down, mine := 0.0, 0.0
		if s.State == "down" {
			down = 1
		}
		if held[s.ID] {
			mine = 1
		}
		ch <- prometheus.MustNewConstMetric(descReceiverPending, prometheus.GaugeValue, float64(s.Pending), s.ID)
		ch <- prometheus.MustNewConstMetric(descReceiverDown, prometheus.GaugeValue, down, s.ID)
		ch <- prometheus.MustNewConstMetric(descReceiverHeld, prometheus.GaugeValue, mine, s.ID)
	}
}

// wakeOutbox tells the outbox's workers that an event may have written
// messages.
func (c *Collector) wakeOutbox(ev store.Event) {
	switch ev.Kind {
	case store.EventReport, store.EventGatewayRevoked, store.EventRenewed, store.EventCertBound:
		return // these write none
	}
	c.outbox.Wake()
}

// apiTransmitter is the transmitter as the admin service takes it: nil,
// not a nil pointer, when it is off.
func (c *Collector) apiTransmitter() api.Transmitter {
	if c.ssf == nil {
		return nil
	}
	return c.ssf
}
