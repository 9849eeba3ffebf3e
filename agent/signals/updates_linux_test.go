package signals

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

// fakeRoot builds a filesystem root holding the given files (empty unless
// a content is given; "@testdata/…" copies a testdata file).
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if src, ok := strings.CutPrefix(content, "@"); ok {
			b, err := os.ReadFile(filepath.FromSlash(src))
			if err != nil {
				t.Fatal(err)
			}
			content = string(b)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const (
	aptGetLine   = "apt-get -s dist-upgrade"
	dnfLine      = "dnf -q check-update"
	dnfSecLine   = "dnf -q check-update --security"
	zypperUpLine = "zypper --non-interactive --xmlout list-updates"
	zypperPaLine = "zypper --non-interactive --xmlout list-patches"
)

func TestMeasureUpdates(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	failed := func(reason string) *posturev1.SignalMeta {
		return metaAt(testTime, posturev1.Status_STATUS_ERROR, reason)
	}
	debian := map[string]string{"usr/bin/apt-get": ""}
	tests := []struct {
		name       string
		files      map[string]string
		recordings map[string]recorded
		want       *posturev1.Updates
	}{
		{
			name:       "debian with security updates",
			files:      debian,
			recordings: map[string]recorded{aptGetLine: {stdout: "apt-get-dist-upgrade.stdout.txt"}},
			want:       &posturev1.Updates{Meta: ok, Manager: "apt", Pending: 120, SecurityPending: 73},
		},
		{
			name:       "debian up to date",
			files:      debian,
			recordings: map[string]recorded{aptGetLine: {stdout: "apt-get-dist-upgrade-none.stdout.txt"}},
			want:       &posturev1.Updates{Meta: ok, Manager: "apt"},
		},
		{
			name:       "debian waiting for reboot",
			files:      map[string]string{"usr/bin/apt-get": "", "var/run/reboot-required": "*** System restart required ***\n"},
			recordings: map[string]recorded{aptGetLine: {stdout: "apt-get-dist-upgrade-none.stdout.txt"}},
			want:       &posturev1.Updates{Meta: ok, Manager: "apt", RebootRequired: true},
		},
		{
			name:       "apt-get fails",
			files:      debian,
			recordings: map[string]recorded{aptGetLine: {stderr: "apt-get-dist-upgrade-broken.stderr.txt", exitCode: 100}},
			want: &posturev1.Updates{Manager: "apt",
				Meta: failed("apt-get -s dist-upgrade exited with status 100: E: Malformed line 1 in source list /tmp/bad.list (type)")},
		},
		{
			name:       "apt-get cannot start",
			files:      debian,
			recordings: map[string]recorded{aptGetLine: {err: fmt.Errorf("run apt-get: %w", os.ErrPermission)}},
			want:       &posturev1.Updates{Manager: "apt", Meta: failed("run apt-get: permission denied")},
		},
		{
			name:  "ubuntu apt-check",
			files: map[string]string{"usr/bin/apt-get": "", "usr/lib/update-notifier/apt-check": ""},
			recordings: map[string]recorded{
				aptCheckPath: {stderr: "apt-check.stderr.txt"},
				aptGetLine:   {stdout: "apt-get-dist-upgrade-none.stdout.txt"},
			},
			want: &posturev1.Updates{Meta: ok, Manager: "apt", Pending: 12, SecurityPending: 5},
		},
		{
			name: "fedora with a newer kernel installed",
			files: map[string]string{
				"usr/bin/dnf":               "",
				"proc/sys/kernel/osrelease": "6.8.5-301.fc40.x86_64\n",
				"lib/modules/6.8.5-301.fc40.x86_64/modules.dep": "",
				"lib/modules/6.8.9-300.fc40.x86_64/modules.dep": "",
			},
			recordings: map[string]recorded{
				dnfLine:    {stdout: "dnf-check-update.stdout.txt", exitCode: 100},
				dnfSecLine: {stdout: "dnf-check-update-security.stdout.txt", exitCode: 100},
			},
			want: &posturev1.Updates{Meta: ok, Manager: "dnf", Pending: 6, SecurityPending: 3, RebootRequired: true},
		},
		{
			name:  "fedora up to date",
			files: map[string]string{"usr/bin/dnf": ""},
			recordings: map[string]recorded{
				dnfLine:    {exitCode: 0},
				dnfSecLine: {exitCode: 0},
			},
			want: &posturev1.Updates{Meta: ok, Manager: "dnf"},
		},
		{
			name:       "dnf fails",
			files:      map[string]string{"usr/bin/dnf": ""},
			recordings: map[string]recorded{dnfLine: {stderr: "dnf-check-update-failed.stderr.txt", exitCode: 1}},
			want: &posturev1.Updates{Manager: "dnf", Meta: failed("dnf -q check-update exited with status 1: " +
				"Error: Failed to download metadata for repo 'updates': Cannot download repomd.xml: Cannot download repodata/repomd.xml: All mirrors were tried")},
		},
		{
			name:  "zypper",
			files: map[string]string{"usr/bin/zypper": ""},
			recordings: map[string]recorded{
				zypperUpLine: {stdout: "zypper-list-updates.stdout.txt"},
				zypperPaLine: {stdout: "zypper-list-patches.stdout.txt", exitCode: 101},
			},
			want: &posturev1.Updates{Meta: ok, Manager: "zypper", Pending: 4, SecurityPending: 2},
		},
		{
			name:       "zypper fails",
			files:      map[string]string{"usr/bin/zypper": ""},
			recordings: map[string]recorded{zypperUpLine: {stdout: "zypper-list-updates-failed.stdout.txt", exitCode: 4}},
			want: &posturev1.Updates{Manager: "zypper",
				Meta: failed("zypper --non-interactive --xmlout list-updates exited with status 4: Repository 'repo-oss' is invalid.")},
		},
		{
			name: "no package manager",
			want: &posturev1.Updates{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"no supported package manager (apt, dnf, zypper) found")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Options{Root: fakeRoot(t, tt.files), Runner: newFakeRunner(t, tt.recordings), Now: fixedNow})
			got := c.measureUpdates(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("measureUpdates (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeClock is a settable clock safe for the background refresh.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUpdatesCache(t *testing.T) {
	clock := &fakeClock{now: testTime}
	runner := newFakeRunner(t, map[string]recorded{aptGetLine: {stdout: "apt-get-dist-upgrade.stdout.txt"}})
	c := New(Options{
		Root:            fakeRoot(t, map[string]string{"usr/bin/apt-get": ""}),
		Runner:          runner,
		Now:             clock.Now,
		UpdatesInterval: time.Hour,
	})
	ctx := context.Background()
	observedAt := func() time.Time { return c.Collect(ctx).GetUpdates().GetMeta().GetObservedAt().AsTime() }

	first := c.Collect(ctx).GetUpdates()
	if first.GetMeta().GetStatus() != posturev1.Status_STATUS_OK || first.GetPending() != 120 {
		t.Fatalf("first Collect: %v", first)
	}
	if n := runner.count(aptGetLine); n != 1 {
		t.Fatalf("first Collect ran apt-get %d times, want 1", n)
	}

	clock.Advance(30 * time.Minute)
	if got := observedAt(); !got.Equal(testTime) {
		t.Errorf("within the interval observed_at = %v, want the cached %v", got, testTime)
	}
	if n := runner.count(aptGetLine); n != 1 {
		t.Errorf("Collect within the interval ran apt-get again (%d calls)", n)
	}

	// Stale: the cached result is still served while a refresh runs.
	clock.Advance(time.Hour)
	refreshedAt := clock.Now()
	if got := observedAt(); !got.Equal(testTime) {
		t.Errorf("stale Collect observed_at = %v, want the cached %v", got, testTime)
	}
	waitFor(t, "the background refresh", func() bool { return observedAt().Equal(refreshedAt) })
	if n := runner.count(aptGetLine); n != 2 {
		t.Errorf("after one refresh apt-get ran %d times, want 2", n)
	}
}

func TestUpdatesCacheRetriesFailuresSooner(t *testing.T) {
	clock := &fakeClock{now: testTime}
	runner := newFakeRunner(t, map[string]recorded{
		aptGetLine: {stderr: "apt-get-dist-upgrade-broken.stderr.txt", exitCode: 100},
	})
	c := New(Options{
		Root:            fakeRoot(t, map[string]string{"usr/bin/apt-get": ""}),
		Runner:          runner,
		Now:             clock.Now,
		UpdatesInterval: 6 * time.Hour,
	})
	ctx := context.Background()
	if got := c.Collect(ctx).GetUpdates(); got.GetMeta().GetStatus() != posturev1.Status_STATUS_ERROR {
		t.Fatalf("got %v, want STATUS_ERROR", got)
	}
	clock.Advance(failedUpdatesRetry - time.Second)
	c.Collect(ctx)
	if n := runner.count(aptGetLine); n != 1 {
		t.Fatalf("failure retried after %v (%d calls)", failedUpdatesRetry-time.Second, n)
	}
	clock.Advance(time.Second)
	retriedAt := clock.Now()
	c.Collect(ctx)
	waitFor(t, "the retry", func() bool {
		return c.Collect(ctx).GetUpdates().GetMeta().GetObservedAt().AsTime().Equal(retriedAt)
	})
	if n := runner.count(aptGetLine); n != 2 {
		t.Errorf("after one retry apt-get ran %d times, want 2", n)
	}
}

func TestRebootRequired(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  bool
	}{
		{"nothing installed", map[string]string{"proc/sys/kernel/osrelease": "6.1.0-18-amd64\n"}, false},
		{"reboot-required in /run", map[string]string{"run/reboot-required": ""}, true},
		{"running the newest", map[string]string{
			"proc/sys/kernel/osrelease":              "6.1.0-21-amd64\n",
			"lib/modules/6.1.0-18-amd64/modules.dep": "",
			"lib/modules/6.1.0-21-amd64/modules.dep": "",
		}, false},
		{"newer of the same flavor", map[string]string{
			"proc/sys/kernel/osrelease":              "6.1.0-18-amd64\n",
			"lib/modules/6.1.0-18-amd64/modules.dep": "",
			"lib/modules/6.1.0-21-amd64/modules.dep": "",
		}, true},
		{"newer of another flavor", map[string]string{
			"proc/sys/kernel/osrelease":                 "6.1.0-18-amd64\n",
			"lib/modules/6.1.0-21-rt-amd64/modules.dep": "",
		}, false},
		{"leftover directory of a removed kernel", map[string]string{
			"proc/sys/kernel/osrelease":             "6.1.0-18-amd64\n",
			"lib/modules/6.1.0-21-amd64/extra/x.ko": "",
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Options{Root: fakeRoot(t, tt.files)})
			if got := c.rebootRequired(); got != tt.want {
				t.Errorf("rebootRequired() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseAptSimulate(t *testing.T) {
	tests := []struct {
		name              string
		in                string
		pending, security uint32
		wantErr           bool
	}{
		{
			name: "upgrade and new package",
			in: "Inst libssl3 [3.0.11-1~deb12u1] (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])\n" +
				"Inst linux-image-6.1.0-21-amd64 (6.1.90-1 Debian:12.6/stable [amd64])\n" +
				"Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable, Debian:12-updates/stable-updates [all])\n" +
				"Conf libssl3 (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])\n" +
				"2 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.\n",
			pending: 3, security: 1,
		},
		{
			name:    "security in the name only",
			in:      "Inst foo-security [1] (2 Debian:12.6/stable [amd64])\n1 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n",
			pending: 1,
		},
		{name: "no summary", in: "Reading package lists...\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, s, err := parseAptSimulate([]byte(tt.in))
			if (err != nil) != tt.wantErr || p != tt.pending || s != tt.security {
				t.Errorf("parseAptSimulate = %d, %d, %v; want %d, %d, error %v", p, s, err, tt.pending, tt.security, tt.wantErr)
			}
		})
	}
}

func TestParseAptCheck(t *testing.T) {
	tests := []struct {
		in                string
		pending, security uint32
		wantErr           bool
	}{
		{in: "12;5", pending: 12, security: 5},
		{in: "W: some warning\n0;0\n"},
		{in: "E: Error: BrokenCount > 0", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, s, err := parseAptCheck([]byte(tt.in))
			if (err != nil) != tt.wantErr || p != tt.pending || s != tt.security {
				t.Errorf("parseAptCheck = %d, %d, %v; want %d, %d, error %v", p, s, err, tt.pending, tt.security, tt.wantErr)
			}
		})
	}
}

func TestKernelFlavor(t *testing.T) {
	tests := map[string]string{
		"6.1.0-18-amd64":            "amd64",
		"6.1.0-18-rt-amd64":         "rt-amd64",
		"6.8.0-45-generic":          "generic",
		"6.8.9-300.fc40.x86_64":     "",
		"6.10.10-arch1-1":           "",
		"6.6.52-1-lts":              "lts",
		"6.4.0-150600.23.7-default": "default",
	}
	for in, want := range tests {
		if got := kernelFlavor(in); got != want {
			t.Errorf("kernelFlavor(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"6.1.0-18-amd64", "6.1.0-21-amd64", -1},
		{"6.8.10-200.fc40.x86_64", "6.8.9-300.fc40.x86_64", 1},
		{"6.8.0-100-generic", "6.8.0-31-generic", 1},
		{"6.1.0-018-amd64", "6.1.0-18-amd64", 0},
		{"6.1", "6.1.1", -1},
		{"6.10.10-arch1-1", "6.10.10-arch1-1", 0},
	}
	for _, tt := range tests {
		t.Run(strings.Join([]string{tt.a, tt.b}, " vs "), func(t *testing.T) {
			if got := compareVersions(tt.a, tt.b); got != tt.want {
				t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
			}
			if got := compareVersions(tt.b, tt.a); got != -tt.want {
				t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
			}
		})
	}
}

// slowRunner delays every command until released, like a package manager
// refreshing its lists.
type slowRunner struct {
	Runner
	release chan struct{}
}

func (s slowRunner) Run(ctx context.Context, name string, args ...string) ([]byte, []byte, int, error) {
	<-s.release
	return s.Runner.Run(ctx, name, args...)
}

// A slow first package-manager run cannot stall a report: the first Collect
// says the check is still running, and a later one carries its result.
func TestSlowFirstUpdatesDoNotStallCollect(t *testing.T) {
	release := make(chan struct{})
	runner := slowRunner{Runner: newFakeRunner(t, map[string]recorded{aptGetLine: {stdout: "apt-get-dist-upgrade.stdout.txt"}}), release: release}
	c := New(Options{
		Root:          fakeRoot(t, map[string]string{"usr/bin/apt-get": ""}),
		Runner:        runner,
		FirstSlowWait: 50 * time.Millisecond,
	})
	ctx := context.Background()
	start := time.Now()
	first := c.Collect(ctx).GetUpdates()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("first Collect took %v while apt-get hung", took)
	}
	if first.GetMeta().GetStatus() != posturev1.Status_STATUS_UNAVAILABLE || !strings.Contains(first.GetMeta().GetReason(), "still running") {
		t.Fatalf("first Collect updates = %v, want unavailable while the check runs", first)
	}
	close(release)
	waitFor(t, "the first check's result", func() bool {
		u := c.Collect(ctx).GetUpdates()
		return u.GetMeta().GetStatus() == posturev1.Status_STATUS_OK && u.GetPending() == 120
	})
}
