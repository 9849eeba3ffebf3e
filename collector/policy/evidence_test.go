package policy

import (
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A section's evidence is never younger than the report's arrival, its
// age is never negative and never wraps, whatever year the device or the
// collector's clock says; an observed_at that is missing or invalid is no
// evidence of freshness, and never passes.
func TestEvidenceAge(t *testing.T) {
	const year = 365 * 24 * time.Hour
	y2300 := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
	maxAge := time.Duration(math.MaxInt64)
	tests := []struct {
		name     string
		observed *timestamppb.Timestamp // the os section's observed_at
		received time.Time
		now      time.Time
		// wantAge is evidence_age("os") and the os_version check's
		// evidence age; with noEvidence there is none.
		wantAge    time.Duration
		noEvidence bool
	}{
		{name: "observed an hour before arrival", observed: timestamppb.New(t0.Add(-time.Hour)), received: t0, now: t0.Add(48 * time.Hour), wantAge: 49 * time.Hour},
		{name: "observed at arrival, an hour ago", observed: timestamppb.New(t0), received: t0, now: t0.Add(time.Hour), wantAge: time.Hour},
		{name: "device clock a minute ahead", observed: timestamppb.New(t0.Add(time.Minute)), received: t0, now: t0.Add(48 * time.Hour), wantAge: 48 * time.Hour},
		{name: "ten years ahead", observed: timestamppb.New(t0.Add(10 * year)), received: t0, now: t0.Add(48 * time.Hour), wantAge: 48 * time.Hour},
		{name: "last instant of year 9999", observed: timestamppb.New(time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)), received: t0, now: t0.Add(48 * time.Hour), wantAge: 48 * time.Hour},
		{name: "year 1: older than a duration holds", observed: timestamppb.New(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)), received: t0, now: t0.Add(48 * time.Hour), wantAge: maxAge},
		{name: "received in 2300, observed in 9999", observed: timestamppb.New(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)), received: y2300, now: y2300.Add(48 * time.Hour), wantAge: 48 * time.Hour},
		{name: "received now, evaluated in 2300", observed: timestamppb.New(t0), received: t0, now: y2300, wantAge: y2300.Sub(t0)},
		{name: "observed in year 1, evaluated in 2300", observed: timestamppb.New(time.Date(1, 6, 1, 0, 0, 0, 0, time.UTC)), received: t0, now: y2300, wantAge: maxAge},
		{name: "collector clock stepped back below arrival", observed: timestamppb.New(t0), received: t0, now: t0.Add(-time.Hour), wantAge: 0},
		{name: "missing", observed: nil, received: t0, now: t0.Add(time.Minute), noEvidence: true},
		{name: "negative nanos", observed: &timestamppb.Timestamp{Seconds: t0.Add(10 * year).Unix(), Nanos: -1}, received: t0, now: t0.Add(48 * time.Hour), noEvidence: true},
		{name: "nanos of a whole second", observed: &timestamppb.Timestamp{Seconds: t0.Unix(), Nanos: 1e9}, received: t0, now: t0.Add(time.Minute), noEvidence: true},
		{name: "seconds past year 9999", observed: &timestamppb.Timestamp{Seconds: 253402300800}, received: t0, now: t0.Add(48 * time.Hour), noEvidence: true},
		{name: "seconds before year 1", observed: &timestamppb.Timestamp{Seconds: -62135596801}, received: t0, now: t0.Add(48 * time.Hour), noEvidence: true},
		{name: "max int64 seconds", observed: &timestamppb.Timestamp{Seconds: math.MaxInt64, Nanos: 999_999_999}, received: t0, now: t0.Add(48 * time.Hour), noEvidence: true},
		{name: "min int64 seconds", observed: &timestamppb.Timestamp{Seconds: math.MinInt64}, received: t0, now: t0.Add(48 * time.Hour), noEvidence: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// expire_after is the longest a duration can be, so that expiry
			// never answers first and the expressions are what is judged.
			p, err := Parse([]byte(`
freshness: {stale_after: 1h, expire_after: 2562047h}
checks:
  - {name: os_version, weight: 1, min_versions: {ubuntu: "22.04"}}
  - {name: disk_encryption, weight: 1}
levels:
  - {name: fresh, expr: 'device.evidence_age("os") < duration("24h")'}
  - {name: exact, expr: 'device.evidence_age("os") == duration("` + tt.wantAge.String() + `")'}
  - {name: nonnegative, expr: 'device.evidence_age("os") >= duration("0s")'}
`))
			if err != nil {
				t.Fatal(err)
			}
			r := report(func(r *posturev1.PostureReport) { r.Os.Meta.ObservedAt = tt.observed })
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: p.Assess(r, tt.received), ReportAt: tt.received}

			wantFresh := !tt.noEvidence && tt.wantAge < 24*time.Hour
			if allowed, _, reasons := p.Decide(s, "fresh", tt.now); allowed != wantFresh {
				t.Errorf("fresh (evidence_age(\"os\") < 24h) allowed = %v, want %v (%q)", allowed, wantFresh, reasons)
			} else if tt.noEvidence && !strings.Contains(strings.Join(reasons, " "), `no measured evidence with a valid observed_at for os`) {
				t.Errorf("fresh denied for %q, want it to say the os section has no valid observed_at", reasons)
			}
			for _, level := range []string{"exact", "nonnegative"} {
				if allowed, _, reasons := p.Decide(s, level, tt.now); allowed == tt.noEvidence {
					t.Errorf("%s allowed = %v, want %v (%q)", level, allowed, !tt.noEvidence, reasons)
				}
			}

			checks, _, _ := p.Explain(s, tt.now)
			for _, c := range checks {
				if age := c.GetEvidenceAge(); age != nil && age.AsDuration() < 0 {
					t.Errorf("check %s: evidence age %v is negative", c.GetName(), age.AsDuration())
				}
				if c.GetName() != "os_version" {
					continue
				}
				switch {
				case tt.noEvidence && c.GetEvidenceAge() != nil:
					t.Errorf("os_version evidence age = %v, want none", c.GetEvidenceAge().AsDuration())
				case !tt.noEvidence && c.GetEvidenceAge() == nil:
					t.Errorf("os_version has no evidence age, want %v", tt.wantAge)
				case !tt.noEvidence && c.GetEvidenceAge().AsDuration() != tt.wantAge.Round(time.Second):
					t.Errorf("os_version evidence age = %v, want %v", c.GetEvidenceAge().AsDuration(), tt.wantAge.Round(time.Second))
				}
			}
		})
	}
}

