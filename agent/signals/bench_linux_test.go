package signals

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"
)

// BenchmarkCollect measures one collection cycle on this machine with the
// package-manager result already cached, as every cycle but the first
// every few hours is. cpu-ms/op is the CPU time of a cycle, the agent's
// own plus that of the commands it runs (getrusage of the process and of
// its waited-for children); the target is under 5 ms. The baseline,
// reading /proc/self/mountinfo, runs the same number of times after the
// timed loop: x-mountinfo is a cycle's time in those reads, and
// cpu-x-mountinfo its CPU time in their CPU time, figures that carry from
// one machine to another better than milliseconds do.
func BenchmarkCollect(b *testing.B) {
	ctx := context.Background()
	// The first cycle waits for the package manager however long it takes,
	// so that the timed ones find its result cached.
	c := New(Options{FirstSlowWait: 10 * time.Minute})
	c.Collect(ctx) // fills the updates and configuration caches

	self0, children0 := cpuTimes(b)
	b.ReportAllocs()
	for b.Loop() {
		c.Collect(ctx)
	}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	self1, children1 := cpuTimes(b)

	start := time.Now()
	for range b.N {
		if _, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
			b.Fatal(err)
		}
	}
	baseline := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	self2, _ := cpuTimes(b)

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
	cycleCPU := self1 - self0 + children1 - children0
	b.ReportMetric(ms(cycleCPU), "cpu-ms/op")
	b.ReportMetric(ms(children1-children0), "child-cpu-ms/op")
	b.ReportMetric(baseline, "mountinfo-ns/op")
	b.ReportMetric(perOp/baseline, "x-mountinfo")
	if baseCPU := self2 - self1; baseCPU > 0 {
		b.ReportMetric(float64(cycleCPU)/float64(baseCPU), "cpu-x-mountinfo")
	}
}

// cpuTimes returns the user plus system CPU time of this process and of
// its terminated children.
func cpuTimes(b *testing.B) (self, children time.Duration) {
	var s, ch syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &s); err != nil {
		b.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ch); err != nil {
		b.Fatal(err)
	}
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(s.Utime) + tv(s.Stime), tv(ch.Utime) + tv(ch.Stime)
}
