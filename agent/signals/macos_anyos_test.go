package signals

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

// The macOS measurements run on every OS against outputs in testdata/macos:
// captures from real Macs where public material holds one, documentation
// examples where it does not; testdata/README.md says which is which.

const (
	swVersLine       = "/usr/bin/sw_vers"
	fdesetupLine     = "/usr/bin/fdesetup isactive"
	apfsListLine     = "/usr/sbin/diskutil apfs list -plist"
	swapUsageLine    = "/usr/sbin/sysctl -n vm.swapusage"
	suPrefsLine      = "/usr/bin/defaults read /Library/Preferences/com.apple.SoftwareUpdate"
	suManagedLine    = "/usr/bin/defaults read /Library/Managed Preferences/com.apple.SoftwareUpdate"
	suNoScanLine     = "/usr/sbin/softwareupdate --list --no-scan"
	socketfilterLine = "/usr/libexec/ApplicationFirewall/socketfilterfw --getglobalstate"
	alfLine          = "/usr/bin/defaults read /Library/Preferences/com.apple.alf globalstate"
	consoleLine      = "/usr/bin/stat -f %Su %u /dev/console"
	asAlice          = "/bin/launchctl asuser 501 /usr/bin/sudo -H -u alice "
	sysadminctlLine  = asAlice + "/usr/sbin/sysadminctl -screenLock status"
	idleTimeLine     = asAlice + "/usr/bin/defaults -currentHost read com.apple.screensaver idleTime"
	pmsetLine        = "/usr/bin/pmset -g"
	csrutilLine      = "/usr/bin/csrutil status"
	spctlLine        = "/usr/sbin/spctl --status"
	iBridgeLine      = "/usr/sbin/system_profiler SPiBridgeDataType"
)

func mac(file string) string { return "macos/" + file }

// newMacCollector is a Collector replaying recordings, as root.
func newMacCollector(t *testing.T, recordings map[string]recorded) (*Collector, *fakeRunner) {
	r := newFakeRunner(t, recordings)
	c := New(Options{Root: t.TempDir(), Runner: r, Now: fixedNow})
	c.euid = 0
	return c, r
}

