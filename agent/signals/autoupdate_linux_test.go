package signals

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

const aptConfigLine = "apt-config shell UU APT::Periodic::Unattended-Upgrade UPL APT::Periodic::Update-Package-Lists"

// What systemctl is-enabled printed for a unit in each state; systemd
// serves the same states in the tests (testBus.serveSystemd), and a unit
// it does not list is not installed.
const (
	enabledUnit  = "autoupdate/systemctl-is-enabled-enabled.stdout.txt"
	disabledUnit = "autoupdate/systemctl-is-enabled-disabled.stdout.txt"
	maskedUnit   = "autoupdate/systemctl-is-enabled-masked.stdout.txt"
)

func TestAutoUpdateLinux(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	apt := map[string]string{"usr/bin/apt-get": "", "usr/bin/unattended-upgrade": "", "run/systemd/system/.keep": ""}
	dnf := map[string]string{"usr/bin/dnf": "", "run/systemd/system/.keep": ""}
	with := func(base, extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	const uu, dnfAuto = "unattended-upgrades", "dnf-automatic"
	tests := []struct {
		name       string
		files      map[string]string
		units      map[string]string // the timers systemd knows, when it runs
		noBus      bool              // systemd runs, but the system bus cannot be reached
		recordings map[string]recorded
		want       *posturev1.AutoUpdate
	}{
		{
			name:  "unattended-upgrades on",
			files: apt,
			units: map[string]string{"apt-daily.timer": enabledUnit, "apt-daily-upgrade.timer": enabledUnit},
			recordings: map[string]recorded{
				aptConfigLine: {stdout: "autoupdate/apt-config-enabled.stdout.txt"},
			},
			want: &posturev1.AutoUpdate{Meta: ok, Enabled: true, Mechanism: uu, Detail: "unattended-upgrades runs daily"},
		},
		{
			name:  "unattended upgrades switched off",
			files: apt,
			units: map[string]string{"apt-daily.timer": enabledUnit, "apt-daily-upgrade.timer": enabledUnit},
			recordings: map[string]recorded{
				aptConfigLine: {stdout: "autoupdate/apt-config-disabled.stdout.txt"},
			},
			want: &posturev1.AutoUpdate{Meta: ok, Mechanism: uu,
				Detail: `APT::Periodic::Unattended-Upgrade is "0" (set it to "1" in /etc/apt/apt.conf.d/20auto-upgrades)`},
		},
		{
			name:  "no periodic configuration, timer masked",
			files: apt,
			units: map[string]string{"apt-daily.timer": enabledUnit, "apt-daily-upgrade.timer": maskedUnit},
			recordings: map[string]recorded{
				aptConfigLine: {stdout: "autoupdate/apt-config-none.stdout.txt"},
			},
			want: &posturev1.AutoUpdate{Meta: ok, Mechanism: uu,
				Detail: `APT::Periodic::Unattended-Upgrade is "" (set it to "1" in /etc/apt/apt.conf.d/20auto-upgrades); ` +
					`APT::Periodic::Update-Package-Lists is "", so no new updates are seen; ` +
					`apt-daily-upgrade.timer is masked (systemctl enable --now apt-daily-upgrade.timer)`},
		},
		{
			name:  "systemd without a system bus",
			files: apt,
			noBus: true,
			recordings: map[string]recorded{
				aptConfigLine: {stdout: "autoupdate/apt-config-enabled.stdout.txt"},
			},
			want: &posturev1.AutoUpdate{Mechanism: uu, Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"systemd runs, but its D-Bus API cannot be reached, so whether the update timers are enabled is unknown: "+
					"ask systemd whether apt-daily.timer is enabled: no D-Bus system bus at unix:path=/nonexistent/system_bus_socket "+
					"(dial unix /nonexistent/system_bus_socket: connect: no such file or directory)")},
		},
		{
			name:  "without systemd, from cron",
			files: map[string]string{"usr/bin/apt-get": "", "usr/bin/unattended-upgrade": "", "etc/cron.daily/apt-compat": ""},
			recordings: map[string]recorded{
				aptConfigLine: {stdout: "autoupdate/apt-config-enabled.stdout.txt"},
			},
			want: &posturev1.AutoUpdate{Meta: ok, Enabled: true, Mechanism: uu, Detail: "unattended-upgrades runs daily"},
		},
		{
			name:  "unattended-upgrades not installed",
			files: map[string]string{"usr/bin/apt-get": ""},
			want:  &posturev1.AutoUpdate{Meta: ok, Mechanism: uu, Detail: "unattended-upgrades is not installed (apt install unattended-upgrades)"},
		},
		{
			name:  "dnf-automatic-install.timer",
			files: dnf,
			units: map[string]string{"dnf-automatic-install.timer": enabledUnit},
			want:  &posturev1.AutoUpdate{Meta: ok, Enabled: true, Mechanism: dnfAuto, Detail: "dnf-automatic-install.timer installs default updates"},
		},
		{
			name:  "dnf-automatic.timer applying security updates",
			files: with(dnf, map[string]string{"etc/dnf/automatic.conf": "@testdata/autoupdate/dnf-automatic.conf-apply"}),
			units: map[string]string{"dnf-automatic.timer": enabledUnit},
			want:  &posturev1.AutoUpdate{Meta: ok, Enabled: true, Mechanism: dnfAuto, Detail: "dnf-automatic.timer installs security updates"},
		},
		{
			name:  "dnf-automatic.timer only downloading",
			files: with(dnf, map[string]string{"etc/dnf/automatic.conf": "@testdata/autoupdate/dnf-automatic.conf-download"}),
			units: map[string]string{"dnf-automatic-install.timer": disabledUnit, "dnf-automatic.timer": enabledUnit},
			want: &posturev1.AutoUpdate{Meta: ok, Mechanism: dnfAuto,
				Detail: "dnf-automatic.timer only downloads updates: set apply_updates = yes in /etc/dnf/automatic.conf"},
		},
		{
			name:  "dnf-automatic not installed",
			files: dnf,
			units: map[string]string{},
			want: &posturev1.AutoUpdate{Meta: ok, Mechanism: dnfAuto,
				Detail: "no dnf-automatic timer is enabled (dnf-automatic-install.timer not installed, dnf-automatic.timer not installed, " +
					"dnf5-automatic.timer not installed): systemctl enable --now dnf-automatic-install.timer"},
		},
		{
			name:  "zypper",
			files: map[string]string{"usr/bin/zypper": ""},
			want: &posturev1.AutoUpdate{Mechanism: "zypper", Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"automatic updates are not measured for zypper: SUSE has no single standard mechanism (YaST online update, transactional-update, os-update)")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeRoot(t, tt.files)
			busAddr := "unix:path=/nonexistent/system_bus_socket"
			if exists(filepath.Join(root, "run", "systemd", "system")) && !tt.noBus {
				bus := startTestBus(t)
				bus.serveSystemd(tt.units)
				busAddr = bus.addr
			}
			c := New(Options{Root: root, Runner: newFakeRunner(t, tt.recordings), Now: fixedNow, SystemBus: busAddr})
			got := c.autoUpdate(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("autoUpdate (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAutoUpdateReusedUntilConfigChanges checks that apt-config runs again
// only when a file it reads changes.
func TestAutoUpdateReusedUntilConfigChanges(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"usr/bin/apt-get": "", "usr/bin/unattended-upgrade": "", "etc/cron.daily/apt-compat": "",
		"etc/apt/apt.conf.d/20auto-upgrades": "APT::Periodic::Unattended-Upgrade \"1\";\n",
	})
	runner := newFakeRunner(t, map[string]recorded{aptConfigLine: {stdout: "autoupdate/apt-config-enabled.stdout.txt"}})
	clock := &fakeClock{now: testTime}
	c := New(Options{Root: root, Runner: runner, Now: clock.Now})
	ctx := context.Background()

	first := c.autoUpdate(ctx)
	clock.Advance(time.Minute)
	second := c.autoUpdate(ctx)
	if n := runner.count(aptConfigLine); n != 1 {
		t.Fatalf("apt-config ran %d times for unchanged configuration, want 1", n)
	}
	if !first.GetEnabled() || !second.GetEnabled() || !second.GetMeta().GetObservedAt().AsTime().Equal(clock.Now()) {
		t.Errorf("reused result = %v, want enabled and observed now", second)
	}
	if !first.GetMeta().GetObservedAt().AsTime().Equal(testTime) {
		t.Errorf("the first result changed when the cache reused it: observed at %v, want %v", first.GetMeta().GetObservedAt().AsTime(), testTime)
	}

	p := filepath.Join(root, "etc", "apt", "apt.conf.d", "20auto-upgrades")
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(p, later, later); err != nil {
		t.Fatal(err)
	}
	c.autoUpdate(ctx)
	if n := runner.count(aptConfigLine); n != 2 {
		t.Errorf("apt-config ran %d times after a configuration file changed, want 2", n)
	}

	clock.Advance(configMaxAge)
	c.autoUpdate(ctx)
	if n := runner.count(aptConfigLine); n != 3 {
		t.Errorf("apt-config ran %d times after %v, want 3", n, configMaxAge)
	}
}

func TestParseAptConfigShell(t *testing.T) {
	got := parseAptConfigShell([]byte("UU='1'\nUPL='always'\nX='it'\"'\"'s'\n"))
	want := map[string]string{"UU": "1", "UPL": "always", "X": "it's"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseAptConfigShell (-want +got):\n%s", diff)
	}
}
