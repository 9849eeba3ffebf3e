package fleet

import (
	"bytes"
	"maps"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A quote with a log is replayed and its reading kept for its PCR values;
// a quote without one gets that reading only for the same values, and
// otherwise asks for the log. A log that does not replay is remembered for
// its PCR values: quotes with them get its failed reading and do not ask
// for the log again, which would fail the same way.
func TestQuoteBoot(t *testing.T) {
	log := testtools.NewEventLog()
	log.Add(0, 0x80000008, []byte("platform firmware"))
	log.Add(7, 0x80000001, testtools.SecureBootVariable(true))
	log.Add(7, 0x00000004, []byte{0, 0, 0, 0})
	booted := maps.Clone(log.PCRs())
	booted[1] = make([]byte, 32) // quoted, not in the log
	changed := maps.Clone(booted)
	changed[7] = bytes.Repeat([]byte{1}, 32) // PCR 7 extended after boot
	again := maps.Clone(changed)
	again[7] = bytes.Repeat([]byte{2}, 32) // and once more
	quote := func(withLog bool) *posturev1.TPMQuote {
		q := &posturev1.TPMQuote{}
		if withLog {
			q.EventLog = log.Bytes()
		}
		return q
	}
	replayed := &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_OK, SecureBootKnown: true, SecureBoot: true, Events: 3}
	failed := &posturev1.MeasuredBoot{Status: posturev1.Status_STATUS_ERROR}
	type step struct {
		name     string
		pcrs     map[uint32][]byte
		withLog  bool
		want     *posturev1.MeasuredBoot
		wantLog  bool
		replayed bool // a log's reading is kept after the step
	}
	runs := []struct {
		name  string
		steps []step
	}{
		{"a log that replays", []step{
			{"no log yet", booted, false, bootNoEventLog, true, false},
			{"the log", booted, true, replayed, false, true},
			{"same PCR values without the log", booted, false, replayed, false, true},
			{"other PCR values without the log", changed, false, bootNoLogForPCRs, true, true},
			{"the first PCR values again", booted, false, replayed, false, true},
			// A log that does not replay is not kept, and not asked for
			// again while the PCR values are those it failed for.
			{"the log for other PCR values does not replay", changed, true, failed, false, true},
			{"same values as that log, without it", changed, false, failed, false, true},
			{"the first PCR values: the log that replayed still counts", booted, false, replayed, false, true},
			{"the values the log failed for again", changed, false, failed, false, true},
			{"PCR values changed once more: asked", again, false, bootNoLogForPCRs, true, true},
		}},
		{"no log ever replays", []step{
			{"the log does not replay", changed, true, failed, false, false},
			{"same values without it", changed, false, failed, false, false},
			{"same values, the log again", changed, true, failed, false, false},
			{"other values: asked", again, false, bootNoEventLog, true, false},
			{"the values it failed for", changed, false, failed, false, false},
			{"the log replays for its own values", booted, true, replayed, false, true},
			{"the values it failed for, after one replayed", changed, false, failed, false, true},
		}},
	}
	ignoreReason := protocmp.IgnoreFields(&posturev1.MeasuredBoot{}, "reason")
	for _, run := range runs {
		t.Run(run.name, func(t *testing.T) {
			var b BootState
			var memo *replayMemo
			for _, s := range run.steps {
				var want bool
				b, want = b.QuoteBoot(quote(s.withLog), s.pcrs)
				if diff := cmp.Diff(s.want, b.boot, protocmp.Transform(), ignoreReason); diff != "" {
					t.Errorf("%s: reading (-want +got):\n%s", s.name, diff)
				}
				if s.want == bootNoEventLog || s.want == bootNoLogForPCRs {
					if b.boot != s.want {
						t.Errorf("%s: reading %q, want %q", s.name, b.boot.GetReason(), s.want.GetReason())
					}
				}
				if s.want == failed && !strings.Contains(b.boot.GetReason(), "does not replay") {
					t.Errorf("%s: reading %q, want the replay's failure", s.name, b.boot.GetReason())
				}
				if want != s.wantLog {
					t.Errorf("%s: want event log = %v, want %v", s.name, want, s.wantLog)
				}
				if (b.replayed != nil) != s.replayed {
					t.Errorf("%s: kept reading = %v, want one: %v", s.name, b.replayed, s.replayed)
				}
				// What a device entry keeps gives back the same state.
				memo = b.memo(memo)
				e := entry{boot: b.boot, replay: memo}
				if got := e.bootState(); got != b {
					t.Errorf("%s: device entry keeps %+v, want %+v", s.name, got, b)
				}
				if b.replayed == nil {
					continue
				}
				// What the store keeps reads back the same.
				data, err := EncodeReading(b)
				if err != nil {
					t.Fatal(err)
				}
				tag, mb, err := decodeReading(data)
				if err != nil || tag != b.replayedFor || !cmp.Equal(mb, b.replayed, protocmp.Transform()) {
					t.Errorf("%s: stored reading reads back as %x %v, %v; want %x %v", s.name, tag, mb, err, b.replayedFor, b.replayed)
				}
			}
		})
	}
	if _, _, err := decodeReading([]byte("short")); err == nil {
		t.Error("decodeReading accepted 5 bytes")
	}
}