func TestMacOSInfo(t *testing.T) {
	tests := []struct {
		name string
		rec  recorded
		want *posturev1.OSInfo
	}{
		{
			name: "Rapid Security Response, tab separated",
			rec:  recorded{stdout: mac("sw_vers-13.3.1-rsr-tabs.stdout.txt")},
			want: &posturev1.OSInfo{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Name: "macOS", Version: "13.3.1",
				Build: "22E772610a", RapidSecurityResponse: "(a)"},
		},
		{
			name: "Rapid Security Response, space separated",
			rec:  recorded{stdout: mac("sw_vers-13.3.1-rsr-spaces.stdout.txt")},
			want: &posturev1.OSInfo{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Name: "macOS", Version: "13.3.1",
				Build: "22E772610a", RapidSecurityResponse: "(a)"},
		},
		{
			name: "Catalina, space separated",
			rec:  recorded{stdout: mac("sw_vers-10.15.5-spaces.stdout.txt")},
			want: &posturev1.OSInfo{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Name: "Mac OS X", Version: "10.15.5", Build: "19F101"},
		},
		{
			name: "first release of a major version has no patch number",
			rec:  recorded{stdout: mac("sw_vers-10.13-tabs.stdout.txt")},
			want: &posturev1.OSInfo{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Name: "Mac OS X", Version: "10.13", Build: "17A405"},
		},
		{
			name: "sw_vers fails",
			rec:  recorded{exitCode: 1},
			want: &posturev1.OSInfo{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE, "/usr/bin/sw_vers exited with status 1")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newMacCollector(t, map[string]recorded{swVersLine: tt.rec})
			got := c.macOSInfo(context.Background(), "23.5.0", "mbp")
			tt.want.Platform, tt.want.Arch, tt.want.KernelVersion, tt.want.Hostname = "darwin", runtime.GOARCH, "23.5.0", "mbp"
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("macOSInfo (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMacDiskEncryption(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	swap := &posturev1.Volume{MountPoint: "[SWAP]", Encrypted: true, Method: "macOS encrypted swap",
		Detail: "vm.swapusage: total = 3072.00M  used = 1422.75M  free = 1649.25M  (encrypted)"}
	const apfsData = `APFS volume disk3s5 "Macintosh HD - Data" (role Data): FileVault true, encrypted true`
	tests := []struct {
		name       string
		recordings map[string]recorded
		want       *posturev1.DiskEncryption
	}{
		{
			name: "FileVault on",
			recordings: map[string]recorded{
				fdesetupLine:  {stdout: mac("fdesetup-isactive-true.stdout.txt")},
				apfsListLine:  {stdout: mac("diskutil-apfs-list.stdout.xml")},
				swapUsageLine: {stdout: mac("sysctl-vm.swapusage.stdout.txt")},
			},
			want: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: true, Volumes: []*posturev1.Volume{
				{MountPoint: "/System/Volumes/Data", Device: "/dev/disk3s5", Encrypted: true, Method: "FileVault",
					Detail: "fdesetup isactive: FileVault on; " + apfsData},
				swap,
			}},
		},
		{
			name: "FileVault off",
			recordings: map[string]recorded{
				fdesetupLine:  {stdout: mac("fdesetup-isactive-false.stdout.txt"), exitCode: 1},
				apfsListLine:  {stdout: mac("diskutil-apfs-list.stdout.xml")},
				swapUsageLine: {stdout: mac("sysctl-vm.swapusage.stdout.txt")},
			},
			want: &posturev1.DiskEncryption{Meta: ok, Volumes: []*posturev1.Volume{
				{MountPoint: "/System/Volumes/Data", Device: "/dev/disk3s5",
					Detail: "fdesetup isactive: FileVault off; " + apfsData},
				swap,
			}},
		},
		{
			// fdesetup(8): isactive exits 2 while FileVault is busy
			// encrypting or decrypting (boxen/puppet-boxen#60 saw it
			// during a conversion); nothing on stdout is relied on.
			name: "FileVault busy converting",
			recordings: map[string]recorded{
				fdesetupLine:  {exitCode: 2},
				apfsListLine:  {stdout: mac("diskutil-apfs-list-migrating.stdout.xml")},
				swapUsageLine: {stdout: mac("sysctl-vm.swapusage.stdout.txt")},
			},
			want: &posturev1.DiskEncryption{Meta: ok, Volumes: []*posturev1.Volume{
				{MountPoint: "/System/Volumes/Data", Device: "/dev/disk3s5", Method: "FileVault",
					Detail: "fdesetup isactive: FileVault on but busy: encryption or decryption in progress (exit status 2); " +
						apfsData + ", encryption or decryption still in progress"},
				swap,
			}},
		},
		{
			name: "FileVault still encrypting",
			recordings: map[string]recorded{
				fdesetupLine:  {stdout: mac("fdesetup-isactive-true.stdout.txt")},
				apfsListLine:  {stdout: mac("diskutil-apfs-list-migrating.stdout.xml")},
				swapUsageLine: {stdout: mac("sysctl-vm.swapusage.stdout.txt")},
			},
			want: &posturev1.DiskEncryption{Meta: ok, Volumes: []*posturev1.Volume{
				{MountPoint: "/System/Volumes/Data", Device: "/dev/disk3s5", Method: "FileVault",
					Detail: "fdesetup isactive: FileVault on; " + apfsData + ", encryption or decryption still in progress"},
				swap,
			}},
		},
		{
			name: "diskutil fails",
			recordings: map[string]recorded{
				fdesetupLine:  {stdout: mac("fdesetup-isactive-true.stdout.txt")},
				apfsListLine:  {exitCode: 1},
				swapUsageLine: {stdout: mac("sysctl-vm.swapusage.stdout.txt")},
			},
			want: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: true, Volumes: []*posturev1.Volume{
				{MountPoint: "/System/Volumes/Data", Device: "/dev/disk3s5", Encrypted: true, Method: "FileVault",
					Detail: "fdesetup isactive: FileVault on; /usr/sbin/diskutil apfs list -plist exited with status 1"},
				swap,
			}},
		},
		{
			name:       "fdesetup fails",
			recordings: map[string]recorded{fdesetupLine: {exitCode: 64}},
			want: &posturev1.DiskEncryption{Meta: metaAt(testTime, posturev1.Status_STATUS_ERROR,
				"/usr/bin/fdesetup isactive exited with status 64")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newMacCollector(t, tt.recordings)
			got := c.macDiskEncryption(context.Background(), "/System/Volumes/Data", "/dev/disk3s5")
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), ignoreOtherVolumes); diff != "" {
				t.Errorf("macDiskEncryption (-want +got):\n%s", diff)
			}
			if m := got.GetOtherVolumes().GetMeta(); m.GetStatus() != posturev1.Status_STATUS_UNAVAILABLE || m.GetReason() == "" {
				t.Errorf("other volumes: %v, want STATUS_UNAVAILABLE with a reason", m)
			}
		})
	}
}

