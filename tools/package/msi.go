package main

import (
	"crypto/sha1"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// msiUpgradeCode is the agent's Windows Installer upgrade code: every
// version's .msi carries it, so that a newer one replaces an older one.
// Never change it.
const msiUpgradeCode = "{6A1D5B0E-3C47-4E8F-9B52-7D2A1C6E4F90}"

// The service's recovery and start settings, as posture-agent install
// sets them (agent/cmd/posture-agent/service.go): restart 10 s after any
// failure, the failure count reset after a day, a delayed automatic start.
const (
	msiRestartDelayMillis = 10000
	msiResetPeriodSeconds = 86400
)

// msiArchs are the architectures an .msi is built for: wixl targets x86
// and x64 only.
var msiArchs = map[string]string{"amd64": "x64"}

// msiVersion maps a package version (scripts/pkg-version.sh) to a
// Windows Installer ProductVersion, major.minor.build with major and minor
// at most 255 and build at most 65535, which is all Windows Installer
// compares:
//
//	1.2.3                    1.2.3
//	1.2                      1.2.0
//	1.2.3+4.gabc1234[.dirty] 1.2.3.4 (4 commits after v1.2.3; the fourth field is not compared)
//	1.2.3+rc1                1.2.3
//	0.0.0~git.346.abc1234    0.0.346 (before the first tag: the number of commits)
func msiVersion(v string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("version %q has no Windows Installer ProductVersion: %s (docs/install.md, Windows)", v, why)
	}
	if m := regexp.MustCompile(`^0\.0\.0~git\.(\d+)\.`).FindStringSubmatch(v); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n > 65535 {
			return bad("more than 65535 commits before the first tag")
		}
		return fmt.Sprintf("0.0.%d", n), nil
	}
	m := regexp.MustCompile(`^(\d+)\.(\d+)(?:\.(\d+))?([+~.].*)?$`).FindStringSubmatch(v)
	if m == nil {
		return bad("it does not start with major.minor")
	}
	if m[3] == "" {
		m[3] = "0"
	}
	var f [3]int
	for i, limit := range []int{255, 255, 65535} {
		n, err := strconv.Atoi(m[i+1])
		if err != nil || n > limit {
			return bad(fmt.Sprintf("%s is above %d", m[i+1], limit))
		}
		f[i] = n
	}
	out := fmt.Sprintf("%d.%d.%d", f[0], f[1], f[2])
	if c := regexp.MustCompile(`^\+(?:.*\.)?(\d+)\.g[0-9a-f]+(?:\.dirty)?$`).FindStringSubmatch(m[4]); c != nil {
		n, err := strconv.Atoi(c[1])
		if err != nil || n > 65535 {
			return bad("more than 65535 commits after the tag")
		}
		out += fmt.Sprintf(".%d", n)
	}
	return out, nil
}

// guid is a name-based GUID: the SHA-1 of the upgrade code and name, with
// the bits of an RFC 4122 version 5 GUID set. The same name gives the same
// GUID in every build.
func guid(name string) string {
	h := sha1.Sum([]byte(msiUpgradeCode + "\x00" + name))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return strings.ToUpper(fmt.Sprintf("{%x-%x-%x-%x-%x}", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16]))
}

// msiTools are the programs msi needs, with the Debian package of each.
var msiTools = [][2]string{{"wixl", "wixl"}, {"msibuild", "msitools"}}

// msi builds posture-agent_VERSION_windows_ARCH.msi from
// packaging/wix/posture-agent.wxs with wixl, then adds with msibuild what
// wixl cannot express.
func (p *packager) msi(arch string) error {
	wixArch, ok := msiArchs[arch]
	if !ok {
		return nil
	}
	for _, t := range msiTools {
		if _, err := exec.LookPath(t[0]); err != nil {
			return fmt.Errorf("the Windows .msi needs %s: apt-get install %s", t[0], t[1])
		}
	}
	productVersion, err := msiVersion(p.version)
	if err != nil {
		return err
	}
	target := filepath.Join(p.out, fmt.Sprintf("posture-agent_%s_windows_%s.msi", p.version, arch))
	// wixl reads each File's Source relative to where it runs.
	stage, err := os.MkdirTemp("", "posture-msi-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for src, name := range map[string]string{
		filepath.Join(p.build, "windows-"+arch, "posture-agent.exe"): "posture-agent.exe",
		filepath.Join(p.top, "LICENSE"):                              "LICENSE.txt",
	} {
		if _, err := os.Stat(src); err != nil {
			return err
		}
		if err := os.Symlink(src, filepath.Join(stage, name)); err != nil {
			return err
		}
	}
	wxs := filepath.Join(p.top, "packaging", "wix", "posture-agent.wxs")
	if err := runIn(stage, "wixl", "--arch", wixArch, "--output", target,
		"--define", "ProductCode="+guid("posture-agent "+arch+" "+p.version),
		"--define", "UpgradeCode="+msiUpgradeCode,
		"--define", "MsiVersion="+productVersion,
		"--define", "Version="+p.version,
		wxs); err != nil {
		os.Remove(target)
		return fmt.Errorf("%s: %w", wxs, err)
	}
	for _, q := range msiQueries(productVersion) {
		if err := runIn(stage, "msibuild", target, "-q", q); err != nil {
			os.Remove(target)
			return fmt.Errorf("%s: %s: %w", filepath.Base(target), q, err)
		}
	}
	f, err := os.Open(target)
	if err != nil {
		return err
	}
	return p.done(f, target)
}

