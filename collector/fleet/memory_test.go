package fleet

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A device that sends report after report, each with an OS name and
// version of its own as long as the limits allow, keeps one OS line and
// one set of verdicts: what the collector shares between devices (the
// interner, the policy's shared texts) does not keep each of them.
func TestDistinctNamesDoNotGrowHeap(t *testing.T) {
	const reports = 50_000
	pol := policy.Default()
	e := &entry{}
	ok := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now()}
	report := func(i int) *posturev1.PostureReport {
		n := fmt.Sprintf("%08d", i)
		return &posturev1.PostureReport{Os: &posturev1.OSInfo{Meta: ok, Platform: "linux",
			Name:    strings.Repeat("n", envelope.MaxNameLen-len(n)) + n,
			Version: n + strings.Repeat("1", envelope.MaxNameLen-len(n))}}
	}
	if err := envelope.CheckReport(report(0)); err != nil {
		t.Fatalf("the test's reports are over the limits: %v", err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range reports {
		e.setReport(report(i), BootState{boot: bootNoQuote}, time.Now(), pol)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	// Each report's verdict texts alone are about 0.8 KB: kept for every
	// report, they would be some 40 MB. The shared tables may fill up to
	// their bounds (5 MiB of texts, and what it takes to index them).
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d reports: heap %+d KiB", reports, grew>>10)
	if grew > 16<<20 {
		t.Errorf("%d reports of one device left %d MiB more on the heap; want at most the shared tables' bounds", reports, grew>>20)
	}
	if !strings.HasSuffix(e.osLine, fmt.Sprintf("%08d", reports-1)+strings.Repeat("1", envelope.MaxNameLen-8)) {
		t.Errorf("the device's OS line is not its latest report's")
	}
}