func TestMacUpdates(t *testing.T) {
	checked := time.Date(2024, 7, 30, 8, 14, 2, 0, time.UTC)
	lastCheck := time.Date(2024, 8, 1, 7, 2, 11, 0, time.UTC)
	noScan := func(file string) recorded { return recorded{stdout: mac(file)} }
	tests := []struct {
		name       string
		recordings map[string]recorded
		want       *posturev1.Updates
	}{
		{
			name:       "two recommended updates",
			recordings: map[string]recorded{suPrefsLine: {stdout: mac("defaults-softwareupdate.stdout.txt")}},
			want: &posturev1.Updates{Meta: metaAt(checked, posturev1.Status_STATUS_OK, ""), Manager: "softwareupdate",
				Pending: 2, SecurityPending: 1},
		},
		{
			// Apple publishes security content for Safari updates too.
			name:       "Safari, a supplemental update and a security update",
			recordings: map[string]recorded{suPrefsLine: {stdout: mac("defaults-softwareupdate-10.15.7-safari.stdout.txt")}},
			want: &posturev1.Updates{Meta: metaAt(time.Date(2021, 4, 8, 15, 46, 36, 0, time.UTC), posturev1.Status_STATUS_OK, ""),
				Manager: "softwareupdate", Pending: 3, SecurityPending: 3},
		},
		{
			name:       "up to date",
			recordings: map[string]recorded{suPrefsLine: {stdout: mac("defaults-softwareupdate-current.stdout.txt")}},
			want:       &posturev1.Updates{Meta: metaAt(lastCheck, posturev1.Status_STATUS_OK, ""), Manager: "softwareupdate"},
		},
		{
			name: "count without the list before macOS 15.4",
			recordings: map[string]recorded{suPrefsLine: {stdout: mac("defaults-softwareupdate-unset.stdout.txt")},
				swVersLine: {stdout: mac("sw_vers-13.3.1-rsr-tabs.stdout.txt")}},
			want: &posturev1.Updates{Meta: metaAt(lastCheck, posturev1.Status_STATUS_OK, ""),
				Manager: "softwareupdate", Pending: 1, SecurityPending: 1},
		},
		{
			// macOS 15.4 no longer keeps the count current
			// (root3nl/SupportApp#207): the last scan's list decides.
			name: "macOS 15.4 lists the last scan instead of the stale count",
			recordings: map[string]recorded{suPrefsLine: {stdout: mac("defaults-softwareupdate-unset.stdout.txt")},
				swVersLine:   {stdout: mac("sw_vers-15.4.1.stdout.txt")},
				suNoScanLine: noScan("softwareupdate-list-no-update-available-noscan.output.txt")},
			want: &posturev1.Updates{Meta: metaAt(lastCheck, posturev1.Status_STATUS_OK, ""), Manager: "softwareupdate"},
		},
		{
			name: "macOS 15.4 with two updates in the last scan",
			recordings: map[string]recorded{suPrefsLine: {stdout: mac("defaults-softwareupdate-unset.stdout.txt")},
				swVersLine:   {stdout: mac("sw_vers-15.4.1.stdout.txt")},
				suNoScanLine: noScan("softwareupdate-list-multiple-updates-available-noscan.output.txt")},
			want: &posturev1.Updates{Meta: metaAt(lastCheck, posturev1.Status_STATUS_OK, ""), Manager: "softwareupdate",
				Pending: 2, SecurityPending: 1},
		},
		{
			name: "a failed scan stays unknown",
			recordings: map[string]recorded{suPrefsLine: {stdout: mac("defaults-softwareupdate-unset.stdout.txt")},
				swVersLine:   {stdout: mac("sw_vers-15.4.1.stdout.txt")},
				suNoScanLine: noScan("softwareupdate-list-error-scan.output.txt")},
			want: &posturev1.Updates{Manager: "softwareupdate", Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				`softwareupdate --list reports a failed scan ("Scan finished with error: Error Domain=NSURLErrorDomain Code=-1005 `+
					`\"The network connection was …"); pending updates are unknown until a scan succeeds (softwareupdate --list)`)},
		},
		{
			name:       "never checked",
			recordings: map[string]recorded{suPrefsLine: {stderr: mac("defaults-softwareupdate-missing.stderr.txt"), exitCode: 1}},
			want: &posturev1.Updates{Manager: "softwareupdate", Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"softwareupdate has not recorded a check in /Library/Preferences/com.apple.SoftwareUpdate (run softwareupdate --list)")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newMacCollector(t, tt.recordings)
			got := c.macUpdates(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("macUpdates (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseSoftwareUpdateList(t *testing.T) {
	tests := []struct {
		file              string
		pending, security uint32
	}{
		{"softwareupdate-list-update-available-noscan.output.txt", 1, 1},
		{"softwareupdate-list-multiple-updates-available-noscan.output.txt", 2, 1},
		{"softwareupdate-list-no-update-available-noscan.output.txt", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "macos", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			pending, security, err := parseSoftwareUpdateList(b)
			if err != nil || pending != tt.pending || security != tt.security {
				t.Errorf("parseSoftwareUpdateList = %d, %d, %v; want %d, %d", pending, security, err, tt.pending, tt.security)
			}
		})
	}
	if _, _, err := parseSoftwareUpdateList([]byte("Software Update Tool\n\n")); err == nil {
		t.Error("output without a list or \"No new software available\" was accepted as no updates")
	}
}

func TestMacAutoUpdate(t *testing.T) {
	noManaged := recorded{stderr: mac("defaults-managed-missing.stderr.txt"), exitCode: 1}
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	tests := []struct {
		name          string
		local, manage recorded
		want          *posturev1.AutoUpdate
	}{
		{
			name: "security updates install automatically", local: recorded{stdout: mac("defaults-softwareupdate.stdout.txt")}, manage: noManaged,
			want: &posturev1.AutoUpdate{Meta: ok, Enabled: true, Mechanism: "softwareupdate",
				Detail: "check true, download true, install security responses and system files true, install macOS updates false"},
		},
		{
			name: "a profile turns security responses off", local: recorded{stdout: mac("defaults-softwareupdate.stdout.txt")},
			manage: recorded{stdout: mac("defaults-softwareupdate-managed.stdout.txt")},
			want: &posturev1.AutoUpdate{Meta: ok, Mechanism: "softwareupdate",
				Detail: "check true, download true, install security responses and system files false, install macOS updates false"},
		},
		{
			name: "settings never changed", local: recorded{stdout: mac("defaults-softwareupdate-unset.stdout.txt")}, manage: noManaged,
			want: &posturev1.AutoUpdate{Mechanism: "softwareupdate", Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"AutomaticCheckEnabled and CriticalUpdateInstall not set in /Library/Preferences/com.apple.SoftwareUpdate or a configuration profile: "+
					"the macOS default applies and cannot be read")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newMacCollector(t, map[string]recorded{suPrefsLine: tt.local, suManagedLine: tt.manage})
			got := c.macAutoUpdate(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("macAutoUpdate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMacFirewall(t *testing.T) {
	on := &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Enabled: true, Product: "Application Firewall"}
	off := &posturev1.Firewall{Product: "Application Firewall", Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Detail: "the Application Firewall is off (System Settings › Network › Firewall)"}
	macOS15 := recorded{stdout: mac("sw_vers-15.1.stdout.txt")}
	macOS13 := recorded{stdout: mac("sw_vers-13.3.1-rsr-tabs.stdout.txt")}
	tests := []struct {
		name       string
		recordings map[string]recorded
		want       *posturev1.Firewall
	}{
		{"macOS 15 on", map[string]recorded{swVersLine: macOS15,
			socketfilterLine: {stdout: mac("socketfilterfw-state1.stdout.txt")}}, on},
		{"macOS 15 off", map[string]recorded{swVersLine: macOS15,
			socketfilterLine: {stdout: mac("socketfilterfw-state0.stdout.txt")}}, off},
		{"macOS 15 blocking all incoming connections", map[string]recorded{swVersLine: macOS15,
			socketfilterLine: {stdout: mac("socketfilterfw-state2-sequoia.stdout.txt")}}, on},
		{"macOS 15 state 2, older wording", map[string]recorded{swVersLine: macOS15,
			socketfilterLine: {stdout: mac("socketfilterfw-state2.stdout.txt")}}, on},
		{"macOS 13 on", map[string]recorded{swVersLine: macOS13,
			alfLine: {stdout: mac("defaults-alf-globalstate-1.stdout.txt")}}, on},
		{"macOS 13 off", map[string]recorded{swVersLine: macOS13,
			alfLine: {stdout: mac("defaults-alf-globalstate-0.stdout.txt")}}, off},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, r := newMacCollector(t, tt.recordings)
			for range 2 {
				got := c.macFirewall(context.Background())
				if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
					t.Errorf("macFirewall (-want +got):\n%s", diff)
				}
			}
			if n := r.count(swVersLine); n != 1 {
				t.Errorf("sw_vers ran %d times for two measurements, want 1", n)
			}
		})
	}
}

func TestMacScreenLock(t *testing.T) {
	alice := recorded{stdout: mac("stat-console-alice.stdout.txt")}
	tests := []struct {
		name       string
		euid       int
		recordings map[string]recorded
		want       *posturev1.ScreenLock
	}{
		{
			name: "screen saver after 10 min, password after 5 more",
			recordings: map[string]recorded{consoleLine: alice,
				sysadminctlLine: {stderr: mac("sysadminctl-screenlock-300.stderr.txt")},
				idleTimeLine:    {stdout: mac("defaults-idletime-600.stdout.txt")},
				pmsetLine:       {stdout: mac("pmset-g.stdout.txt")}},
			want: &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Enabled: true, TimeoutSeconds: 900},
		},
		{
			name: "display sleep decides when the screen saver is unset",
			recordings: map[string]recorded{consoleLine: alice,
				sysadminctlLine: {stderr: mac("sysadminctl-screenlock-immediate.stderr.txt")},
				idleTimeLine:    {stderr: mac("defaults-idletime-missing.stderr.txt"), exitCode: 1},
				pmsetLine:       {stdout: mac("pmset-g.stdout.txt")}},
			want: &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Enabled: true, TimeoutSeconds: 600},
		},
		{
			name: "no password",
			recordings: map[string]recorded{consoleLine: alice,
				sysadminctlLine: {stderr: mac("sysadminctl-screenlock-off.stderr.txt")},
				idleTimeLine:    {stdout: mac("defaults-idletime-600.stdout.txt")},
				pmsetLine:       {stdout: mac("pmset-g.stdout.txt")}},
			want: &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Detail: "no password is required after the screen saver starts or the display sleeps (System Settings › Lock Screen)"},
		},
		{
			name: "never idle",
			recordings: map[string]recorded{consoleLine: alice,
				sysadminctlLine: {stderr: mac("sysadminctl-screenlock-immediate.stderr.txt")},
				idleTimeLine:    {stdout: mac("defaults-idletime-0.stdout.txt")},
				pmsetLine:       {stdout: mac("pmset-g-never.stdout.txt")}},
			want: &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Detail: "neither the screen saver (idleTime 0) nor display sleep (displaysleep 0) ever starts, so the screen never locks"},
		},
		{
			name:       "nobody logged in",
			recordings: map[string]recorded{consoleLine: {stdout: mac("stat-console-root.stdout.txt")}},
			want:       &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_NOT_APPLICABLE, "no graphical session")},
		},
		{
			name:       "agent is another user",
			euid:       502,
			recordings: map[string]recorded{consoleLine: alice},
			want: &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs root to read the settings of user alice: access denied")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newMacCollector(t, tt.recordings)
			c.euid = tt.euid
			got := c.macScreenLock(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("macScreenLock (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMacEndpointProtection(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	const product = "macOS SIP and Gatekeeper"
	gatekeeperOn := recorded{stdout: mac("spctl-enabled.stdout.txt")}
	tests := []struct {
		name         string
		csr, spctlOK recorded
		want         *posturev1.EndpointProtection
	}{
		{"both on", recorded{stdout: mac("csrutil-enabled.stdout.txt")}, gatekeeperOn,
			&posturev1.EndpointProtection{Meta: ok, Product: product, Enabled: true, SystemIntegrityProtection: true, Gatekeeper: true}},
		{"SIP off", recorded{stdout: mac("csrutil-disabled.stdout.txt")}, gatekeeperOn,
			&posturev1.EndpointProtection{Meta: ok, Product: product, Gatekeeper: true,
				Detail: "System Integrity Protection is disabled (csrutil enable in recoveryOS)"}},
		{"custom SIP on Big Sur", recorded{stdout: mac("csrutil-custom-11.0.1.stdout.txt")}, gatekeeperOn,
			&posturev1.EndpointProtection{Meta: ok, Product: product, Gatekeeper: true,
				Detail: "System Integrity Protection is a custom configuration with Filesystem Protections and Debugging Restrictions " +
					"disabled (csrutil enable in recoveryOS)"}},
		{"El Capitan says enabled with every protection off", recorded{stdout: mac("csrutil-custom-10.11-all-off.stdout.txt")}, gatekeeperOn,
			&posturev1.EndpointProtection{Meta: ok, Product: product, Gatekeeper: true,
				Detail: "System Integrity Protection is a custom configuration with Kext Signing, Filesystem Protections, " +
					"Debugging Restrictions, DTrace Restrictions and NVRAM Protections disabled (csrutil enable in recoveryOS)"}},
		{"Gatekeeper off", recorded{stdout: mac("csrutil-enabled.stdout.txt")}, recorded{stdout: mac("spctl-disabled.stdout.txt"), exitCode: 1},
			&posturev1.EndpointProtection{Meta: ok, Product: product, SystemIntegrityProtection: true,
				Detail: "Gatekeeper is off (spctl --global-enable)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newMacCollector(t, map[string]recorded{csrutilLine: tt.csr, spctlLine: tt.spctlOK})
			got := c.macEndpointProtection(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("macEndpointProtection (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMacSecureBoot(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	tests := []struct {
		name         string
		appleSilicon bool
		euid         int
		rec          recorded
		want         *posturev1.SecureBoot
	}{
		// system_profiler shows the boot policy without root.
		{name: "Apple silicon, full security, not root", appleSilicon: true, euid: 501,
			rec:  recorded{stdout: mac("system_profiler-SPiBridgeDataType-applesilicon-full.stdout.txt")},
			want: &posturev1.SecureBoot{Meta: ok, Enabled: true}},
		{name: "Apple silicon, nothing printed", appleSilicon: true, rec: recorded{},
			want: &posturev1.SecureBoot{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"system_profiler SPiBridgeDataType printed nothing on an Apple silicon Mac, so the boot policy could not be read")}},
		{name: "T2 shows no secure boot level", rec: recorded{stdout: mac("system_profiler-SPiBridgeDataType-t2-10.13.6.stdout.txt")},
			want: &posturev1.SecureBoot{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"system_profiler SPiBridgeDataType shows this T2 Mac's controller (Apple T2 chip) but no \"Secure Boot:\" level, "+
					"so the level set in Startup Security Utility is not measured; check it in recoveryOS")}},
		{name: "Intel without T2", rec: recorded{},
			want: &posturev1.SecureBoot{Meta: metaAt(testTime, posturev1.Status_STATUS_OK,
				"this Intel Mac has no T2 security chip, so it has no secure boot")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, r := newMacCollector(t, map[string]recorded{iBridgeLine: tt.rec})
			c.euid = tt.euid
			for range 2 {
				got := c.macSecureBoot(context.Background(), tt.appleSilicon)
				if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
					t.Errorf("macSecureBoot (-want +got):\n%s", diff)
				}
			}
			if n := r.count(iBridgeLine); n > 2 {
				t.Errorf("system_profiler ran %d times, want at most twice", n)
			}
		})
	}
}

// TestParseIBridgeLevels holds the parser to every level Startup Security
// Utility offers. Only Full Security (Apple silicon) was found in a
// captured output; the other lines follow the level names of Apple's
// platform security guide, nested as the Apple silicon capture nests them.
func TestParseIBridgeLevels(t *testing.T) {
	tests := []struct {
		level   string
		status  posturev1.Status
		enabled bool
		reason  string
	}{
		{"Full Security", posturev1.Status_STATUS_OK, true, ""},
		{"Reduced Security", posturev1.Status_STATUS_OK, true,
			"the boot policy is Reduced Security: older signed macOS versions and, if allowed, kernel extensions may load " +
				"(set Full Security in Startup Security Utility in recoveryOS)"},
		{"Permissive Security", posturev1.Status_STATUS_OK, false,
			"the boot policy is Permissive Security: macOS does not require Apple-signed boot software " +
				"(set Full Security in Startup Security Utility in recoveryOS)"},
		{"Medium Security", posturev1.Status_STATUS_OK, true,
			"the boot policy is Medium Security: any signed macOS version Apple ever trusted may boot " +
				"(set Full Security in Startup Security Utility in recoveryOS)"},
		{"No Security", posturev1.Status_STATUS_OK, false,
			"Startup Security Utility is set to No Security (set Full Security in recoveryOS)"},
		{"Sécurité complète", posturev1.Status_STATUS_UNAVAILABLE, false,
			`system_profiler SPiBridgeDataType shows the boot policy "Sécurité complète", which is not a level this agent knows ` +
				`(system_profiler may show it translated on a Mac set to another language)`},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			out := "Controller:\n      Boot Policy:\n        Secure Boot: " + tt.level + "\n"
			got := parseIBridge([]byte(out), true, testTime)
			want := &posturev1.SecureBoot{Meta: metaAt(testTime, tt.status, tt.reason), Enabled: tt.enabled}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("parseIBridge(%q) (-want +got):\n%s", tt.level, diff)
			}
		})
	}
}

