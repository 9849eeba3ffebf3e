// Package ingest receives a device's posture reports on its report
// stream: it verifies each against the device's enrolled identity, checks
// freshness and the report chain, stores it, applies it, and answers.
package ingest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/fault"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/stats"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Store is what ingestion writes.
type Store interface {
	OpenReportStream(ctx context.Context, deviceID string) (store.StreamHead, error)
	AppendReport(ctx context.Context, r store.Report) (store.Event, error)
	SetDeviceState(ctx context.Context, id string, state int32, reason string, now time.Time) (store.Event, error)
}

// Applier applies what the store committed (feed.Feed).
type Applier interface {
	Apply(ev store.Event, pre *fleet.Assessed)
}

// Config configures an Ingester.
type Config struct {
	Store  Store
	Fleet  *fleet.Fleet
	Feed   Applier
	Stats  *stats.Stats
	Logger *slog.Logger
	// Verified, when set, is told how long each proof took to verify.
	Verified func(time.Duration)
	// MaxClockSkew is how far a report's created_at may be from the
	// collector's clock.
	MaxClockSkew time.Duration
	// MaxOpening is how many report streams may be opening at once, from
	// registration until their welcome is sent; the others wait their
	// turn. Zero means 2 per CPU the process may use (GOMAXPROCS).
	MaxOpening int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Ingester serves report streams.
type Ingester struct {
	cfg      Config
	failures storeFailures
	// opening holds a token per report stream opening (MaxOpening). When
	// a collector restarts, every agent opens its stream within a second
	// or so; each opening wakes several goroutines (the handler, the
	// store's writer, the connection's writer), and a thousand of them
	// runnable at once queue a gateway's CheckAccess behind them for a
	// tenth of a second or more, though the work is small. Openings
	// waiting for a token are parked, not runnable.
	opening chan struct{}
}

// New makes an Ingester.
func New(cfg Config) *Ingester {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Verified == nil {
		cfg.Verified = func(time.Duration) {}
	}
	if cfg.MaxOpening <= 0 {
		cfg.MaxOpening = 2 * runtime.GOMAXPROCS(0)
	}
	return &Ingester{cfg: cfg, opening: make(chan struct{}, cfg.MaxOpening)}
}

// maxOpeningHold is the longest a report stream opening holds its place
// among the MaxOpening.
const maxOpeningHold = time.Second

// ErrSuperseded ends a device's report stream when the device opened a
// newer one, on this collector or another: only the newest stream may
// store reports, so that a report held back on an old connection (by a
// network in between) cannot arrive after the agent has moved on and look
// like a fork of its chain.
var ErrSuperseded = &fault.Error{Kind: fault.Aborted, Msg: "a newer report stream of this device replaced this one", Err: store.ErrSuperseded}

// Stream is a report stream as the ingester uses it.
type Stream interface {
	Context() context.Context
	Send(*posturev1.CollectorMessage) error
	Recv() (*posturev1.AgentMessage, error)
}

// rejection is a refused report: the reason it is counted under and a
// message for the agent's log.
type rejection struct {
	reason     posturev1.RejectReason
	msg        string
	retryAfter time.Duration // for rate_limited: when the budget has room
	end        error         // set: the stream ends with it instead of an answer
}

func reject(reason posturev1.RejectReason, format string, args ...any) *rejection {
	return &rejection{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// ReasonName is the counter name of a reject reason ("bad_signature").
func ReasonName(r posturev1.RejectReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REJECT_REASON_"))
}

func newNonce() []byte {
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return n
}

// maxDeviceID bounds an unverified device ID repeated in a message.
const maxDeviceID = 128

// Serve runs one report stream of device id until the agent ends it, it
// breaks, or it is ended (superseded, the device revoked, or current
// refusing the certificate it was opened with: current is called before
// each report). It returns why it ended.
func (in *Ingester) Serve(stream Stream, id string, current func() error) error {
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	select {
	case in.opening <- struct{}{}:
	case <-ctx.Done():
		return streamEnd(ctx)
	}
	opened := sync.OnceFunc(func() { <-in.opening })
	defer opened()
	// An opening that takes long (a slow database) lets the next start
	// all the same: the bound is for bursts, not a queue.
	defer time.AfterFunc(maxOpeningHold, opened).Stop()
	rs := &fleet.Stream{Cancel: cancel, Measure: make(chan struct{}, 1)}
	f := in.cfg.Fleet
	for _, old := range f.AddStream(id, rs) {
		old.Cancel(ErrSuperseded)
		// Let a report it is storing finish, so the welcome's head
		// includes it; a cancelled stream takes no new report.
		old.Busy.Lock()
		//lint:ignore SA2001 the lock is taken only to wait for its holder
		old.Busy.Unlock()
	}
	defer f.RemoveStream(id, rs)
	// A revocation between authorization and registration must still end
	// this stream.
	if err := f.CheckActive(id); err != nil {
		return fault.Wrap(fault.Denied, "", err, "report stream refused")
	}
	// The stream's number and head come from the database: another
	// collector may have stored the device's last report, and only this
	// stream may store the next, wherever the agent sends it.
	h, err := in.cfg.Store.OpenReportStream(ctx, id)
	switch {
	case errors.Is(err, store.ErrDeviceRevoked):
		return fault.Wrap(fault.Denied, "", err, fmt.Sprintf("device %s is revoked", id))
	case errors.Is(err, store.ErrNotFound):
		return fault.Wrap(fault.Denied, "", fleet.ErrUnknownDevice, fmt.Sprintf("device %s", id))
	case err != nil:
		if ctx.Err() != nil {
			return streamEnd(ctx)
		}
		// Opening a stream writes (its number): a database that cannot be
		// written refuses the stream before any report.
		in.cfg.Stats.StreamRefused("storage")
		in.failures.fail(in.cfg.Logger, in.cfg.Now(), "open report stream", err)
		return fault.Wrap(fault.Unavailable, "storage", err, "the collector cannot write its database; reports stay spooled: reconnect later")
	}
	in.failures.ok(in.cfg.Logger, in.cfg.Now())
	s := &session{in: in, ctx: ctx, cancel: cancel, id: id, stream: h.Stream, seq: h.LastSeq, digest: h.LastDigest, hasHead: h.LastDigest != nil}
	nonce := newNonce()
	if err := stream.Send(&posturev1.CollectorMessage{Msg: &posturev1.CollectorMessage_Welcome{Welcome: &posturev1.Welcome{
		LastSeq: h.LastSeq, LastDigest: h.LastDigest, Nonce: nonce,
	}}}); err != nil {
		return err
	}
	opened()

	// Reports are read and answered on a goroutine of their own, so that
	// Serve can end the stream the moment it is superseded or revoked: a
	// gRPC stream ends only when its handler returns, and a Recv waiting
	// for the agent notices nothing else. Reading and answering on the
	// same goroutine spares a hand-off per report.
	var sending sync.Mutex // held while the reader sends on the stream
	done := make(chan error, 1)
	go func() { done <- s.serve(stream, rs, &sending, nonce, current) }()
	// Requests for a measurement now (Check again) go out as they come,
	// between reports and their answers alike; the agent said it reads
	// them (AgentHello) before any is forwarded.
	asking := make(chan struct{})
	go func() {
		defer close(asking)
		s.forwardMeasure(stream, rs, &sending)
	}()
	defer func() { cancel(nil); <-asking }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// Let a report being answered finish, and its acknowledgement be
		// sent: a stream must not be sent on once its handler returned.
		// The reader checks ctx under each lock, so it neither answers
		// nor sends after this.
		rs.Busy.Lock()
		rs.Busy.Unlock()
		sending.Lock()
		sending.Unlock()
		return streamEnd(ctx)
	}
}

// session is one stream's state. Only the newest stream of a device
// stores its reports, so the chain head the stream opened with, moved by
// what it stored, is the device's: its checks need nothing from the fleet,
// which may lag a change another collector made.
type session struct {
	in      *Ingester
	ctx     context.Context
	cancel  context.CancelCauseFunc // ends the stream, saying why
	id      string
	stream  uint64
	seq     uint64
	digest  []byte
	hasHead bool
	key     streamKey
	// decided is when an acknowledgement on this stream last carried the
	// device's decision.
	decided time.Time
}

// decisionEvery is how often at most an acknowledgement carries the
// device's decision, which costs a policy evaluation: a backlog of
// reports sent at once gets it once.
const decisionEvery = time.Minute

// serve reads the reports of one stream and answers each, until the agent
// ends the stream, the stream breaks, or ctx ends. nonce is the one the
// welcome carried. It sends while holding sending, and not once ctx ended.
func (s *session) serve(stream Stream, rs *fleet.Stream, sending *sync.Mutex, nonce []byte, current func() error) error {
	ctx := s.ctx
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if h := m.GetHello(); h != nil {
			rs.AcceptsMeasure.Store(h.GetMeasureNow())
			continue
		}
		sr := m.GetReport()
		if sr == nil {
			continue // a newer agent's message this collector does not know
		}
		// Renewed, enrolled again or expired since the stream opened: the
		// report stays with the agent, for its next stream.
		if err := current(); err != nil {
			return err
		}
		next := newNonce()
		rs.Busy.Lock()
		if ctx.Err() != nil { // superseded or revoked while the report arrived
			rs.Busy.Unlock()
			return streamEnd(ctx)
		}
		out, err := s.answer(sr, nonce, next)
		rs.Busy.Unlock()
		if err != nil {
			return err
		}
		// Sent outside Busy: an agent that stops reading holds up its
		// own stream, not a newer stream of the device waiting on Busy.
		sending.Lock()
		if ctx.Err() != nil {
			sending.Unlock()
			return streamEnd(ctx) // stored; the next stream's welcome says so
		}
		err = stream.Send(out)
		sending.Unlock()
		if err != nil {
			return err
		}
		nonce = next
	}
}

// forwardMeasure sends a MeasureNow for each request rs.Measure carries,
// until the stream's context ends. It sends while holding sending, and
// not once the context ended.
func (s *session) forwardMeasure(stream Stream, rs *fleet.Stream, sending *sync.Mutex) {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-rs.Measure:
		}
		sending.Lock()
		if s.ctx.Err() != nil {
			sending.Unlock()
			return
		}
		err := stream.Send(&posturev1.CollectorMessage{Msg: &posturev1.CollectorMessage_MeasureNow{MeasureNow: &posturev1.MeasureNow{}}})
		sending.Unlock()
		if err != nil {
			s.cancel(err)
			return
		}
		s.in.cfg.Logger.Info("asked the agent to measure now", "device", s.id)
	}
}