// A report's age is never negative: a collector clock stepped back makes a
// report as young as its measurement, not younger, in expressions and in
// what decisions show; and it does not wrap centuries later.
func TestReportAgeNeverNegative(t *testing.T) {
	p, err := Parse([]byte(`
freshness: {stale_after: 1h, expire_after: 2h}
checks: [{name: disk_encryption, weight: 1}]
levels: [{name: l, expr: 'device.report_age >= duration("0s")'}]
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		reportAt time.Time
		now      time.Time
		want     time.Duration
	}{
		{"clock stepped back an hour", t0, t0.Add(-time.Hour), 0},
		{"an hour old", t0, t0.Add(time.Hour), time.Hour},
		{"measured in year 1, judged in 2300", time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC), time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), time.Duration(math.MaxInt64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Subject{State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assessment: p.Assess(report(nil), tt.reportAt), ReportAt: tt.reportAt}
			if got := s.ReportAge(tt.now); got != tt.want {
				t.Errorf("ReportAge = %v, want %v", got, tt.want)
			}
			if tt.want >= p.Freshness.ExpireAfter {
				return // expired: no expression is read
			}
			if allowed, _, reasons := p.Decide(s, "l", tt.now); !allowed {
				t.Errorf("report_age >= 0 denied: %q", reasons)
			}
		})
	}
}
