package signals

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The Windows measurements run on every OS against captured "reg query",
// PowerShell and manage-bde outputs in testdata/windows where public
// material holds them, and against JSON registry snapshots and WMI rows
// written from Microsoft's documentation where it does not (the README
// there says which is which).

// newWinCollector is a Collector reading the given registry snapshot and
// WMI rows.
func newWinCollector(t *testing.T, registryFile, wmiFile string) *Collector {
	c := New(Options{Root: t.TempDir(), Now: fixedNow})
	if registryFile != "" {
		c.registry = loadRegistry(t, registryFile)
	}
	if wmiFile != "" {
		c.wmi = loadWMI(t, wmiFile)
	}
	return c
}

func TestWinOSInfo(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	tests := []struct {
		file string
		want *posturev1.OSInfo
	}{
		{"win11-23h2.registry.json",
			&posturev1.OSInfo{Meta: ok, Name: "Windows 11 Pro", Version: "10.0.22631.3880", KernelVersion: "10.0.22631.3880",
				Build: "22631.3880", DisplayVersion: "23H2"}},
		{"win10-22h2-bios.registry.json",
			&posturev1.OSInfo{Meta: ok, Name: "Windows 10 Enterprise", Version: "10.0.19045.4651", KernelVersion: "10.0.19045.4651",
				Build: "19045.4651", DisplayVersion: "22H2"}},
		{"server2022.registry.json",
			&posturev1.OSInfo{Meta: ok, Name: "Windows Server 2022 Datacenter", Version: "10.0.20348.2582", KernelVersion: "10.0.20348.2582",
				Build: "20348.2582", DisplayVersion: "21H2"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c := newWinCollector(t, tt.file, "")
			got := c.winOSInfo("desk-42")
			tt.want.Platform, tt.want.Arch, tt.want.Hostname = "windows", runtime.GOARCH, "desk-42"
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winOSInfo (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("no registry", func(t *testing.T) {
		got := New(Options{Now: fixedNow}).winOSInfo("")
		if got.GetMeta().GetStatus() != posturev1.Status_STATUS_UNAVAILABLE {
			t.Errorf("got %v, want STATUS_UNAVAILABLE", got.GetMeta())
		}
	})
}

func TestWinDiskEncryption(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	const (
		volC = `\\?\Volume{4f3a2b1c-0d9e-4f8a-b7c6-d5e4f3a2b1c0}\`
		volD = `\\?\Volume{9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d}\`
	)
	tests := []struct {
		name, wmi, drive string
		want             *posturev1.DiskEncryption
		others           []*posturev1.Volume
	}{
		{
			name: "system drive encrypted, data drive converting", wmi: "laptop.wmi.json", drive: "C:",
			want: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: true, Volumes: []*posturev1.Volume{{
				MountPoint: "C:", Device: volC, Encrypted: true, Method: "BitLocker",
				Detail: "BitLocker fully encrypted, protection on, XTS-AES-256"}}},
			others: []*posturev1.Volume{{MountPoint: "D:", Device: volD,
				Detail: "BitLocker encryption in progress (41% encrypted), protection off, XTS-AES-256"}},
		},
		{
			name: "system drive D: with protection suspended", wmi: "suspended.wmi.json", drive: "d:",
			want: &posturev1.DiskEncryption{Meta: ok, Volumes: []*posturev1.Volume{{
				MountPoint: "D:", Device: volD,
				Detail: "BitLocker fully encrypted, protection suspended: the key is stored unprotected on the disk " +
					"(manage-bde -protectors -enable D:), XTS-AES-128"}}},
			others: []*posturev1.Volume{{MountPoint: "C:", Device: volC, Encrypted: true, Method: "BitLocker",
				Detail: "BitLocker fully encrypted, protection on, XTS-AES-128"}},
		},
		{
			name: "standard user", wmi: "standard-user.wmi.json", drive: "C:",
			want: &posturev1.DiskEncryption{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs administrator rights to query BitLocker: BitLocker (WMI Win32_EncryptableVolume): Access denied (0x80041003): access denied")},
		},
		{
			name: "no volume for the system drive", wmi: "laptop.wmi.json", drive: "F:",
			want: &posturev1.DiskEncryption{Meta: metaAt(testTime, posturev1.Status_STATUS_ERROR,
				"BitLocker lists no volume for the system drive F: (4 volumes listed)")},
			others: []*posturev1.Volume{
				{MountPoint: "C:", Device: volC, Encrypted: true, Method: "BitLocker", Detail: "BitLocker fully encrypted, protection on, XTS-AES-256"},
				{MountPoint: "D:", Device: volD, Detail: "BitLocker encryption in progress (41% encrypted), protection off, XTS-AES-256"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newWinCollector(t, "", tt.wmi)
			got := c.winDiskEncryption(context.Background(), tt.drive)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), ignoreOtherVolumes); diff != "" {
				t.Errorf("winDiskEncryption (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.others, got.GetOtherVolumes().GetVolumes(), protocmp.Transform()); diff != "" {
				t.Errorf("other volumes (-want +got):\n%s", diff)
			}
			if got.GetOtherVolumes().GetMeta().GetStatus() == posturev1.Status_STATUS_UNSPECIFIED {
				t.Errorf("other volumes without a status: %v", got.GetOtherVolumes())
			}
		})
	}
}

func TestWinSecureBoot(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	tests := []struct {
		file string
		want *posturev1.SecureBoot
	}{
		{"win11-23h2.registry.json", &posturev1.SecureBoot{Meta: ok, Enabled: true}},
		{"win10-22h2-bios.registry.json", &posturev1.SecureBoot{Meta: ok, LegacyBios: true}},
		{"server2022.registry.json", &posturev1.SecureBoot{Meta: ok}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := newWinCollector(t, tt.file, "").winSecureBoot()
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winSecureBoot (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWinFirewall(t *testing.T) {
	const product = "Windows Defender Firewall"
	tests := []struct {
		file string
		want *posturev1.Firewall
	}{
		{"win11-23h2.registry.json", &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Enabled: true, Product: product}},
		{"win10-22h2-bios.registry.json", &posturev1.Firewall{Product: product,
			Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Detail: "the Public profile is off (Group Policy)"}},
		{"server2022.registry.json", &posturev1.Firewall{Product: product,
			Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Detail: "the Windows Defender Firewall service (mpssvc) is disabled"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := newWinCollector(t, tt.file, "").winFirewall()
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winFirewall (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWinScreenLock(t *testing.T) {
	tests := []struct {
		file string
		want *posturev1.ScreenLock
	}{
		{"win11-23h2.registry.json", &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Enabled: true, TimeoutSeconds: 900}},
		// alice's own screen saver (600 s); bob's policy makes his secure (300 s).
		{"win10-22h2-bios.registry.json", &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""), Enabled: true, TimeoutSeconds: 600}},
		{"server2022.registry.json", &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_NOT_APPLICABLE, "no user is logged on")}},
		{"standard-user.registry.json", &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
			`read registry HKU\S-1-5-21-3623811015-3361044348-30300820-1001\Control Panel\Desktop: `+
				`open HKU\S-1-5-21-3623811015-3361044348-30300820-1001\Control Panel\Desktop: Access is denied.: access denied`)}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := newWinCollector(t, tt.file, "").winScreenLock()
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winScreenLock (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWinScreenLockState(t *testing.T) {
	desk := func(active, secure, timeout, exe string) userScreenSaver {
		return userScreenSaver{own: map[string]any{"ScreenSaveActive": active, "ScreenSaverIsSecure": secure,
			"ScreenSaveTimeOut": timeout, "SCRNSAVE.EXE": exe}}
	}
	got := winScreenLockState(map[string]userScreenSaver{
		"S-1-5-21-1-2-3-1001": desk("1", "1", "600", ""),
		"S-1-5-21-1-2-3-1002": desk("1", "0", "600", "scrnsave.scr"),
		"S-1-5-21-1-2-3-1003": desk("1", "1", "0", "scrnsave.scr"),
	}, testTime)
	const want = "user S-1-5-21-1-2-3-1001 has no screen saver; " +
		"user S-1-5-21-1-2-3-1002's screen saver does not ask for the password; " +
		"user S-1-5-21-1-2-3-1003's screen saver has no timeout " +
		"(set the policy \"Interactive logon: Machine inactivity limit\"; locking on display sleep is not examined)"
	if got.GetEnabled() || got.GetMeta().GetStatus() != posturev1.Status_STATUS_OK || got.GetDetail() != want {
		t.Errorf("winScreenLockState = %v, want OK, not enabled, with the detail %q", got, want)
	}
}

func TestWinEndpointProtection(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	const product = "Microsoft Defender Antivirus"
	tests := []struct {
		file string
		want *posturev1.EndpointProtection
	}{
		{"laptop.wmi.json", &posturev1.EndpointProtection{Meta: ok, Product: product, Enabled: true, RealTimeProtection: true,
			SignatureAgeDays: 1, TamperProtection: true, RunningMode: "Normal"}},
		{"suspended.wmi.json", &posturev1.EndpointProtection{Meta: ok, Product: product, SignatureAgeDays: 12, RunningMode: "Passive Mode",
			Detail: "real-time protection is off; Defender runs in Passive Mode: another antivirus product is primary " +
				"and Defender does not remediate threats; tamper protection is off"}},
		{"standard-user.wmi.json", &posturev1.EndpointProtection{Product: product, Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
			"Microsoft Defender's WMI provider is missing, so Defender is not installed; third-party antivirus products are not examined")}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c := newWinCollector(t, "", tt.file)
			got := c.winEndpointProtection(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winEndpointProtection (-want +got):\n%s", diff)
			}
			if q := c.wmi.(*fakeWMI).queries; len(q) != 1 || q[0] != `ROOT\Microsoft\Windows\Defender SELECT * FROM MSFT_MpComputerStatus` {
				t.Errorf("queries = %q", q)
			}
		})
	}
}

func TestWinAutoUpdate(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	const mech = "Windows Update"
	tests := []struct {
		file string
		want *posturev1.AutoUpdate
	}{
		{"win11-23h2.registry.json", &posturev1.AutoUpdate{Meta: ok, Enabled: true, Mechanism: mech,
			Detail: "no Windows Update policy: Windows downloads and installs updates automatically"}},
		{"win10-22h2-bios.registry.json", &posturev1.AutoUpdate{Meta: ok, Mechanism: mech,
			Detail: `automatic updates are turned off by policy (NoAutoUpdate=1 in HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU)`}},
		{"server2022.registry.json", &posturev1.AutoUpdate{Meta: ok, Mechanism: mech, Detail: "updates are paused until 2025-06-01T07:00:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := newWinCollector(t, tt.file, "").winAutoUpdate()
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winAutoUpdate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWinAutoUpdateState(t *testing.T) {
	now := testTime
	tests := []struct {
		svc, pol, ux map[string]any
		enabled      bool
		detail       string
	}{
		{svc: map[string]any{"Start": uint64(4)}, detail: "the Windows Update service (wuauserv) is disabled"},
		{pol: map[string]any{"AUOptions": uint64(4)}, enabled: true, detail: "policy AUOptions=4: updates are downloaded and installed on a schedule"},
		{pol: map[string]any{"AUOptions": uint64(2)}, detail: "policy AUOptions=2: Windows only notifies before downloading updates"},
		{pol: map[string]any{"AUOptions": uint64(3)}, detail: "policy AUOptions=3: updates are downloaded but a person must install them"},
		{pol: map[string]any{"AUOptions": uint64(5)}, detail: "policy AUOptions=5 lets the local administrator choose, and that choice is not read"},
		{ux: map[string]any{"PauseUpdatesExpiryTime": "2025-05-01T00:00:00Z"}, enabled: true,
			detail: "no Windows Update policy: Windows downloads and installs updates automatically"},
	}
	for _, tt := range tests {
		got := winAutoUpdateState(tt.svc, tt.pol, tt.ux, now)
		if got.GetEnabled() != tt.enabled || got.GetDetail() != tt.detail || got.GetMeta().GetStatus() != posturev1.Status_STATUS_OK {
			t.Errorf("winAutoUpdateState(%v, %v, %v) = %v; want OK, enabled %v, %q", tt.svc, tt.pol, tt.ux, got, tt.enabled, tt.detail)
		}
	}
}

func TestWinLastInstalled(t *testing.T) {
	tests := []struct {
		file string
		want *posturev1.InstalledUpdate
	}{
		{"laptop.wmi.json", &posturev1.InstalledUpdate{Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""),
			Id: "KB5040442", InstalledAt: timestamppb.New(time.Date(2024, 7, 10, 0, 0, 0, 0, time.UTC))}},
		{"suspended.wmi.json", &posturev1.InstalledUpdate{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
			"needs administrator rights to list installed updates: WMI query \"SELECT HotFixID, Description, InstalledOn FROM Win32_QuickFixEngineering\" "+
				"in ROOT\\CIMV2: Access denied (0x80041003): access denied")}},
		{"standard-user.wmi.json", &posturev1.InstalledUpdate{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
			"none of the 0 installed updates in Win32_QuickFixEngineering has a readable InstalledOn date")}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := newWinCollector(t, "", tt.file).winLastInstalled(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winLastInstalled (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseHotfixDate(t *testing.T) {
	tests := []struct {
		in       string
		dayFirst bool
		want     time.Time
	}{
		{"7/10/2024", false, time.Date(2024, 7, 10, 0, 0, 0, 0, time.UTC)},
		{"12/1/2023", false, time.Date(2023, 12, 1, 0, 0, 0, 0, time.UTC)},
		{"12/1/2023", true, time.Date(2023, 1, 12, 0, 0, 0, 0, time.UTC)},
		{"14.02.2024", false, time.Date(2024, 2, 14, 0, 0, 0, 0, time.UTC)},
		{"2024-07-10", false, time.Date(2024, 7, 10, 0, 0, 0, 0, time.UTC)},
		{"01d99e5329820000", false, time.Date(2023, 6, 14, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		if got, ok := parseHotfixDate(tt.in, tt.dayFirst); !ok || !got.Equal(tt.want) {
			t.Errorf("parseHotfixDate(%q, %v) = %v, %v; want %v", tt.in, tt.dayFirst, got, ok, tt.want)
		}
	}
	for _, bad := range []string{"", "13/14/2024", "not a date"} {
		if _, ok := parseHotfixDate(bad, false); ok {
			t.Errorf("parseHotfixDate(%q) succeeded", bad)
		}
	}
}

// stuckWMI never answers, as a hung WMI service does not.
type stuckWMI struct{ release chan struct{} }

func (s stuckWMI) Query(string, string, any) error { <-s.release; return nil }
func (s stuckWMI) EncryptableVolumes() ([]encryptableVolume, error) {
	<-s.release
	return nil, nil
}

func TestWMITimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	c := New(Options{Now: fixedNow, CommandTimeout: 50 * time.Millisecond})
	c.wmi = stuckWMI{release: release}
	start := time.Now()
	e := c.winEndpointProtection(context.Background())
	if time.Since(start) > 5*time.Second {
		t.Fatalf("a stuck WMI query held the measurement for %v", time.Since(start))
	}
	if e.GetMeta().GetStatus() != posturev1.Status_STATUS_ERROR {
		t.Errorf("status = %v, want STATUS_ERROR", e.GetMeta().GetStatus())
	}
	d := c.winDiskEncryption(context.Background(), "C:")
	if d.GetMeta().GetStatus() != posturev1.Status_STATUS_ERROR {
		t.Errorf("disk status = %v, want STATUS_ERROR", d.GetMeta().GetStatus())
	}
	_, err := withTimeout(context.Background(), c, "x", func() (int, error) { <-release; return 0, nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("withTimeout err = %v, want a deadline error", err)
	}
}

func TestWinUpdates(t *testing.T) {
	got := New(Options{Now: fixedNow}).winUpdates()
	if got.GetManager() != "Windows Update" || got.GetMeta().GetStatus() != posturev1.Status_STATUS_UNAVAILABLE || got.GetMeta().GetReason() == "" {
		t.Errorf("winUpdates = %v, want STATUS_UNAVAILABLE with a reason", got)
	}
}

// TestWinOSInfoCaptured reads "reg query" outputs captured on Windows 11
// 23H2, which still names itself "Windows 10 Pro" in ProductName, and on
// Windows 10 22H2. The captures listed REG_SZ values only (reg query /t
// REG_SZ), so UBR and CurrentMajorVersionNumber are absent, while
// CurrentVersion keeps the "6.3" Windows froze it at.
func TestWinOSInfoCaptured(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	tests := []struct {
		file string
		want *posturev1.OSInfo
	}{
		{"reg-query-currentversion-win11-23h2.stdout.txt",
			&posturev1.OSInfo{Meta: ok, Name: "Windows 11 Pro", Version: "10.0.22631", KernelVersion: "10.0.22631",
				Build: "22631", DisplayVersion: "23H2"}},
		{"reg-query-currentversion-win10-22h2.stdout.txt",
			&posturev1.OSInfo{Meta: ok, Name: "Windows 10 Enterprise", Version: "10.0.19045", KernelVersion: "10.0.19045",
				Build: "19045", DisplayVersion: "22H2"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c := New(Options{Root: t.TempDir(), Now: fixedNow})
			c.registry = loadRegQuery(t, tt.file)
			got := c.winOSInfo("desk-42")
			tt.want.Platform, tt.want.Arch, tt.want.Hostname = "windows", runtime.GOARCH, "desk-42"
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winOSInfo (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWinEndpointProtectionCaptured holds Defender's decision against
// captured Get-MpComputerStatus outputs: a server where the policy "Turn
// off Microsoft Defender Antivirus" stopped Defender (AMRunningMode "Not
// running", signatures never installed), and a 2013 Defender that has no
// AMRunningMode or IsTamperProtected yet.
func TestWinEndpointProtectionCaptured(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	const product = "Microsoft Defender Antivirus"
	tests := []struct {
		file string
		want *posturev1.EndpointProtection
	}{
		{"get-mpcomputerstatus-not-running.stdout.txt", &posturev1.EndpointProtection{Meta: ok, Product: product,
			SignatureAgeDays: math.MaxUint32, RunningMode: "Not running",
			Detail: "the antivirus is off; real-time protection is off; Microsoft Defender Antivirus is not running " +
				"(turned off, for example by the policy \"Turn off Microsoft Defender Antivirus\", or replaced by another antivirus product); " +
				"no antivirus signatures were ever installed (Update-MpSignature); tamper protection is off"}},
		{"get-mpcomputerstatus-2013.stdout.txt", &posturev1.EndpointProtection{Meta: ok, Product: product, Enabled: true,
			RealTimeProtection: true, Detail: "tamper protection is off"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c := New(Options{Root: t.TempDir(), Now: fixedNow})
			c.wmi = wmiFromPSList(t, "MSFT_MpComputerStatus", tt.file)
			got := c.winEndpointProtection(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("winEndpointProtection (-want +got):\n%s", diff)
			}
		})
	}
}

// volumeFromBitLockerVolume reads a captured Get-BitLockerVolume list into
// the Win32_EncryptableVolume method outputs it shows. The cmdlet prints
// the key protectors' types, not their IDs; the types stand in for IDs.
func volumeFromBitLockerVolume(t *testing.T, file string) encryptableVolume {
	t.Helper()
	f := readPSList(t, file)
	status := map[string]uint32{"FullyDecrypted": 0, "FullyEncrypted": 1, "EncryptionInProgress": 2}
	protection := map[string]uint32{"Off": 0, "On": 1}
	method := map[string]uint32{"None": 0, "XtsAes128": 6, "XtsAes256": 7}
	volumeType := map[string]uint32{"OperatingSystem": 0, "Data": 1}
	v := encryptableVolume{DeviceID: `\\?\Volume{` + f["MountPoint"] + `}\`, DriveLetter: f["MountPoint"]}
	for name, m := range map[string]map[string]uint32{"VolumeStatus": status, "ProtectionStatus": protection,
		"EncryptionMethod": method, "VolumeType": volumeType} {
		if _, known := m[f[name]]; !known {
			t.Fatalf("%s: %s %q is not known to the test", file, name, f[name])
		}
	}
	v.ConversionStatus, v.ProtectionStatus = status[f["VolumeStatus"]], protection[f["ProtectionStatus"]]
	v.EncryptionMethod, v.VolumeType = method[f["EncryptionMethod"]], volumeType[f["VolumeType"]]
	v.KeyProtectorIDs = []string{}
	for p := range strings.SplitSeq(strings.Trim(f["KeyProtector"], "{}"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			v.KeyProtectorIDs = append(v.KeyProtectorIDs, p)
		}
	}
	return v
}

// TestWinDiskEncryptionCaptured holds BitLocker's decision against the
// volume states in captured manage-bde -status and Get-BitLockerVolume
// outputs, in English and German.
func TestWinDiskEncryptionCaptured(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	const (
		usedSpace = "manage-bde-status-en-used-space-only-no-protectors.stdout.txt"
		progress  = "manage-bde-status-en-encryption-in-progress.stdout.txt"
		german    = "manage-bde-status-de-fully-decrypted.stdout.txt"
	)
	tests := []struct {
		name string
		vol  encryptableVolume
		want *posturev1.Volume
	}{
		{
			// Windows 11 device encryption before the user signed in with
			// a Microsoft account: encrypted, but the key is in the clear
			// and only the used blocks were encrypted.
			name: usedSpace, vol: volumeFromManageBDE(t, usedSpace, "C:", 0),
			want: &posturev1.Volume{MountPoint: "C:", Device: `\\?\Volume{C:}\`,
				Detail: "BitLocker used space only encrypted (free space was not wiped, so data deleted before encryption may still be readable: " +
					"manage-bde -w C:), protection off: the volume has no key protector, so its key is stored in the clear " +
					"(add one: manage-bde -protectors -add C: -tpm, or turn on BitLocker for the drive), XTS-AES-128"},
		},
		{
			name: progress, vol: volumeFromManageBDE(t, progress, "C:", 0),
			want: &posturev1.Volume{MountPoint: "C:", Device: `\\?\Volume{C:}\`,
				Detail: "BitLocker encryption in progress (50% encrypted), protection off, XTS-AES-128"},
		},
		{
			name: german, vol: volumeFromManageBDE(t, german, "C:", 0),
			want: &posturev1.Volume{MountPoint: "C:", Device: `\\?\Volume{C:}\`,
				Detail: "BitLocker fully decrypted, protection off"},
		},
		{
			// Intune's "waiting for TPM" state: a TPM protector exists but
			// is suspended, so resuming it is the remedy.
			name: "get-bitlockervolume-waiting-tpm.stdout.txt", vol: volumeFromBitLockerVolume(t, "get-bitlockervolume-waiting-tpm.stdout.txt"),
			want: &posturev1.Volume{MountPoint: "C:", Device: `\\?\Volume{C:}\`,
				Detail: "BitLocker fully encrypted, protection suspended: the key is stored unprotected on the disk " +
					"(manage-bde -protectors -enable C:), XTS-AES-128"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Options{Root: t.TempDir(), Now: fixedNow})
			c.wmi = &fakeWMI{volumes: []encryptableVolume{tt.vol}}
			got := c.winDiskEncryption(context.Background(), "C:")
			want := &posturev1.DiskEncryption{Meta: ok, Volumes: []*posturev1.Volume{tt.want}}
			if diff := cmp.Diff(want, got, protocmp.Transform(), ignoreOtherVolumes); diff != "" {
				t.Errorf("winDiskEncryption (-want +got):\n%s", diff)
			}
		})
	}
}

// hotfixRowsFromOsquery reads the rows of a captured osquery "patches"
// table, whose installed_on column is Win32_QuickFixEngineering's
// InstalledOn as WMI returned it.
func hotfixRowsFromOsquery(t *testing.T, file string) []quickFixEngineering {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "windows", file))
	if err != nil {
		t.Fatal(err)
	}
	var rows []quickFixEngineering
	for line := range strings.Lines(string(b)) {
		cells := strings.Split(strings.TrimSpace(line), "|")
		if len(cells) != 5 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "KB") {
			continue
		}
		rows = append(rows, quickFixEngineering{HotFixID: strings.TrimSpace(cells[1]),
			Description: strings.TrimSpace(cells[2]), InstalledOn: strings.TrimSpace(cells[3])})
	}
	if len(rows) == 0 {
		t.Fatalf("%s: no rows", file)
	}
	return rows
}

// TestNewestHotfixCaptured reads the month-first dates WMI returned in a
// captured osquery patches table: 11/10/2016 is only a date month-first
// once 8/29/2016 settles the order, and of the updates of that day the
// highest KB number is the newest.
func TestNewestHotfixCaptured(t *testing.T) {
	got := newestHotfix(hotfixRowsFromOsquery(t, "osquery-patches-installed-on.stdout.txt"))
	want := hotfixResult{id: "KB3202790", at: time.Date(2016, 11, 10, 0, 0, 0, 0, time.UTC), ok: true}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(hotfixResult{})); diff != "" {
		t.Errorf("newestHotfix (-want +got):\n%s", diff)
	}
}

// TestNewestHotfixDayFirst covers installations that write InstalledOn
// day-first. No raw capture of such a list was found in public material
// (public reports show them only through Get-HotFix, which reformats the
// date), so the rows follow the day-first forms of those reports.
func TestNewestHotfixDayFirst(t *testing.T) {
	tests := []struct {
		name string
		rows []quickFixEngineering
		want hotfixResult
	}{
		{
			name: "day-first, settled by a day above 12",
			rows: []quickFixEngineering{{HotFixID: "KB5034441", InstalledOn: "14/02/2024"}, {HotFixID: "KB5035845", InstalledOn: "03/04/2024"}},
			want: hotfixResult{id: "KB5035845", at: time.Date(2024, 4, 3, 0, 0, 0, 0, time.UTC), ok: true},
		},
		{
			name: "dotted day-first",
			rows: []quickFixEngineering{{HotFixID: "KB5034441", InstalledOn: "14.02.2024"}, {HotFixID: "KB5035845", InstalledOn: "3.4.2024"}},
			want: hotfixResult{id: "KB5035845", at: time.Date(2024, 4, 3, 0, 0, 0, 0, time.UTC), ok: true},
		},
		{
			name: "ambiguous only",
			rows: []quickFixEngineering{{HotFixID: "KB5034441", InstalledOn: "2/3/2024"}},
			want: hotfixResult{id: "KB5034441", at: time.Date(2024, 2, 3, 0, 0, 0, 0, time.UTC), ok: true,
				reason: `InstalledOn "2/3/2024" was read month-first (M/D/YYYY), the form Windows writes; ` +
					"no date in the list shows whether this installation writes them day-first"},
		},
		{
			name: "mixed",
			rows: []quickFixEngineering{{HotFixID: "KB5034441", InstalledOn: "14/02/2024"}, {HotFixID: "KB5035845", InstalledOn: "02/14/2024"}},
			want: hotfixResult{reason: "InstalledOn dates in Win32_QuickFixEngineering mix day-first and month-first forms " +
				"(14/02/2024 and 02/14/2024), so the newest update cannot be told"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, newestHotfix(tt.rows), cmp.AllowUnexported(hotfixResult{})); diff != "" {
				t.Errorf("newestHotfix (-want +got):\n%s", diff)
			}
		})
	}
}