// answer checks and stores one report, which answers nonce, and counts the
// outcome. It returns the acknowledgement or rejection to send, which
// carries next, or an error that ends the stream.
func (s *session) answer(sr *posturev1.SignedReport, nonce, next []byte) (*posturev1.CollectorMessage, error) {
	in := s.in
	ack, wantLog, rej := s.ingest(sr, nonce)
	switch {
	case rej != nil && rej.end != nil:
		return nil, rej.end
	case rej != nil:
		in.cfg.Stats.Rejected(ReasonName(rej.reason))
		switch rej.reason {
		case posturev1.RejectReason_REJECT_REASON_RATE_LIMITED, posturev1.RejectReason_REJECT_REASON_STORAGE:
			// Cheap to send and to refuse: a flooding device would fill the
			// log instead; and a database that cannot be written refuses
			// every device's reports, which storeFailures logs once. Counted
			// like the rest.
			in.cfg.Logger.Debug("report rejected", "device", s.id, "reason", ReasonName(rej.reason), "detail", rej.msg)
		default:
			in.cfg.Logger.Warn("report rejected", "device", s.id, "reason", ReasonName(rej.reason), "detail", rej.msg)
		}
		if errors.Is(context.Cause(s.ctx), fleet.ErrRevoked) {
			return nil, streamEnd(s.ctx)
		}
		out := &posturev1.ReportRejected{Seq: envelope.ClaimedSeq(sr), Reason: rej.reason, Message: rej.msg, NextNonce: next}
		if rej.retryAfter > 0 {
			out.RetryAfter = durationpb.New(rej.retryAfter)
		}
		return &posturev1.CollectorMessage{Msg: &posturev1.CollectorMessage_Rejected{Rejected: out}}, nil
	}
	in.cfg.Stats.Accepted()
	out := &posturev1.ReportAck{Seq: ack.Seq, Digest: ack.Digest, NextNonce: next, WantEventLog: wantLog, Standing: s.standing()}
	if now := in.cfg.Now(); s.decided.IsZero() || now.Sub(s.decided) >= decisionEvery {
		out.Decision = in.decision(s.id, now)
		s.decided = now
	}
	return &posturev1.CollectorMessage{Msg: &posturev1.CollectorMessage_Ack{Ack: out}}, nil
}

