package collector

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/attest"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

var (
	errShuttingDown = status.Error(codes.Unavailable, "collector is shutting down; reconnect later")
	errRevoked      = errors.New("device revoked")
)

type reportService struct {
	posturev1.UnimplementedReportServiceServer
	c *Collector
}

// reportStream is one open StreamReports call.
type reportStream struct {
	cancel context.CancelCauseFunc
	// busy is held while a report of this stream is checked and stored,
	// so that a newer stream of the device can wait for it to finish.
	busy sync.Mutex
}

// errSuperseded ends a device's report stream when the device opens a
// newer one: only the newest stream may store reports, so that a report
// held back on an old connection (by a network in between) cannot arrive
// after the agent has moved on and look like a fork of its chain.
var errSuperseded = status.Error(codes.Aborted, "a newer report stream of this device replaced this one")

// rejection is a refused report: the reason it is counted under and a
// message for the agent's log.
type rejection struct {
	reason     posturev1.RejectReason
	msg        string
	retryAfter time.Duration // for rate_limited: when the budget has room
}

// rejStreamEnded is what ingest returns for a report whose stream ended
// before the report was stored: not a rejection, neither counted nor
// answered, for the stream is gone.
var rejStreamEnded = &rejection{reason: posturev1.RejectReason_REJECT_REASON_STORAGE, msg: "the report stream ended before the report was stored"}

func reject(reason posturev1.RejectReason, format string, args ...any) *rejection {
	return &rejection{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// reasonName is the counter name of a reject reason ("bad_signature").
func reasonName(r posturev1.RejectReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REJECT_REASON_"))
}

func newNonce() []byte {
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return n
}

func (s *reportService) StreamReports(stream posturev1.ReportService_StreamReportsServer) error {
	c := s.c
	who := callerFrom(stream.Context())
	id := who.name
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	rs := &reportStream{cancel: cancel}
	for _, old := range c.fleet.addStream(id, rs) {
		old.cancel(errSuperseded)
		// Let a report it is storing finish, so the welcome's head
		// includes it; a cancelled stream takes no new report.
		old.busy.Lock()
		//lint:ignore SA2001 the lock is taken only to wait for its holder
		old.busy.Unlock()
	}
	defer c.fleet.removeStream(id, rs)
	// A revocation between authorization and registration must still close
	// this stream.
	if err := c.fleet.checkActive(id); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}

	seq, digest, _ := c.fleet.head(id)
	nonce := newNonce()
	if err := stream.Send(&posturev1.CollectorMessage{Msg: &posturev1.CollectorMessage_Welcome{Welcome: &posturev1.Welcome{
		LastSeq: seq, LastDigest: digest, Nonce: nonce,
	}}}); err != nil {
		return err
	}

	// Reports are read and answered on a goroutine of their own, so that
	// this handler can end the stream the moment it is superseded or
	// revoked: gRPC ends a stream only when its handler returns, and a
	// Recv waiting for the agent notices nothing else. Reading and
	// answering on the same goroutine spares a hand-off per report.
	var sending sync.Mutex // held while the reader sends on the stream
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, stream, who, rs, &sending, nonce) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// Let a report being answered finish, and its acknowledgement be
		// sent: a stream must not be sent on once its handler returned.
		// The reader checks ctx under each lock, so it neither answers
		// nor sends after this.
		rs.busy.Lock()
		rs.busy.Unlock()
		sending.Lock()
		sending.Unlock()
		return streamEndError(ctx)
	}
}

// serve reads the reports of one stream and answers each, until the agent
// ends the stream, the stream breaks, or ctx ends. nonce is the one the
// welcome carried. It sends while holding sending, and not once ctx ended.
func (s *reportService) serve(ctx context.Context, stream posturev1.ReportService_StreamReportsServer, who caller, rs *reportStream, sending *sync.Mutex, nonce []byte) error {
	c := s.c
	id := who.name
	var key streamKey
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		sr := m.GetReport()
		if sr == nil {
			continue // a newer agent's message this collector does not know
		}
		// Renewed, enrolled again or expired since the stream opened: the
		// report stays with the agent, for its next stream.
		if err := c.streamCertCurrent(who); err != nil {
			return err
		}
		next := newNonce()
		rs.busy.Lock()
		if ctx.Err() != nil { // superseded or revoked while the report arrived
			rs.busy.Unlock()
			return streamEndError(ctx)
		}
		out, err := s.answer(ctx, id, &key, sr, nonce, next)
		rs.busy.Unlock()
		if err != nil {
			return err
		}
		// Sent outside busy: an agent that stops reading holds up its
		// own stream, not a newer stream of the device waiting on busy.
		sending.Lock()
		if ctx.Err() != nil {
			sending.Unlock()
			return streamEndError(ctx) // stored; the next stream's welcome says so
		}
		err = stream.Send(out)
		sending.Unlock()
		if err != nil {
			return err
		}
		nonce = next
	}
}

