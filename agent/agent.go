package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/posture-project/posture/internal/version"

	"github.com/google/go-tpm/tpm2/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent/spool"
	"github.com/posture-project/posture/internal/collectors"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Version is the agent version reported in every report.
var Version = version.Version()

// Measurer measures the device. Its report carries only the measured
// sections; the agent adds identity, sequence and chain.
type Measurer interface {
	Collect(ctx context.Context) *posturev1.PostureReport
}

// Config configures a running agent.
type Config struct {
	// StateDir holds keys, certificates, the chain head and the spool.
	StateDir string
	// Interval between measurements; each wait is jittered by ±10%.
	Interval time.Duration
	// Measurer measures the device.
	Measurer Measurer
	// SpoolMax bounds the spool; the oldest reports are dropped past it.
	SpoolMax int
	// MinBackoff and MaxBackoff bound the reconnect delay.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives the agent's structured log.
	Logger *slog.Logger
	// TPMDevice, when set, is the TPM of a TPM identity instead of the one
	// recorded at enrollment (tests hand in a simulator). The agent closes
	// it when Run returns.
	TPMDevice transport.TPMCloser
	// RenewRetry is the least time between two attempts to renew the
	// device certificate; a failed one is tried again after it. Zero
	// means 10 minutes.
	RenewRetry time.Duration
	// OnStanding, when set, is told what the collector's policy says of
	// the device with each acknowledged report (its failing checks), for
	// the device's user (agent/notify). It must return quickly.
	OnStanding func(*posturev1.DeviceStanding)
	// LocalSocket, when set, is the Unix socket on which the device's
	// users ask for browser certificates (posture-agent browser-cert).
	LocalSocket string
}

// Agent measures the device and streams signed reports to the collector.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	enr   enrollment
	id    deviceIdentity
	spool *spool.Spool
	conn  *grpc.ClientConn
	head  chainHead
	// streamLost is when the report stream was lost, until a new one is
	// welcomed (sendLoop's alone).
	streamLost time.Time
	// renewal renews the device certificate (renew.go).
	renewal *renewal
	// onAck, when set, is called after each acknowledged report.
	onAck func(seq uint64)
	// measureNow carries the collector's requests for a measurement now
	// (MeasureNow: the user pressed Check again) to measureLoop.
	measureNow chan struct{}
}

// New loads the agent's enrollment and opens its spool.
func New(cfg Config) (*Agent, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Measurer == nil {
		return nil, errors.New("agent needs a Measurer")
	}
	if err := ensureStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	enr, tlsCfg, err := loadEnrollment(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	id, _, err := openIdentity(cfg.StateDir, enr.Identity, enr.TPM, enr.EventLog, cfg.TPMDevice)
	if err != nil {
		return nil, fmt.Errorf("open %s identity: %w", enr.Identity, err)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, enr: enr, id: id, renewal: newRenewal(cfg.StateDir), measureNow: make(chan struct{}, 1)}
	if err := readJSON(filepath.Join(cfg.StateDir, chainFile), &a.head); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if a.spool, err = spool.Open(filepath.Join(cfg.StateDir, spoolDir), cfg.SpoolMax); err != nil {
		return nil, err
	}
	if n, err := migrateSpool(a.spool); err != nil {
		return nil, fmt.Errorf("convert reports spooled by an earlier version: %w", err)
	} else if n > 0 {
		a.log.Info("converted reports spooled by an earlier version", "reports", n)
	}
	a.conn, err = collectors.Dial(append([]string{enr.Collector}, enr.Collectors...),
		grpc.WithTransportCredentials(a.renewal.track(credentials.NewTLS(tlsCfg))),
		// Fixed windows: gRPC's adaptive ones would answer each
		// acknowledgement with a bandwidth probe the collector must handle.
		grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("collector address %q: %w", enr.Collector, err)
	}
	return a, nil
}

// DeviceID is the ID the collector assigned.
func (a *Agent) DeviceID() string { return a.enr.DeviceID }

// Run measures on the configured interval and streams reports until ctx is
// done. Measurements go to the spool first, so nothing is lost while the
// collector is unreachable. It refuses at once to run beside another agent
// on the same state directory.
func (a *Agent) Run(ctx context.Context) error {
	defer a.conn.Close()
	if c, ok := a.id.(io.Closer); ok {
		defer c.Close()
	}
	release, err := lockStateDir(a.cfg.StateDir)
	if err != nil {
		return err
	}
	defer release()
	go a.measureLoop(ctx)
	go a.renewLoop(ctx)
	if a.cfg.LocalSocket != "" {
		go func() {
			if err := a.serveLocal(ctx, a.cfg.LocalSocket); err != nil {
				a.log.Error("local socket: users get no browser certificate", "err", err)
			}
		}()
	}
	a.sendLoop(ctx)
	return nil
}

// Measure takes one measurement into the spool. A spool entry is the
// measured report, serialized as protobuf with only the measured sections
// set; what was signed from it is recorded in the chain head
// (chainHead.Sent).
func (a *Agent) Measure(ctx context.Context) error {
	r := a.cfg.Measurer.Collect(ctx)
	data, err := proto.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode measurement: %w", err)
	}
	if _, err := a.spool.Put(data); err != nil {
		return fmt.Errorf("spool measurement: %w", err)
	}
	return nil
}