// decision is the device's decision as the fleet has it, nil when the
// fleet does not know the device.
func (in *Ingester) decision(id string, now time.Time) *posturev1.AgentDecision {
	subj, pol, ok := in.cfg.Fleet.Judged(id)
	if !ok || pol == nil {
		return nil
	}
	checks, levels, score := pol.Explain(&subj, now)
	d := &posturev1.AgentDecision{DecidedAt: timestamppb.New(now), Score: score, Levels: levels}
	for _, c := range checks {
		if c.GetOutcome() == posturev1.Outcome_OUTCOME_FAIL || c.GetOutcome() == posturev1.Outcome_OUTCOME_UNKNOWN {
			d.Failing = append(d.Failing, c)
		}
	}
	return d
}

// standing is what the policy says of the device now that its report is
// applied, for the agent to tell the device's user: the failing checks,
// each with since when and when its grace ends, and how often to say so.
func (s *session) standing() *posturev1.DeviceStanding {
	subj, pol, ok := s.in.cfg.Fleet.Judged(s.id)
	if !ok {
		return nil
	}
	now := s.in.cfg.Now()
	out := &posturev1.DeviceStanding{NotifyEvery: durationpb.New(pol.NotifyEvery()), NotifyBeforeBlock: durationpb.New(pol.NotifyBeforeBlock())}
	for _, f := range subj.Failures() {
		c := &posturev1.CheckResult{Name: f.Check, Outcome: f.Outcome, Reason: f.Reason, Remediation: f.Remediation, FailingSince: timestamppb.New(f.Since)}
		if !f.BlocksAt.IsZero() {
			c.BlocksAt, c.InGrace = timestamppb.New(f.BlocksAt), now.Before(f.BlocksAt)
		}
		out.Failing = append(out.Failing, c)
	}
	return out
}