// answer checks and stores one report of device id, which answers nonce,
// and counts the outcome. It returns the acknowledgement or rejection to
// send, which carries next, or an error that ends the stream.
func (s *reportService) answer(ctx context.Context, id string, key *streamKey, sr *posturev1.SignedReport, nonce, next []byte) (*posturev1.CollectorMessage, error) {
	c := s.c
	ack, wantLog, rej := s.ingest(ctx, id, key, sr, nonce)
	switch {
	case rej == rejStreamEnded:
		return nil, streamEndError(ctx)
	case rej != nil:
		c.stats.rejected(reasonName(rej.reason))
		if rej.reason == posturev1.RejectReason_REJECT_REASON_RATE_LIMITED {
			// Cheap to send and to refuse: a flooding device would fill the
			// log instead. Counted like the rest.
			c.log.Debug("report rejected", "device", id, "reason", reasonName(rej.reason), "detail", rej.msg)
		} else {
			c.log.Warn("report rejected", "device", id, "reason", reasonName(rej.reason), "detail", rej.msg)
		}
		if errors.Is(context.Cause(ctx), errRevoked) {
			return nil, streamEndError(ctx)
		}
		out := &posturev1.ReportRejected{Seq: envelope.ClaimedSeq(sr), Reason: rej.reason, Message: rej.msg, NextNonce: next}
		if rej.retryAfter > 0 {
			out.RetryAfter = durationpb.New(rej.retryAfter)
		}
		return &posturev1.CollectorMessage{Msg: &posturev1.CollectorMessage_Rejected{Rejected: out}}, nil
	}
	c.stats.accepted()
	return &posturev1.CollectorMessage{Msg: &posturev1.CollectorMessage_Ack{Ack: &posturev1.ReportAck{
		Seq: ack.Seq, Digest: ack.Digest, NextNonce: next, WantEventLog: wantLog,
	}}}, nil
}

func streamEndError(ctx context.Context) error {
	cause := context.Cause(ctx)
	if errors.Is(cause, errRevoked) {
		return status.Error(codes.PermissionDenied, cause.Error())
	}
	if _, ok := status.FromError(cause); ok && cause != context.Canceled {
		return cause
	}
	return status.FromContextError(ctx.Err()).Err()
}

