// Package gatewayclient lets an access gateway written in Go answer posture
// decisions in-process. It keeps a local copy of every device's decisions,
// fed by the collector's WatchPosture stream, so a check is a map lookup
// and a revocation arrives as soon as the collector makes it.
//
// If the collector goes away the cache keeps answering for a grace period,
// then fails closed: every check denies until the watch is back. A
// collector that stops answering without closing the connection is noticed
// by the watch stream's heartbeat, through any proxy (MissedHeartbeats),
// and, when nothing stands between, by the connection's keepalive pings
// (DetectionBound).
package gatewayclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/posture-project/posture/internal/collectors"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Config configures a Client.
type Config struct {
	// Conn is a connection to the collector authenticated with a gateway
	// certificate (posture-collector gateway add): made by Dial, or
	// dialed with DialOptions.
	Conn grpc.ClientConnInterface
	// Grace is how long decisions keep being answered after the watch
	// breaks; 0 means 30 s. A collector that closes the connection breaks
	// the watch at once. One that stops answering without closing it
	// breaks it within MissedHeartbeats of the heartbeat intervals it
	// announced (30 s with the collector's default), whatever proxies
	// stand between, and within DetectionBound when the connection reaches
	// the collector itself. So the client fails closed at most Grace plus
	// the earlier of the two after the collector last spoke.
	Grace time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger, when set, is told when the watch breaks (and why) and when it
	// is live again.
	Logger *slog.Logger
}

// Keepalive on the watch connection. A quiet fleet sends no events for
// minutes, so a collector that stops answering without closing the
// connection (a stopped process, a partition that drops packets) must be
// noticed some other way, or the cache would answer from stale decisions
// forever. The watch stream's heartbeat does it end to end. Pings do it
// only for the connection's first hop: an L7 proxy in between (nginx
// grpc_pass, Envoy, a gRPC load balancer) answers them itself, however
// long the collector behind it has been gone. They still cut the
// connection to a collector reached directly, within DetectionBound, and
// they are all there is against a collector that sends no heartbeats.
//
// The collector accepts a ping every 10 s at most (its keepalive
// enforcement policy) and closes the connection of a client that pings
// more often. gRPC pings keepaliveTime after the last byte read, the
// previous ping's ack included, so pings arrive at least that far apart.
const (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
	// DetectionBound is the longest a connection dialed with DialOptions
	// stays up after its other end stops answering: one keepalive interval
	// and the wait for the ping's ack. That end is the collector only when
	// no proxy stands between; behind a proxy, a collector that stops
	// answering is noticed by the heartbeat (MissedHeartbeats). The grace
	// period starts when the watch breaks.
	DetectionBound = keepaliveTime + keepaliveTimeout
)

// MissedHeartbeats is how many of the collector's heartbeat intervals
// (announced in SnapshotEnd) a watch stream may stay silent, without an
// event or a heartbeat, before the client abandons it as it would a lost
// connection, and reconnects. Heartbeats come from the collector itself,
// so this notices a collector that stopped answering through any proxy.
const MissedHeartbeats = 3

// DialOptions are the options to add when dialing the collector for a
// Client.
//
// Keepalive pings notice a collector that stops answering without closing
// the connection within DetectionBound when the client reaches it directly
// (a proxy answers them itself; the watch heartbeat covers that case), and
// are the only way to notice one that sends no heartbeats.
//
// Fixed flow-control windows: with gRPC's default adaptive windows a client
// answers data that arrives after a quiet spell with a bandwidth probe (an
// HTTP/2 PING) that the collector must read and answer, which on a watch
// stream means every pushed event costs the collector two writes and a
// read instead of one write; fixed windows turn the probe off.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(1 << 20),
	}
}

// Dial connects to one of the collectors at addrs (several collectors
// sharing a database, or one name behind a load balancer) with
// DialOptions and opts, which must set the transport credentials (a
// gateway certificate: pki.ClientTLS, or credentials of your own). The
// connection uses the first collector that answers and moves to another
// when that one is lost; the Client's watch then resumes there from the
// last revision it applied.
func Dial(addrs []string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return collectors.Dial(addrs, append(DialOptions(), opts...)...)
}

// Client is a local, watch-fed cache of posture decisions.
type Client struct {
	cfg   Config
	watch posturev1.GatewayServiceClient
	sleep func(ctx context.Context, d time.Duration) error // waits between watch attempts

	mu           sync.RWMutex
	devices      map[string]*posturev1.DeviceDecision
	revision     uint64        // the highest revision applied
	collector    string        // the collector process revision came from (SnapshotEnd.collector)
	heartbeat    time.Duration // the interval the collector last announced; 0: none
	announced    bool          // a SnapshotEnd has told heartbeat
	synced       bool          // a snapshot (or resume) completed
	connected    bool          // the watch is live
	disconnected time.Time     // when the watch last broke
	lastErr      error         // why the last watch ended
}