// streamEnd is why a stream whose context ended ended.
func streamEnd(ctx context.Context) error {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, fleet.ErrRevoked):
		return fault.Wrap(fault.Denied, "", cause, "report stream ended")
	case cause == nil || cause == context.Canceled || cause == context.DeadlineExceeded:
		return ctx.Err()
	}
	return cause
}

// ingest verifies one report and stores it. Checks run cheapest first;
// nothing is stored unless every one passes. wantLog asks the agent for
// its event log: the report's quote came without one, and the collector
// has replayed none for its PCR values.
func (s *session) ingest(sr *posturev1.SignedReport, nonce []byte) (_ *store.Report, wantLog bool, _ *rejection) {
	in, id, f := s.in, s.id, s.in.cfg.Fleet
	key, tpm, ok := f.Identity(id)
	if !ok {
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_DEVICE_MISMATCH, "device %s is not enrolled", id)
	}
	// Before anything else, the signature checks above all: a device
	// sending more than its budget is refused for now, whatever it sends.
	// What is stored with a report counts one more report per 64 KiB (a
	// real report is 0.5–2 KB, a TPM event log 15–40 KB): a device cannot
	// store a megabyte with every report. No report costs more than the
	// whole burst, so that every one is accepted in time.
	budget := f.Budget()
	cost := min(1+uint32((len(sr.GetReport())+len(sr.GetTpm().GetEventLog()))>>16), budget.Burst)
	if ok, wait := f.SpendReport(id, in.cfg.Now(), cost); !ok {
		r := reject(posturev1.RejectReason_REJECT_REASON_RATE_LIMITED, "device %s sent more reports than its budget (%d at once, then one every %ds); the next is accepted in %ds",
			id, budget.Burst, budget.Interval, wait)
		r.retryAfter = time.Duration(wait) * time.Second
		return nil, false, r
	}
	switch {
	case len(sr.GetNonce()) == 0:
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_MALFORMED, "report carries no nonce")
	case subtle.ConstantTimeCompare(sr.GetNonce(), nonce) != 1:
		// A genuine report that is already stored is a replay; anything else
		// simply answers a nonce this stream does not have outstanding.
		if v, _, err := s.key.verify(key, tpm, sr); err == nil && s.hasHead && v.Report.GetSeq() <= s.seq {
			return nil, false, reject(posturev1.RejectReason_REJECT_REASON_REPLAY, "report %d was already stored: replayed report", v.Report.GetSeq())
		}
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_UNKNOWN_NONCE, "nonce is not the one outstanding on this stream (each nonce is valid once, on the stream that issued it)")
	}
	start := time.Now()
	v, quote, err := s.key.verify(key, tpm, sr)
	in.cfg.Verified(time.Since(start))
	switch {
	case errors.Is(err, envelope.ErrMalformed):
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_MALFORMED, "%v", err)
	case errors.Is(err, attest.ErrQuoteMalformed):
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_BAD_QUOTE, "%v", err)
	case errors.Is(err, attest.ErrQualifyingData):
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_QUOTE_NOT_FOR_REPORT, "%v: the quote was made for another nonce, or the report changed after quoting", err)
	case errors.Is(err, attest.ErrPCRMismatch):
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_PCR_MISMATCH, "%v", err)
	case err != nil:
		if claimed := envelope.ClaimedDevice(sr); claimed != "" && claimed != id {
			if len(claimed) > maxDeviceID {
				claimed = claimed[:maxDeviceID] + "…" // unverified: keep it out of logs at length
			}
			return nil, false, reject(posturev1.RejectReason_REJECT_REASON_DEVICE_MISMATCH, "report claims device %q but the stream belongs to device %s", claimed, id)
		}
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_BAD_SIGNATURE, "%v", err)
	}
	r := v.Report
	if r.GetDeviceId() != id {
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_DEVICE_MISMATCH, "report names device %s but the stream belongs to device %s", r.GetDeviceId(), id)
	}
	now := in.cfg.Now()
	if created := r.GetCreatedAt().AsTime(); !r.GetCreatedAt().IsValid() || created.Sub(now).Abs() > in.cfg.MaxClockSkew {
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_CLOCK_SKEW, "report created at %s, collector time %s: more than %s apart; fix the device clock (NTP)", created.UTC().Format("15:04:05Z07:00"), now.UTC().Format("15:04:05Z07:00"), in.cfg.MaxClockSkew)
	}
	if revoked, _ := f.Revoked(id); revoked {
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_REVOKED, "device %s is revoked", id)
	}
	switch {
	case s.hasHead && r.GetSeq() <= s.seq, !s.hasHead && r.GetSeq() == 0:
		// Signed now, for this stream, yet reusing a stored sequence number:
		// the key is in two places or the agent's state was rolled back.
		return nil, false, s.suspect(fmt.Sprintf("report chain forked: a new report reuses sequence number %d (latest stored is %d); the identity key is used by two agents, or the agent's state was rolled back", r.GetSeq(), s.seq))
	case r.GetSeq() > s.seq+1:
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_SEQUENCE_GAP, "sequence number %d skips ahead of the latest stored %d", r.GetSeq(), s.seq)
	case !bytes.Equal(r.GetPrevDigest(), s.digest):
		return nil, false, s.suspect(fmt.Sprintf("report chain broken at seq %d: prev_digest does not match the stored report %d (cloned identity or tampered agent state)", r.GetSeq(), s.seq))
	}
	rec := store.Report{DeviceID: id, Seq: r.GetSeq(), Digest: v.Digest, Nonce: v.Nonce, Body: v.Body, Proof: v.Proof, ReceivedAt: now,
		PrevDigest: r.GetPrevDigest(), Stream: s.stream}
	boot := fleet.NoQuote()
	if quote != nil {
		clock := store.TPMClock{Clock: quote.Clock.Clock, ResetCount: quote.Clock.ResetCount, RestartCount: quote.Clock.RestartCount}
		// No previous quote: the first report, or the first since the
		// device enrolled again with a new key (its clock starts afresh).
		prev := f.TPMClock(id)
		reboot, why := tpmClockCheck(prev, clock, !s.hasHead || prev == (store.TPMClock{}))
		if why != "" {
			s.suspect(why)
			return nil, false, reject(posturev1.RejectReason_REJECT_REASON_TPM_CLOCK, "%s", why)
		}
		rec.TPM, rec.Reboot = &clock, reboot
		boot, wantLog = f.BootState(id).QuoteBoot(sr.GetTpm(), quote.PCRs)
		if len(sr.GetTpm().GetEventLog()) > 0 && boot.Replayed() {
			// The device keeps this reading until its next log, for the
			// quotes that come without one.
			if rec.MeasuredBoot, err = fleet.EncodeReading(boot); err != nil {
				in.cfg.Logger.Error("store report", "device", id, "seq", rec.Seq, "err", err)
				return nil, false, reject(posturev1.RejectReason_REJECT_REASON_STORAGE, "collector could not store the report; it will be accepted when sent again")
			}
		}
	}
	ev, err := in.cfg.Store.AppendReport(s.ctx, rec)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrSuperseded):
		// A newer stream of the device opened on another collector (or on
		// this one, an instant ago): this one ends, and the agent sends
		// the report again on its newest.
		s.cancel(ErrSuperseded)
		return nil, false, &rejection{end: ErrSuperseded}
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrChainBroken):
		return nil, false, s.suspect(fmt.Sprintf("report %d does not continue the chain as stored (%v): the identity is used by two agents", rec.Seq, err))
	case errors.Is(err, store.ErrSequenceGap):
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_SEQUENCE_GAP, "sequence number %d skips ahead of the chain as stored", rec.Seq)
	case errors.Is(err, store.ErrDeviceRevoked):
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_REVOKED, "device %s is revoked", id)
	case s.ctx.Err() != nil && errors.Is(err, s.ctx.Err()):
		// The stream ended while the report waited for the writer: a
		// newer stream of the device replaced it (a reconnect), the agent
		// went away, or the collector is stopping. The writer skips an
		// operation whose context ended, so nothing is stored, and the
		// agent sends the report again on its next stream. The store did
		// not fail.
		return nil, false, &rejection{end: streamEnd(s.ctx)}
	default:
		in.failures.fail(in.cfg.Logger, now, "store report", err)
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_STORAGE, "collector could not store the report; it will be accepted when sent again")
	}
	in.failures.ok(in.cfg.Logger, now)
	s.seq, s.digest, s.hasHead = rec.Seq, rec.Digest, true
	in.cfg.Feed.Apply(ev, &fleet.Assessed{Report: r, Boot: boot})
	return &rec, wantLog, nil
}

