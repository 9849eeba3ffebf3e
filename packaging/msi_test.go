package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/testtools"
)

// agentUpgradeCode is the upgrade code of every agent .msi: a newer one
// replaces an older one only while it stays the same.
const agentUpgradeCode = "{6A1D5B0E-3C47-4E8F-9B52-7D2A1C6E4F90}"

// msiTable reads one table of an .msi with msiinfo (msitools): a row per
// map, by column name.
func msiTable(t *testing.T, msi, table string) []map[string]string {
	t.Helper()
	out := run(t, testtools.Require(t, "msiinfo"), "export", msi, table)
	lines := strings.Split(strings.ReplaceAll(out, "\r\n", "\n"), "\n")
	if len(lines) < 3 {
		t.Fatalf("msiinfo export %s %s:\n%s", filepath.Base(msi), table, out)
	}
	// The column names, their types, the table's name and keys, then rows.
	cols := strings.Split(lines[0], "\t")
	var rows []map[string]string
	for _, l := range lines[3:] {
		if l == "" {
			continue
		}
		f := strings.Split(l, "\t")
		if len(f) != len(cols) {
			t.Fatalf("%s %s: row %q has %d fields for %d columns", filepath.Base(msi), table, l, len(f), len(cols))
		}
		row := map[string]string{}
		for i, c := range cols {
			row[c] = f[i]
		}
		rows = append(rows, row)
	}
	return rows
}

// msiRow returns the row of table whose column key is value.
func msiRow(t *testing.T, msi, table, key, value string) map[string]string {
	t.Helper()
	rows := msiTable(t, msi, table)
	for _, r := range rows {
		if r[key] == value {
			return r
		}
	}
	t.Fatalf("%s: no %s row with %s %q: %v", filepath.Base(msi), table, key, value, rows)
	return nil
}

// wantRow checks that row has these values.
func wantRow(t *testing.T, what string, row map[string]string, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if row[k] != v {
			t.Errorf("%s: %s is %q, want %q (row %v)", what, k, row[k], v, row)
		}
	}
}

func msiProperties(t *testing.T, msi string) map[string]string {
	t.Helper()
	props := map[string]string{}
	for _, r := range msiTable(t, msi, "Property") {
		props[r["Property"]] = r["Value"]
	}
	return props
}