func (a *Agent) measureLoop(ctx context.Context) {
	for {
		if err := a.Measure(ctx); err != nil {
			a.log.Error("measure", "err", err)
		}
		wait := jitter(a.cfg.Interval, 0.1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-a.measureNow:
			a.log.Info("the collector asks for a measurement now (Check again)")
		}
	}
}

// reconnectJitter spreads each reconnect delay by this fraction either
// way (see sendLoop).
const reconnectJitter = 0.5

// jitter spreads d by ±frac so a fleet does not report in lockstep.
func jitter(d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 + frac*(2*rand.Float64()-1)))
}

func (a *Agent) sendLoop(ctx context.Context) {
	backoff := a.cfg.MinBackoff
	for ctx.Err() == nil {
		a.reconnecting()
		sent, err := a.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if sent > 0 {
			backoff = a.cfg.MinBackoff
		}
		if status.Code(err) == codes.PermissionDenied {
			a.log.Error("collector refuses this device", "err", status.Convert(err).Message())
			backoff = a.cfg.MaxBackoff
		} else {
			a.log.Warn("report stream ended; reconnecting", "err", err, "in", backoff, "spooled", a.spool.Len())
		}
		if a.streamLost.IsZero() {
			a.streamLost = time.Now()
		}
		// A collector that restarts ends every agent's stream at the same
		// moment: ±50% spreads their reconnects, and the TLS handshakes
		// they cost the collector, over a whole backoff rather than a
		// fifth of one either side.
		wait := jitter(backoff, reconnectJitter)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, a.cfg.MaxBackoff)
	}
}

// retryAfterError is a refusal that says when to send again.
type retryAfterError struct {
	err   error
	after time.Duration
}

func (e retryAfterError) Error() string { return e.err.Error() }
func (e retryAfterError) Unwrap() error { return e.err }

// stream runs one report stream until it fails; it returns how many reports
// were acknowledged on it.
func (a *Agent) stream(ctx context.Context) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := posturev1.NewReportServiceClient(a.conn).StreamReports(ctx)
	if err != nil {
		return 0, err
	}
	msg, err := st.Recv()
	if err != nil {
		return 0, err
	}
	w := msg.GetWelcome()
	if w == nil {
		return 0, errors.New("collector did not open the stream with a Welcome")
	}
	if err := a.reconcile(w); err != nil {
		return 0, err
	}
	if !a.streamLost.IsZero() {
		a.log.Info("report stream back", "after", time.Since(a.streamLost).Round(time.Millisecond), "spooled", a.spool.Len())
		a.streamLost = time.Time{}
	}
	a.resendEventLog() // the collector may have lost it, or be another one
	if err := st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Hello{Hello: &posturev1.AgentHello{MeasureNow: true}}}); err != nil {
		return 0, err
	}
	in := a.receive(ctx, st)
	nonce := w.GetNonce()
	sent := 0
	for {
		e, ok, err := a.spool.Oldest()
		if err != nil {
			return sent, fmt.Errorf("read spool: %w", err)
		}
		if !ok {
			select {
			case <-ctx.Done():
				return sent, ctx.Err()
			case r := <-in:
				return sent, ended(r)
			case <-a.spool.Notify():
				continue
			}
		}
		next, acked, err := a.send(ctx, st, in, e, nonce)
		var ra retryAfterError
		if errors.As(err, &ra) && len(next) > 0 {
			// Held back by the device's report budget: the stream stays
			// open, and its next nonce is as good later. Waiting on it
			// spares a new stream for every report while the budget is
			// spent; sooner would be refused again, a little later
			// spreads the devices the collector held back.
			wait := ra.after + jitter(a.cfg.MinBackoff, 0.2)
			a.log.Info("collector holds reports back for now; sending again on this stream", "err", err, "in", wait, "spooled", a.spool.Len())
			select {
			case <-ctx.Done():
				return sent, ctx.Err()
			case r := <-in:
				return sent, ended(r)
			case <-time.After(wait):
			}
			nonce = next
			continue
		}
		if err != nil {
			return sent, err
		}
		nonce = next
		if acked {
			sent++
		}
	}
}