// suspect marks a device whose report chain broke and returns the rejection.
func (s *session) suspect(reason string) *rejection {
	in := s.in
	// Not the stream's: a stream ended (by the client, or by a newer stream
	// of the same identity) must not stop the device being marked.
	ctx := context.WithoutCancel(s.ctx)
	ev, err := in.cfg.Store.SetDeviceState(ctx, s.id, int32(posturev1.DeviceState_DEVICE_STATE_SUSPECT), reason, in.cfg.Now())
	switch {
	case err == nil:
		in.cfg.Feed.Apply(ev, nil)
		in.cfg.Logger.Warn("device marked suspect", "device", s.id, "reason", reason)
	case !errors.Is(err, store.ErrDeviceRevoked):
		in.cfg.Logger.Error("mark device suspect", "device", s.id, "err", err)
	}
	return reject(posturev1.RejectReason_REJECT_REASON_CHAIN_BROKEN, "%s", reason)
}

// tpmClockCheck compares a quote's clock info with the previous quote's. A
// reset count that grows is a reboot. Counters that go backwards, or a
// clock that runs backwards within one boot, mean the quote does not come
// from the TPM state the collector last saw: a replayed quote or a cloned
// TPM. first is true when there is no previous quote to compare with.
//
// A TPM obfuscates the counters in quotes by keys outside the endorsement
// and platform hierarchies by adding a constant that depends on the key and
// the TPM's secret hierarchy proof, so they are compared by their
// difference modulo 2^32: on the same TPM the step is preserved. A step
// backwards, or one larger than any number of reboots between two reports
// (another TPM state entirely), is suspect.
func tpmClockCheck(prev, cur store.TPMClock, first bool) (reboot bool, suspect string) {
	const maxStep = 1 << 16
	resetStep := int64(int32(cur.ResetCount - prev.ResetCount))
	restartStep := int64(int32(cur.RestartCount - prev.RestartCount))
	switch {
	case first:
		return false, ""
	case resetStep < 0 || resetStep > maxStep:
		return false, fmt.Sprintf("TPM reset count moved by %d since the last quote: not the TPM state last seen (replayed quote or cloned TPM)", resetStep)
	case resetStep > 0:
		return true, ""
	case restartStep < 0 || restartStep > maxStep:
		return false, fmt.Sprintf("TPM restart count moved by %d since the last quote: not the TPM state last seen (replayed quote or cloned TPM)", restartStep)
	case restartStep == 0 && cur.Clock < prev.Clock:
		return false, fmt.Sprintf("TPM clock ran backwards from %d ms to %d ms within one boot (replayed quote or cloned TPM)", prev.Clock, cur.Clock)
	}
	return false, ""
}