// New makes a client; Run keeps it fed.
func New(cfg Config) (*Client, error) {
	if cfg.Conn == nil {
		return nil, errors.New("gatewayclient: Conn is required")
	}
	if cfg.Grace == 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, watch: posturev1.NewGatewayServiceClient(cfg.Conn), sleep: sleepCtx, devices: map[string]*posturev1.DeviceDecision{}}, nil
}

// Reconnection delays: doubling from minBackoff to maxBackoff while
// attempts fail, back to minBackoff once a watch has been live.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Run watches the collector until ctx ends, reconnecting with backoff and
// resuming from the last revision applied. The backoff starts over after
// a watch that went live, so a client that has been healthy tries again
// after the shortest delay however often it lost the collector before.
func (c *Client) Run(ctx context.Context) error {
	backoff := minBackoff
	for {
		err := c.watchOnce(ctx)
		c.mu.Lock()
		wasLive := c.connected
		if c.connected {
			c.connected, c.disconnected = false, c.cfg.Now()
		}
		c.lastErr = err
		c.mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if wasLive {
			c.cfg.Logger.Warn("posture watch broke; answering from the cache for the grace period", "err", err, "grace", c.cfg.Grace.String())
		} else {
			c.cfg.Logger.Debug("posture watch attempt failed", "err", err)
		}
		if wasLive {
			backoff = minBackoff
		}
		wait := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		if err := c.sleep(ctx, wait); err != nil {
			return err
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// errSilent ends a watch stream that went quiet for longer than the
// heartbeat allows.
var errSilent = errors.New("the collector sent neither an event nor a heartbeat")

// maxCollectorHeartbeat is the longest heartbeat interval a collector
// sends (its --watch-heartbeat is at most a minute). A variable for tests.
var maxCollectorHeartbeat = time.Minute

func (c *Client) watchOnce(ctx context.Context) error {
	c.mu.RLock()
	since, from, interval := c.revision, c.collector, c.heartbeat
	if !c.announced {
		// No collector has said its interval yet: the longest one a
		// collector may have, so that a first watch stalled behind a proxy
		// is abandoned too.
		interval = maxCollectorHeartbeat
	}
	c.mu.RUnlock()
	// The watchdog abandons a stream that stays silent for MissedHeartbeats
	// intervals. It is armed from the start with the interval the collector
	// last announced (a stream through a proxy can stall before its first
	// event as well as after), and set again by each SnapshotEnd; every
	// message received puts it off.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var watchdog *time.Timer
	var silence time.Duration
	arm := func(every time.Duration) {
		if watchdog != nil {
			watchdog.Stop()
			watchdog = nil
		}
		if every <= 0 {
			return
		}
		d := MissedHeartbeats * every
		silence = d
		watchdog = time.AfterFunc(d, func() {
			cancel(fmt.Errorf("%w for %v (%d heartbeat intervals): abandoning the watch", errSilent, d, MissedHeartbeats))
		})
	}
	arm(interval)
	defer arm(0)
	st, err := c.watch.WatchPosture(ctx, &posturev1.WatchPostureRequest{SinceRevision: since, SinceCollector: from})
	if err != nil {
		return silentOr(ctx, err)
	}
	// Events before SnapshotEnd form a snapshot (replace everything) or, on
	// resume, the missed changes (apply in order).
	var pending []*posturev1.DeviceDecision
	for {
		ev, err := st.Recv()
		if err != nil {
			return silentOr(ctx, err)
		}
		if watchdog != nil {
			watchdog.Reset(silence)
		}
		if ev.GetHeartbeat() != nil {
			// Every change up to its revision was sent before it: a
			// resume from it skips nothing, and a recent revision lets
			// another collector resume the watch without a snapshot.
			c.mu.Lock()
			if c.connected {
				c.revision = max(c.revision, ev.GetRevision())
			}
			c.mu.Unlock()
			continue
		}
		if d := ev.GetDevice(); d != nil {
			c.mu.Lock()
			live := c.connected
			if live {
				c.devices[d.GetDeviceId()] = d
				c.revision = max(c.revision, ev.GetRevision())
			}
			c.mu.Unlock()
			if !live {
				pending = append(pending, d)
			}
			continue
		}
		if end := ev.GetSnapshotEnd(); end != nil {
			c.mu.Lock()
			if !end.GetResumed() {
				c.devices = make(map[string]*posturev1.DeviceDecision, len(pending))
			}
			for _, d := range pending {
				c.devices[d.GetDeviceId()] = d
			}
			pending = nil
			if end.GetResumed() {
				c.revision = max(c.revision, ev.GetRevision())
			} else {
				c.revision = ev.GetRevision()
			}
			c.collector = end.GetCollector()
			if !c.connected {
				c.cfg.Logger.Info("posture watch live", "revision", c.revision, "resumed", end.GetResumed(), "devices", len(c.devices))
			}
			c.synced, c.connected, c.announced = true, true, true
			c.lastErr = nil
			c.heartbeat = 0
			if iv := end.GetHeartbeatInterval(); iv.IsValid() && iv.AsDuration() > 0 {
				c.heartbeat = iv.AsDuration()
			}
			interval = c.heartbeat
			c.mu.Unlock()
			arm(interval)
		}
	}
}

// silentOr is the watchdog's reason when it ended the stream, else err.
func silentOr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errSilent) {
		return cause
	}
	return err
}

// Decision is the answer to a check.
type Decision struct {
	Allowed bool
	// Reason explains a denial.
	Reason string
	// Device is the cached decision record, nil when the device is unknown.
	Device *posturev1.DeviceDecision
}

// Check decides whether a device (by ID) meets a level, from the cache.
func (c *Client) Check(deviceID, level string) Decision {
	c.mu.RLock()
	defer c.mu.RUnlock()
	switch {
	case !c.synced:
		return Decision{Reason: "posture cache is not synced with the collector yet"}
	case !c.connected && c.cfg.Now().Sub(c.disconnected) > c.cfg.Grace:
		why := ""
		if c.lastErr != nil {
			why = " (" + c.lastErr.Error() + ")"
		}
		return Decision{Reason: fmt.Sprintf("lost the collector %s ago%s, longer than the %s grace period: failing closed", c.cfg.Now().Sub(c.disconnected).Round(time.Second), why, c.cfg.Grace)}
	}
	d, ok := c.devices[deviceID]
	if !ok {
		return Decision{Reason: "device " + deviceID + " is not enrolled with the collector"}
	}
	if slices.Contains(d.GetAllowedLevels(), level) {
		return Decision{Allowed: true, Device: d}
	}
	if d.GetState() == posturev1.DeviceState_DEVICE_STATE_PENDING {
		return Decision{Device: d, Reason: fmt.Sprintf("device %s is pending approval: every level is denied until an admin approves it; ask an admin to approve this device (posture-collector devices approve %s)", deviceID, deviceID)}
	}
	return Decision{Device: d, Reason: fmt.Sprintf("device %s (%s, score %d) does not meet level %s; the collector's CheckAccess explains why", deviceID, d.GetState(), d.GetScore(), level)}
}

// CheckSPIFFE decides from the SPIFFE ID in a client certificate.
func (c *Client) CheckSPIFFE(spiffeID, level string) Decision {
	_, role, name, err := pki.ParseSPIFFEID(spiffeID)
	if err != nil || role != pki.RoleDevice {
		return Decision{Reason: fmt.Sprintf("%q is not a device SPIFFE ID", spiffeID)}
	}
	d := c.Check(name, level)
	if d.Device != nil && d.Device.GetSpiffeId() != spiffeID {
		// Same device name in another trust domain.
		return Decision{Reason: fmt.Sprintf("%s is not a device of this collector's trust domain", spiffeID)}
	}
	return d
}

// CheckCertificate decides from the device certificate a client presented
// (verified by the gateway's TLS against the collector CA): the device its
// SPIFFE ID names, and only if it is the certificate the collector issued
// that device last, by serial and public key. A certificate the device
// replaced (by renewing it, or enrolling again) is still valid until it
// expires, but no longer counts: a copy of an old one must not keep
// opening doors. Nor does one minted with the device's serial but another
// key, which only whoever holds the collector CA's key can make. Prefer it
// to CheckSPIFFE, which cannot tell.
func (c *Client) CheckCertificate(leaf *x509.Certificate, level string) Decision {
	id, err := pki.PeerID(leaf)
	if err != nil {
		return Decision{Reason: fmt.Sprintf("client certificate: %v", err)}
	}
	d := c.CheckSPIFFE(id.String(), level)
	if d.Device == nil {
		return d
	}
	if want := d.Device.GetCertificateTag(); want != 0 && !pki.CertMatches(want, pki.SerialHex(leaf), pki.KeySHA256(leaf)) {
		return Decision{Device: d.Device, Reason: fmt.Sprintf("this certificate of device %s (serial %s) was replaced when the device renewed it or enrolled again, or the collector did not issue it with this serial and key; only its newest certificate counts", d.Device.GetDeviceId(), pki.SerialHex(leaf))}
	}
	return d
}

// CertificateTag is how a DeviceDecision names a certificate
// (certificate_tag) that the collector recorded with its public key: the
// first 8 bytes of SHA-256("posture.v1.certificate" ‖ 0x00 ‖ serial ‖ 0x00
// ‖ SHA-256 of its SubjectPublicKeyInfo), the serial in lowercase hex
// without leading zeros (pki.CertTag). A certificate issued before the
// collector recorded keys is named by its serial alone until its device
// next calls the collector; CheckCertificate accepts both forms.
func CertificateTag(cert *x509.Certificate) uint64 {
	return pki.CertTag(pki.SerialHex(cert), pki.KeySHA256(cert))
}

// Synced reports whether the cache holds a full view and the watch is live.
func (c *Client) Synced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced && c.connected
}

// Revision is the last revision applied.
func (c *Client) Revision() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.revision
}