// decodeDefaults reads what "defaults read" prints: quoted and bare
// strings with their escapes, numbers as text, arrays, nested
// dictionaries, data in both forms macOS prints it, and booleans as 1/0 or
// words.
func TestDecodeDefaults(t *testing.T) {
	in := `{
    Name = "line\nbreak \"quoted\" caf\U00e9";
    Count = 3;
    Blob = {length = 4, bytes = 0x62706c69 ... 00000000 };
    Hex = <0fbd7789>;
    List =     (
        a,
        "b c"
    );
    Nested =     {
        On = 1;
        Word = YES;
        Off = false;
        Odd = maybe;
    };
}`
	type nested struct{ On, Word, Off, Odd, Missing prefBool }
	var got struct {
		Name   string
		Count  string
		Blob   []byte
		Hex    []byte
		List   []string
		Nested nested
	}
	if err := decodeDefaults([]byte(in), &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "line\nbreak \"quoted\" café" || got.Count != "3" || len(got.Blob) != 0 ||
		!bytes.Equal(got.Hex, []byte{0x0f, 0xbd, 0x77, 0x89}) || !slices.Equal(got.List, []string{"a", "b c"}) {
		t.Errorf("decodeDefaults = %+v", got)
	}
	want := nested{On: prefBool{true, true}, Word: prefBool{true, true}, Off: prefBool{false, true}}
	if got.Nested != want {
		t.Errorf("booleans = %+v, want %+v (an unreadable or missing one unset)", got.Nested, want)
	}
	for _, bad := range []string{"", "{ a = 1;", "( a, b", "{ a 1; }"} {
		var v map[string]any
		if err := decodeDefaults([]byte(bad), &v); err == nil {
			t.Errorf("decodeDefaults(%q) succeeded, want an error", bad)
		}
	}
}

func TestParseSocketfilterfwState(t *testing.T) {
	tests := map[string]int{
		"socketfilterfw-state1.stdout.txt":         1,
		"socketfilterfw-state0.stdout.txt":         0,
		"socketfilterfw-state2.stdout.txt":         2,
		"socketfilterfw-state2-sequoia.stdout.txt": 2,
	}
	for file, want := range tests {
		b, err := os.ReadFile(filepath.Join("testdata", "macos", file))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := parseSocketfilterfwState(b); err != nil || got != want {
			t.Errorf("parseSocketfilterfwState(%s) = %d, %v; want %d", file, got, err, want)
		}
	}
	if _, err := parseSocketfilterfwState([]byte("usage: socketfilterfw")); err == nil {
		t.Error("parseSocketfilterfwState accepted a usage message")
	}
}