// streamKey is a device's identity key as one report stream uses it:
// parsed once for the stream, not once per report, and not kept for
// devices that are not connected.
type streamKey struct {
	der []byte
	key *ecdsa.PublicKey // software identity
	ak  *attest.AK       // TPM identity
}

// load parses the device's enrolled identity key, unless k holds it
// already.
func (k *streamKey) load(der []byte, tpm bool) error {
	if (k.key != nil || k.ak != nil) && bytes.Equal(k.der, der) {
		return nil
	}
	// First use, or the device enrolled again.
	*k = streamKey{der: der}
	var err error
	if tpm {
		k.ak, err = attest.ParseAK(der)
	} else {
		k.key, err = ParseP256(der)
	}
	if err != nil {
		*k = streamKey{}
		return fmt.Errorf("the enrolled identity key cannot be parsed: %w", err)
	}
	return nil
}

// verify checks a report's proof with the device's enrolled identity.
// quote is set for TPM identities.
func (k *streamKey) verify(der []byte, tpm bool, sr *posturev1.SignedReport) (*envelope.Verified, *attest.QuoteResult, error) {
	if err := k.load(der, tpm); err != nil {
		return nil, nil, err
	}
	if k.ak != nil {
		return envelope.VerifyTPM(k.ak, sr)
	}
	v, err := envelope.VerifySoftware(k.key, sr)
	return v, nil, err
}

// ParseP256 parses an ECDSA P-256 public key in PKIX DER form.
func ParseP256(der []byte) (*ecdsa.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("not a PKIX public key: %w", err)
	}
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("want an ECDSA P-256 key, got %T", pub)
	}
	return k, nil
}