// received is one message the collector sent on a report stream, or the
// error that ended the stream.
type received struct {
	msg *posturev1.CollectorMessage
	err error
}

// receive is the one reader of a report stream: it reads until the stream
// ends, and hands on each message and then the error that ended it. So the
// agent hears at once that its stream ended (the collector restarted, or
// ended it for the device's revocation or a replaced certificate), also
// while it has nothing to send, rather than at its next report. A
// MeasureNow, which may come at any time, is not handed on: it asks
// measureLoop for a measurement (the user pressed Check again).
func (a *Agent) receive(ctx context.Context, st posturev1.ReportService_StreamReportsClient) <-chan received {
	ch := make(chan received, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err == nil && m.GetMeasureNow() != nil {
				select {
				case a.measureNow <- struct{}{}:
				default: // one is pending already
				}
				continue
			}
			select {
			case ch <- received{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// ended is why a stream on which no answer was awaited ended.
func ended(r received) error {
	if r.err != nil {
		return r.err
	}
	return fmt.Errorf("unexpected message from collector while no report was sent: %T", r.msg.GetMsg())
}

// reconcile settles a report signed before a reconnect: if the collector's
// head is exactly what was sent, the acknowledgement was lost and the
// report is done, whether or not its spool entry is still there.
func (a *Agent) reconcile(w *posturev1.Welcome) error {
	if s := a.head.Sent; s != nil && w.GetLastSeq() == s.Seq && bytes.Equal(w.GetLastDigest(), s.Digest) {
		return a.acked(s.Entry, s.Seq, s.Digest)
	}
	return a.resync(w)
}

// resync handles a collector whose chain head is behind this agent's: it
// lost acknowledged reports (a restored backup, a power loss). The agent
// continues from what the collector has. A collector ahead of the agent is
// left alone: that is a second holder of this identity, or rolled-back agent
// state, and the collector marks the device suspect when the next report
// does not continue its chain.
func (a *Agent) resync(w *posturev1.Welcome) error {
	if w.GetLastSeq() >= a.head.Seq {
		return nil
	}
	a.log.Warn("collector lost acknowledged reports; continuing from its chain head", "collector_seq", w.GetLastSeq(), "agent_seq", a.head.Seq)
	return a.saveHead(chainHead{Seq: w.GetLastSeq(), Digest: w.GetLastDigest(), AckedAt: a.head.AckedAt})
}

// saveHead records h durably, then adopts it: a failed write leaves the
// agent acting on what is on disk.
func (a *Agent) saveHead(h chainHead) error {
	if err := writeJSON(filepath.Join(a.cfg.StateDir, chainFile), h); err != nil {
		return fmt.Errorf("record chain head: %w", err)
	}
	a.head = h
	return nil
}

func (a *Agent) drop(id uint64, why error) error {
	a.log.Error("dropping spooled report", "id", id, "err", why)
	return a.spool.Remove(id)
}

// acked records that the collector stored report seq, made from spool
// entry id, and then removes the entry. The chain head is on disk, directory
// flushed, before the removal starts, so no crash or power loss leaves the
// measurement gone while the head still says it is unsent. The reverse,
// the entry back after its acknowledgement was recorded, costs a second
// copy of one measurement and nothing worse.
func (a *Agent) acked(id, seq uint64, digest []byte) error {
	if err := a.saveHead(chainHead{Seq: seq, Digest: digest, AckedAt: time.Now().UTC()}); err != nil {
		return err
	}
	if err := a.spool.Remove(id); err != nil {
		return err
	}
	if a.onAck != nil {
		a.onAck(seq)
	}
	return nil
}

// eventLogResender is an identity that sends the TPM event log only when
// the collector may lack it.
type eventLogResender interface{ ResendEventLog() }

// resendEventLog makes the next report carry the event log, if the
// identity has one.
func (a *Agent) resendEventLog() {
	if r, ok := a.id.(eventLogResender); ok {
		r.ResendEventLog()
	}
}

// send signs one spooled report with the current nonce, sends it on st and
// waits for the answer, which comes from in (receive). It returns the next
// nonce.
func (a *Agent) send(ctx context.Context, st posturev1.ReportService_StreamReportsClient, in <-chan received, e spool.Entry, nonce []byte) (next []byte, acked bool, err error) {
	var r posturev1.PostureReport
	if err := proto.Unmarshal(e.Data, &r); err != nil {
		return nonce, false, a.drop(e.ID, fmt.Errorf("decode spooled report: %w", err))
	}
	r.DeviceId = a.enr.DeviceID
	r.Seq = a.head.Seq + 1
	r.PrevDigest = a.head.Digest
	r.CreatedAt = timestamppb.Now()
	r.Agent = &posturev1.AgentInfo{Version: Version, Identity: a.id.Kind()}
	// The collector refuses a report over its limits; a long text loses
	// its tail instead.
	envelope.ClipReport(&r)
	body, err := proto.Marshal(&r)
	if err != nil {
		return nonce, false, err
	}
	if len(body) > envelope.MaxReportSize {
		return nonce, false, a.drop(e.ID, fmt.Errorf("report is %d bytes, more than the %d a collector accepts", len(body), envelope.MaxReportSize))
	}
	sr, err := a.id.Seal(nonce, body)
	if err != nil {
		return nonce, false, err
	}
	// Record what is about to be sent, durably, before sending it: if the
	// acknowledgement is lost, the next Welcome tells whether it arrived,
	// and only this record lets the agent recognise it there.
	sent := &sentReport{Entry: e.ID, Seq: r.Seq, Digest: envelope.Digest(sr.GetNonce(), sr.GetReport())}
	if err := a.saveHead(chainHead{Seq: a.head.Seq, Digest: a.head.Digest, Sent: sent, AckedAt: a.head.AckedAt}); err != nil {
		return nonce, false, err
	}
	if err := st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: sr}}); err != nil && err != io.EOF {
		return nonce, false, err
	}
	// After io.EOF from Send the stream's end is read from in, with its
	// status.
	var answer received
	select {
	case answer = <-in:
	case <-ctx.Done():
		return nonce, false, ctx.Err()
	}
	if answer.err != nil {
		return nonce, false, answer.err
	}
	resp := answer.msg
	switch m := resp.GetMsg().(type) {
	case *posturev1.CollectorMessage_Ack:
		if m.Ack.GetSeq() != sent.Seq || !bytes.Equal(m.Ack.GetDigest(), sent.Digest) {
			return nonce, false, fmt.Errorf("collector acknowledged seq %d, but seq %d was sent", m.Ack.GetSeq(), sent.Seq)
		}
		if m.Ack.GetWantEventLog() {
			a.resendEventLog()
		}
		if d := m.Ack.GetDecision(); d != nil {
			a.saveDecision(d)
		}
		if st := m.Ack.GetStanding(); st != nil && a.cfg.OnStanding != nil {
			a.cfg.OnStanding(st)
		}
		return m.Ack.GetNextNonce(), true, a.acked(e.ID, sent.Seq, sent.Digest)
	case *posturev1.CollectorMessage_Rejected:
		rej := m.Rejected
		a.resendEventLog() // nothing of the report was stored, its log neither
		reason := rejectReasonName(rej.GetReason())
		if retryable(rej.GetReason()) {
			// Sent again with a fresh nonce and timestamp: on this stream
			// when the collector said when it would take it (retry_after),
			// else on a new one after the reconnect backoff.
			err := fmt.Errorf("collector refused report %d for now (%s: %s); it stays spooled and is sent again", sent.Seq, reason, rej.GetMessage())
			if d := rej.GetRetryAfter(); d.IsValid() && d.AsDuration() > 0 {
				err = retryAfterError{err: err, after: d.AsDuration()}
			}
			return rej.GetNextNonce(), false, err
		}
		a.log.Error("collector rejected report; dropping its measurement, which would be refused again", "seq", sent.Seq, "reason", reason, "message", rej.GetMessage())
		return rej.GetNextNonce(), false, a.spool.Remove(e.ID)
	}
	return nonce, false, fmt.Errorf("unexpected message from collector: %T", resp.GetMsg())
}
