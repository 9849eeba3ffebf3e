package e2e

import (
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// budgeted starts a collector whose devices have a budget of burst
// reports, then one every interval, and opens a report stream for a new
// device.
func budgeted(t *testing.T, burst int, interval time.Duration) (*env, *reportClient, string) {
	t.Helper()
	e := startCollectorWith(t, func(c *collector.Config) { c.ReportBurst, c.ReportInterval = burst, interval })
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	return e, openReports(t, e, cert, key, id), id
}

// withEventLog is the next report with a TPM proof carrying an event log of
// n bytes, which a software device's report cannot have: it is refused for
// its proof, after it counted against the budget.
func withEventLog(c *reportClient, n int) *posturev1.SignedReport {
	sr := c.next()
	sr.Proof = &posturev1.SignedReport_Tpm{Tpm: &posturev1.TPMQuote{EventLog: make([]byte, n)}}
	return sr
}

// A device has a report budget: a burst, then one report per interval.
// Beyond it a report is refused as rate_limited, for now (nothing is
// stored, the chain head stays), counted, and a new stream does not
// refill it; once the interval passed, the next report is accepted.
func TestReportBudget(t *testing.T) {
	e := startCollectorWith(t, func(c *collector.Config) { c.ReportBurst, c.ReportInterval = 3, time.Hour })
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	c := openReports(t, e, cert, key, id)
	for i := range 3 {
		if m := c.send(c.next()); m.GetAck() == nil {
			t.Fatalf("report %d of the burst of 3: %v", i+1, m)
		}
	}
	m := c.send(c.next())
	// In an hour, less the seconds the first three took.
	if r := m.GetRejected(); r.GetReason() != posturev1.RejectReason_REJECT_REASON_RATE_LIMITED || !regexp.MustCompile(`the next is accepted in 3[56][0-9]{2}s$`).MatchString(r.GetMessage()) {
		t.Fatalf("report beyond the budget: %v; want rate_limited, saying when the next is accepted", m)
	}
	// Another stream does not start a new budget.
	c = openReports(t, e, cert, key, id)
	if m := c.send(c.next()); m.GetRejected().GetReason() != posturev1.RejectReason_REJECT_REASON_RATE_LIMITED {
		t.Fatalf("report beyond the budget on a new stream: %v; want rate_limited", m)
	}
	e.wantActiveAt(t, id, 3)
	if n := e.stats().GetReportsRejected()["rate_limited"]; n != 2 {
		t.Errorf("rate_limited counted %d times, want 2", n)
	}
	e.clock.Advance(time.Hour)
	later := time.Now().Add(time.Hour) // the device's clock agrees with the collector's
	if m := c.send(c.nextAt(later)); m.GetAck().GetSeq() != 4 {
		t.Fatalf("report an interval later: %v; want accepted as 4", m)
	}
	if m := c.send(c.nextAt(later)); m.GetRejected().GetReason() != posturev1.RejectReason_REJECT_REASON_RATE_LIMITED {
		t.Errorf("a second report in the same interval: %v; want rate_limited", m)
	}
}

// A TPM event log counts against the budget by its size, one report per
// 64 KiB: whatever the rest of the report, a device cannot make the
// collector take a megabyte with every report.
func TestReportBudgetCountsEventLog(t *testing.T) {
	_, c, _ := budgeted(t, 5, time.Hour)
	// With the report's own bytes, four reports' worth.
	if m := c.send(withEventLog(c, 3<<16)); m.GetRejected() == nil || m.GetRejected().GetReason() == posturev1.RejectReason_REJECT_REASON_RATE_LIMITED {
		t.Fatalf("a software device's report with a quote: %v; want it refused, and not for its budget", m)
	}
	// Reports answering no nonce spend the budget too: they are verified
	// to tell a replay.
	stale := c.next()
	stale.Nonce = []byte("not the nonce outstanding")
	if m := c.send(stale); m.GetRejected().GetReason() != posturev1.RejectReason_REJECT_REASON_UNKNOWN_NONCE {
		t.Fatalf("a report answering another nonce: %v; want unknown_nonce", m)
	}
	if m := c.send(c.next()); m.GetRejected().GetReason() != posturev1.RejectReason_REJECT_REASON_RATE_LIMITED {
		t.Errorf("the next report: %v; want rate_limited, the log and the stale report having spent the budget of five", m)
	}
}

// A report that would cost more than the whole burst costs the burst, so
// that it is accepted once the budget is full.
func TestReportBudgetCapsCost(t *testing.T) {
	_, c, _ := budgeted(t, 2, time.Hour)
	if m := c.send(withEventLog(c, 8<<16)); m.GetRejected().GetReason() == posturev1.RejectReason_REJECT_REASON_RATE_LIMITED {
		t.Errorf("a report of nine reports' worth with a burst of two: %v; want it taken (and refused for its proof)", m)
	}
}

// A real agent held back by its budget waits as long as the collector says
// (retry_after) instead of asking again at its reconnect backoff, on the
// same stream, and its measurements keep arriving, one per interval.
func TestAgentWaitsForBudget(t *testing.T) {
	e := startCollectorWith(t, func(c *collector.Config) { c.ReportBurst, c.ReportInterval = 2, time.Second })
	dir, id := e.enroll()
	// Measures every 50 ms and would reconnect within 20–200 ms.
	logs := &testtools.LogRecorder{}
	runAgentLogged(t, dir, &fixedMeasurer{encrypted: true}, 50*time.Millisecond, slog.New(logs))
	eventually(t, "the burst and a refusal", func() bool { return e.stats().GetReportsRejected()["rate_limited"] >= 1 })
	d, err := e.device(id)
	if err != nil {
		t.Fatal(err)
	}
	from, refusedFrom := d.GetDevice().GetLastSeq(), e.stats().GetReportsRejected()["rate_limited"]
	eventually(t, "four more reports, one a second", func() bool {
		d, err := e.device(id)
		return err == nil && d.GetDevice().GetLastSeq() >= from+4
	})
	d, err = e.device(id)
	if err != nil {
		t.Fatal(err)
	}
	// About one refusal per report: the next measurement is ready at once
	// and told to wait. Asking at its reconnect backoff instead, the agent
	// would be refused a dozen times a second.
	accepted, refused := d.GetDevice().GetLastSeq()-from, e.stats().GetReportsRejected()["rate_limited"]-refusedFrom
	if refused > accepted+2 {
		t.Errorf("%d refusals for %d reports accepted: the agent did not wait as told", refused, accepted)
	}
	held := 0
	for _, m := range logs.Messages(slog.LevelInfo) {
		if strings.HasPrefix(m, "collector holds reports back") {
			held++
		}
	}
	if held == 0 {
		t.Error("the agent never logged that the collector held its reports back")
	}
	if ended := logs.Messages(slog.LevelWarn); len(ended) > 0 {
		t.Errorf("the agent left its stream while held back: %q; want it to wait on the stream", ended)
	}
}