// msiQueries are what msi adds to wixl's database, in Windows Installer's
// SQL.
func msiQueries(productVersion string) []string {
	return []string{
		// The service's delayed automatic start (ConfigType 3,
		// SERVICE_CONFIG_DELAYED_AUTO_START_INFO) and its recovery
		// actions (1: restart), applied when the component is installed
		// or reinstalled (Event 1|4) by the MsiConfigureServices action
		// of Windows Installer 5.
		"CREATE TABLE `MsiServiceConfig` (`MsiServiceConfig` CHAR(72) NOT NULL, `Name` CHAR(255) NOT NULL, `Event` SHORT NOT NULL, " +
			"`ConfigType` LONG NOT NULL, `Argument` CHAR(0), `Component_` CHAR(72) NOT NULL PRIMARY KEY `MsiServiceConfig`)",
		"INSERT INTO `MsiServiceConfig` (`MsiServiceConfig`, `Name`, `Event`, `ConfigType`, `Argument`, `Component_`) " +
			"VALUES ('PostureAgentDelayedStart', 'posture-agent', 5, 3, '1', 'AgentExe')",
		"CREATE TABLE `MsiServiceConfigFailureActions` (`MsiServiceConfigFailureActions` CHAR(72) NOT NULL, `Name` CHAR(255) NOT NULL, " +
			"`Event` SHORT NOT NULL, `ResetPeriod` LONG, `RebootMessage` CHAR(255) LOCALIZABLE, `Command` CHAR(255) LOCALIZABLE, " +
			"`Actions` CHAR(255), `DelayActions` CHAR(255), `Component_` CHAR(72) NOT NULL PRIMARY KEY `MsiServiceConfigFailureActions`)",
		fmt.Sprintf("INSERT INTO `MsiServiceConfigFailureActions` (`MsiServiceConfigFailureActions`, `Name`, `Event`, `ResetPeriod`, `Actions`, `DelayActions`, `Component_`) "+
			"VALUES ('PostureAgentRecovery', 'posture-agent', 5, %d, '1', '%d', 'AgentExe')", msiResetPeriodSeconds, msiRestartDelayMillis),
		"INSERT INTO `InstallExecuteSequence` (`Action`, `Condition`, `Sequence`) VALUES ('MsiConfigureServices', 'VersionNT >= 600', 5850)",
		// An installation that cannot register the service fails
		// (msidbServiceInstallErrorControlVital 0x8000, with
		// SERVICE_ERROR_NORMAL 1): wixl ignores Vital="yes".
		"UPDATE `ServiceInstall` SET `ErrorControl` = 32769 WHERE `ServiceInstall` = 'PostureAgentService'",
		// MajorUpgrade replaces older versions only; builds after a tag
		// share its major.minor.build (msiVersion), so the same version
		// is replaced too (IncludeMaximum 512, with MigrateFeatures 1).
		// Attributes is part of the key: delete and insert.
		"DELETE FROM `Upgrade` WHERE `ActionProperty` = 'WIX_UPGRADE_DETECTED'",
		fmt.Sprintf("INSERT INTO `Upgrade` (`UpgradeCode`, `VersionMax`, `Attributes`, `ActionProperty`) VALUES ('%s', '%s', 513, 'WIX_UPGRADE_DETECTED')",
			msiUpgradeCode, productVersion),
	}
}

func runIn(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	// wixl ignores an attribute it does not know with a warning, and
	// msibuild may report a failed query and exit 0: either is a failure.
	if err == nil && regexp.MustCompile(`(?m)CRITICAL|ERROR|WARNING|failed`).Match(out) {
		err = fmt.Errorf("reported a failure")
	}
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}
