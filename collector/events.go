package collector

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/outbox"
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

// receiverID is how a configured receiver is known in the database.
func receiverID(kind, name string) string { return kind + ":" + name }

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
			return append([]outbox.Receiver(nil), receivers...), nil
		},
		Delivered: c.deliveries.delivered,
		Failed:    c.deliveries.failed,
	})
	return nil
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
	case store.EventReport, store.EventGatewayRevoked, store.EventRenewed:
		return // these write none
	}
	c.outbox.Wake()
}