// ingest verifies one report and stores it. Checks run cheapest first;
// nothing is stored unless every one passes. wantLog asks the agent for
// its event log: the report's quote came without one, and the collector
// has replayed none for its PCR values.
func (s *reportService) ingest(ctx context.Context, id string, key *streamKey, sr *posturev1.SignedReport, nonce []byte) (_ *store.Report, wantLog bool, _ *rejection) {
	c := s.c
	e, ok := c.fleet.get(id)
	if !ok {
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_DEVICE_MISMATCH, "device %s is not enrolled", id)
	}
	// Before anything else, the signature checks above all: a device
	// sending more than its budget is refused for now, whatever it sends.
	// What is stored with a report counts one more report per 64 KiB (a
	// real report is 0.5–2 KB, a TPM event log 15–40 KB): a device cannot
	// store a megabyte with every report. No report costs more than the
	// whole burst, so that every one is accepted in time.
	since := c.cfg.Now().Sub(c.started)
	cost := min(1+uint32((len(sr.GetReport())+len(sr.GetTpm().GetEventLog()))>>16), c.budget.burst)
	if ok, wait := c.fleet.spendReport(id, c.budget, uint32(max(since, 0)/time.Second), cost); !ok {
		r := reject(posturev1.RejectReason_REJECT_REASON_RATE_LIMITED, "device %s sent more reports than its budget (%d at once, then one every %ds); the next is accepted in %ds",
			id, c.budget.burst, c.budget.interval, wait)
		r.retryAfter = time.Duration(wait) * time.Second
		return nil, false, r
	}
	switch {
	case len(sr.GetNonce()) == 0:
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_MALFORMED, "report carries no nonce")
	case subtle.ConstantTimeCompare(sr.GetNonce(), nonce) != 1:
		// A genuine report that is already stored is a replay; anything else
		// simply answers a nonce this stream does not have outstanding.
		if v, _, err := key.verify(e, sr); err == nil {
			if seq, _, _ := c.fleet.head(id); v.Report.GetSeq() <= seq {
				return nil, false, reject(posturev1.RejectReason_REJECT_REASON_REPLAY, "report %d was already stored: replayed report", v.Report.GetSeq())
			}
		}
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_UNKNOWN_NONCE, "nonce is not the one outstanding on this stream (each nonce is valid once, on the stream that issued it)")
	}
	start := time.Now()
	v, quote, err := key.verify(e, sr)
	c.metrics.verify.Observe(time.Since(start).Seconds())
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
	now := c.cfg.Now()
	if created := r.GetCreatedAt().AsTime(); r.GetCreatedAt() == nil || created.Sub(now).Abs() > c.cfg.MaxClockSkew {
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_CLOCK_SKEW, "report created at %s, collector time %s: more than %s apart; fix the device clock (NTP)", created.UTC().Format("15:04:05Z07:00"), now.UTC().Format("15:04:05Z07:00"), c.cfg.MaxClockSkew)
	}
	headSeq, headDigest, state := c.fleet.head(id)
	switch {
	case state == posturev1.DeviceState_DEVICE_STATE_REVOKED:
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_REVOKED, "device %s is revoked", id)
	case r.GetSeq() <= headSeq:
		// Signed now, for this stream, yet reusing a stored sequence number:
		// the key is in two places or the agent's state was rolled back.
		return nil, false, s.suspect(ctx, id, fmt.Sprintf("report chain forked: a new report reuses sequence number %d (latest stored is %d); the identity key is used by two agents, or the agent's state was rolled back", r.GetSeq(), headSeq))
	case r.GetSeq() > headSeq+1:
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_SEQUENCE_GAP, "sequence number %d skips ahead of the latest stored %d", r.GetSeq(), headSeq)
	case !bytes.Equal(r.GetPrevDigest(), headDigest):
		return nil, false, s.suspect(ctx, id, fmt.Sprintf("report chain broken at seq %d: prev_digest does not match the stored report %d (cloned identity or tampered agent state)", r.GetSeq(), headSeq))
	}
	rec := store.Report{DeviceID: id, Seq: r.GetSeq(), Digest: v.Digest, Nonce: v.Nonce, Body: v.Body, Proof: v.Proof, ReceivedAt: now}
	boot := bootState{boot: measuredBoot(nil, nil)}
	if quote != nil {
		clock := store.TPMClock{Clock: quote.Clock.Clock, ResetCount: quote.Clock.ResetCount, RestartCount: quote.Clock.RestartCount}
		// No previous quote: the first report, or the first since the
		// device enrolled again with a new key (its clock starts afresh).
		prev := c.fleet.tpmClock(id)
		reboot, why := tpmClockCheck(prev, clock, headSeq == 0 || prev == (store.TPMClock{}))
		if why != "" {
			s.suspect(ctx, id, why)
			return nil, false, reject(posturev1.RejectReason_REJECT_REASON_TPM_CLOCK, "%s", why)
		}
		rec.TPM, rec.Reboot = &clock, reboot
		boot, wantLog = c.fleet.bootState(id).quoteBoot(sr.GetTpm(), quote.PCRs)
		if len(sr.GetTpm().GetEventLog()) > 0 && boot.replayed != nil {
			// The device keeps this reading until its next log, for the
			// quotes that come without one.
			if rec.MeasuredBoot, err = encodeReading(boot); err != nil {
				c.log.Error("store report", "device", id, "seq", rec.Seq, "err", err)
				return nil, false, reject(posturev1.RejectReason_REJECT_REASON_STORAGE, "collector could not store the report; it will be accepted when sent again")
			}
		}
	}
	if err := c.store.AppendReport(ctx, rec); err != nil {
		switch {
		case errors.Is(err, store.ErrConflict):
			// Two streams of this device raced with different reports for
			// the same sequence number: two holders of one identity.
			return nil, false, s.suspect(ctx, id, fmt.Sprintf("two different reports claimed sequence number %d at once: the identity is used by two agents", rec.Seq))
		case ctx.Err() != nil && errors.Is(err, ctx.Err()):
			// The stream ended while the report waited for the writer: a
			// newer stream of the device replaced it (a reconnect), the
			// agent went away, or the collector is stopping. The writer
			// skips an operation whose context ended, so nothing is
			// stored, and the agent sends the report again on its next
			// stream. The store did not fail.
			return nil, false, rejStreamEnded
		}
		c.log.Error("store report", "device", id, "seq", rec.Seq, "err", err)
		return nil, false, reject(posturev1.RejectReason_REJECT_REASON_STORAGE, "collector could not store the report; it will be accepted when sent again")
	}
	c.fleet.recordReport(id, &rec, r, boot, &c.policy)
	c.publish(id, "report", false)
	return &rec, wantLog, nil
}

// suspect marks a device whose report chain broke and returns the rejection.
func (s *reportService) suspect(ctx context.Context, id, reason string) *rejection {
	c := s.c
	// Not the stream's: a stream ended (by the client, or by a newer stream
	// of the same identity) must not stop the device being marked.
	ctx = context.WithoutCancel(ctx)
	if err := c.store.SetDeviceState(ctx, id, int32(posturev1.DeviceState_DEVICE_STATE_SUSPECT), reason); err == nil {
		c.fleet.setState(id, posturev1.DeviceState_DEVICE_STATE_SUSPECT, reason)
		c.publish(id, "suspect", true)
		c.log.Warn("device marked suspect", "device", id, "reason", reason)
	} else if !errors.Is(err, store.ErrDeviceRevoked) {
		c.log.Error("mark device suspect", "device", id, "err", err)
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