// msiVersionFields are the three fields of a ProductVersion that Windows
// Installer compares.
func msiVersionFields(t *testing.T, v string) [3]int {
	t.Helper()
	m := regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?$`).FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("ProductVersion %q is not major.minor.build[.revision]", v)
	}
	var f [3]int
	for i, limit := range []int{255, 255, 65535} {
		f[i], _ = strconv.Atoi(m[i+1])
		if f[i] > limit {
			t.Errorf("ProductVersion %q: field %d is above %d", v, i+1, limit)
		}
	}
	return f
}

func lessOrEqual(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return true
}

// TestWindowsInstaller reads the agent's .msi that make package built
// with msiinfo: the file it installs and where, the service it registers
// (start, account, arguments, recovery actions, delayed start), what
// happens to the service on install and uninstall, the upgrade code and
// the version. Nothing here runs the installer: that takes Windows.
func TestWindowsInstaller(t *testing.T) {
	d := dist(t)
	testtools.Require(t, "msiinfo")
	msi := one(t, d, "posture-agent_*_windows_amd64.msi")
	if m, _ := filepath.Glob(filepath.Join(d, "*_windows_arm64.msi")); len(m) != 0 {
		t.Errorf("an arm64 .msi (%v): wixl builds x86 and x64 only, and docs/install.md says there is none", m)
	}
	version := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(msi), "posture-agent_"), "_windows_amd64.msi")
	one(t, d, "posture-agent_"+version+"_windows_amd64.zip") // the same version as the .zip

	tables := run(t, testtools.Require(t, "msiinfo"), "tables", msi)
	for _, want := range []string{"File", "Component", "Directory", "ServiceInstall", "ServiceControl", "MsiServiceConfig", "MsiServiceConfigFailureActions", "Property", "Upgrade", "InstallExecuteSequence"} {
		if !regexp.MustCompile(`(?m)^` + want + `\r?$`).MatchString(tables) {
			t.Errorf("no table %s in %s:\n%s", want, filepath.Base(msi), tables)
		}
	}

	// posture-agent.exe, the one make package built, in Program Files\Posture
	// (64-bit), the key of the component that holds the service.
	exe, err := os.Stat(filepath.Join(d, "build", "windows-amd64", "posture-agent.exe"))
	if err != nil {
		t.Fatal(err)
	}
	file := msiRow(t, msi, "File", "FileName", "posture-agent.exe")
	wantRow(t, "File posture-agent.exe", file, map[string]string{"FileSize": strconv.FormatInt(exe.Size(), 10)})
	msiRow(t, msi, "File", "FileName", "LICENSE.txt")
	comp := msiRow(t, msi, "Component", "Component", file["Component_"])
	wantRow(t, "the agent's component", comp, map[string]string{"Directory_": "INSTALLDIR", "KeyPath": file["File"]})
	if a, _ := strconv.Atoi(comp["Attributes"]); a&256 == 0 {
		t.Errorf("the agent's component is not 64-bit (Attributes %s): it would land in Program Files (x86)", comp["Attributes"])
	}
	wantRow(t, "the install directory", msiRow(t, msi, "Directory", "Directory", "INSTALLDIR"), map[string]string{"Directory_Parent": "ProgramFiles64Folder", "DefaultDir": "Posture"})
	for _, table := range []string{"Environment", "Registry", "CustomAction"} {
		if regexp.MustCompile(`(?m)^`+table+`\r?$`).MatchString(tables) && len(msiTable(t, msi, table)) != 0 {
			t.Errorf("the .msi has %s rows (it adds the install directory to nothing, and runs no custom action): %v", table, msiTable(t, msi, table))
		}
	}

	// The service as posture-agent install registers it
	// (agent/cmd/posture-agent/service.go): own process (16), automatic
	// start (2), LocalSystem (no StartName), "run"; vital (0x8000) with
	// normal error control (1).
	svc := msiRow(t, msi, "ServiceInstall", "Name", "posture-agent")
	wantRow(t, "ServiceInstall", svc, map[string]string{
		"DisplayName": "Posture agent", "ServiceType": "16", "StartType": "2", "ErrorControl": "32769",
		"StartName": "", "Password": "", "Arguments": "run", "Component_": comp["Component"],
	})
	// Stopped on install (2) and uninstall (32), removed on uninstall
	// (128), never started: a device that has not enrolled would fail.
	wantRow(t, "ServiceControl", msiRow(t, msi, "ServiceControl", "Name", "posture-agent"), map[string]string{
		"Event": "162", "Wait": "1", "Component_": comp["Component"],
	})
	// A delayed automatic start (ConfigType 3), restarted 10 s after any
	// failure (action 1), the count reset after a day; on install and
	// reinstall (5).
	wantRow(t, "MsiServiceConfig", msiRow(t, msi, "MsiServiceConfig", "Name", "posture-agent"), map[string]string{
		"Event": "5", "ConfigType": "3", "Argument": "1", "Component_": comp["Component"],
	})
	wantRow(t, "MsiServiceConfigFailureActions", msiRow(t, msi, "MsiServiceConfigFailureActions", "Name", "posture-agent"), map[string]string{
		"Event": "5", "ResetPeriod": "86400", "Actions": "1", "DelayActions": "10000", "Component_": comp["Component"],
	})
	seq := map[string]int{}
	for _, r := range msiTable(t, msi, "InstallExecuteSequence") {
		seq[r["Action"]], _ = strconv.Atoi(r["Sequence"])
	}
	if !(seq["InstallServices"] > 0 && seq["InstallServices"] < seq["MsiConfigureServices"] && seq["MsiConfigureServices"] < seq["StartServices"]) {
		t.Errorf("MsiConfigureServices is not sequenced after InstallServices: %v", seq)
	}
	if seq["RemoveExistingProducts"] == 0 || seq["RemoveExistingProducts"] > seq["InstallInitialize"] {
		t.Errorf("RemoveExistingProducts (%d) missing or after InstallInitialize (%d): an upgrade would not remove the old version first", seq["RemoveExistingProducts"], seq["InstallInitialize"])
	}

	// The upgrade code, the version, and upgrades: every version up to
	// this one (same major.minor.build included) is replaced, a newer one
	// stops the installation.
	props := msiProperties(t, msi)
	wantRow(t, "Property", props, map[string]string{"UpgradeCode": agentUpgradeCode, "ALLUSERS": "1", "ProductName": "Posture agent"})
	pv := props["ProductVersion"]
	msiVersionFields(t, pv)
	checkUpgradeRows(t, msi, pv)
	if c := msiRow(t, msi, "LaunchCondition", "Condition", "NOT WIX_DOWNGRADE_DETECTED"); c["Description"] == "" {
		t.Error("the downgrade condition has no message")
	}
	sum := run(t, testtools.Require(t, "msiinfo"), "suminfo", msi)
	for _, want := range []string{"Template: x64;1033", "Version: 500 "} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary information lacks %q (MsiServiceConfig needs Windows Installer 5):\n%s", want, sum)
		}
	}
	if !strings.Contains(sum, "Subject: Posture agent "+version) {
		t.Errorf("summary information does not name version %s:\n%s", version, sum)
	}
}

// checkUpgradeRows checks an .msi of ProductVersion pv replaces the
// versions up to pv, included, and detects newer ones as a downgrade.
func checkUpgradeRows(t *testing.T, msi, pv string) {
	t.Helper()
	rows := msiTable(t, msi, "Upgrade")
	if len(rows) != 2 {
		t.Errorf("%d Upgrade rows, want 2: %v", len(rows), rows)
	}
	// 513: MigrateFeatures (1) and IncludeMaximum (512).
	wantRow(t, "the upgrade row", msiRow(t, msi, "Upgrade", "ActionProperty", "WIX_UPGRADE_DETECTED"), map[string]string{
		"UpgradeCode": agentUpgradeCode, "VersionMin": "", "VersionMax": pv, "Attributes": "513",
	})
	// 2: OnlyDetect, the minimum excluded.
	wantRow(t, "the downgrade row", msiRow(t, msi, "Upgrade", "ActionProperty", "WIX_DOWNGRADE_DETECTED"), map[string]string{
		"UpgradeCode": agentUpgradeCode, "VersionMin": pv, "VersionMax": "", "Attributes": "2",
	})
}

// TestWindowsInstallerVersions builds the .msi again, with the packaging
// program make package uses, for the versions of every form git describe
// gives that docs/install.md lists, and checks the ProductVersion each
// maps to there;
// that a newer build replaces the one in dist; that the product code
// follows the version and nothing else; and that a version Windows
// Installer cannot hold is refused with the reason.
func TestWindowsInstallerVersions(t *testing.T) {
	d := dist(t)
	testtools.Require(t, "msiinfo")
	testtools.Require(t, "wixl")
	testtools.Require(t, "msibuild")
	tool, err := filepath.Abs("../bin/tools/posture-package")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tool); err != nil {
		missing(t, "NO PACKAGING PROGRAM at "+tool+": make package builds it")
	}
	build := func(version string) (string, error) {
		out := t.TempDir()
		cmd := exec.Command(tool, "--top", "..", "--build", filepath.Join(d, "build"), "--out", out, "--version", version, "--only", "msi")
		if b, err := cmd.CombinedOutput(); err != nil {
			return string(b), err
		}
		return one(t, out, "posture-agent_"+version+"_windows_amd64.msi"), nil
	}
	distMSI := one(t, d, "posture-agent_*_windows_amd64.msi")
	distProps := msiProperties(t, distMSI)
	codes := map[string]string{distProps["ProductCode"]: "dist"}
	// The mapping docs/install.md gives, and a newer release.
	type mapping struct{ version, want string }
	var cases []mapping
	for _, block := range testtools.CodeBlocks(t, "../docs/install.md", "### Versions of the .msi", "text") {
		for _, l := range strings.Split(strings.TrimSpace(block), "\n") {
			f := strings.Fields(l)
			if len(f) != 2 {
				t.Fatalf("docs/install.md: %q is not a version and its ProductVersion", l)
			}
			cases = append(cases, mapping{f[0], f[1]})
		}
	}
	if len(cases) < 5 {
		t.Fatalf("docs/install.md gives %d versions: %v", len(cases), cases)
	}
	for _, c := range append(cases, mapping{"99.0.0", "99.0.0"}) {
		msi, err := build(c.version)
		if err != nil {
			t.Errorf("version %s: %v\n%s", c.version, err, msi)
			continue
		}
		props := msiProperties(t, msi)
		if props["ProductVersion"] != c.want {
			t.Errorf("version %s: ProductVersion %s, want %s", c.version, props["ProductVersion"], c.want)
		}
		if props["UpgradeCode"] != agentUpgradeCode {
			t.Errorf("version %s: UpgradeCode %s, want %s", c.version, props["UpgradeCode"], agentUpgradeCode)
		}
		if prev, ok := codes[props["ProductCode"]]; ok {
			t.Errorf("versions %s and %s have the same ProductCode %s", prev, c.version, props["ProductCode"])
		}
		codes[props["ProductCode"]] = c.version
		checkUpgradeRows(t, msi, c.want)
		if c.version == "99.0.0" {
			// Replaces the build in dist: its version is within the
			// newer one's upgrade row.
			if old := msiVersionFields(t, distProps["ProductVersion"]); !lessOrEqual(old, msiVersionFields(t, c.want)) {
				t.Errorf("99.0.0 would not replace %s", distProps["ProductVersion"])
			}
		}
	}
	// The same version again: the same product code (derived from it).
	version := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(distMSI), "posture-agent_"), "_windows_amd64.msi")
	if again, err := build(version); err != nil {
		t.Errorf("rebuild %s: %v\n%s", version, err, again)
	} else if got := msiProperties(t, again)["ProductCode"]; got != distProps["ProductCode"] {
		t.Errorf("the same version built twice has two ProductCodes: %s and %s", distProps["ProductCode"], got)
	}
	for _, bad := range []struct{ version, why string }{
		{"256.0.0", "256 is above 255"},
		{"1.2.65536", "65536 is above 65535"},
		{"1.2.3+70000.gabc1234", "more than 65535 commits after the tag"},
		{"release", "does not start with major.minor"},
	} {
		out, err := build(bad.version)
		if err == nil {
			t.Errorf("version %s: built %s, want a refusal", bad.version, out)
		} else if !strings.Contains(out, bad.why) {
			t.Errorf("version %s refused without saying %q:\n%s", bad.version, bad.why, out)
		}
	}
}
