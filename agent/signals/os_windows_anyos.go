package signals

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// ntCurrentVersion holds the Windows version and patch level.
const ntCurrentVersion = `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion`

// winOSInfo reports the Windows product and its patch level from the
// registry: the build number plus the update build revision (UBR), which
// every cumulative update raises.
func (c *Collector) winOSInfo(hostname string) *posturev1.OSInfo {
	info := &posturev1.OSInfo{Platform: "windows", Arch: runtime.GOARCH, Hostname: hostname}
	v, err := c.regValues(ntCurrentVersion, "ProductName", "EditionID", "InstallationType", "CurrentBuildNumber", "UBR",
		"DisplayVersion", "ReleaseId", "CurrentMajorVersionNumber", "CurrentMinorVersionNumber", "CurrentVersion")
	if err != nil {
		info.Meta = c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())
		return info
	}
	w, err := parseWindowsVersion(v)
	if err != nil {
		info.Meta = c.meta(posturev1.Status_STATUS_ERROR, err.Error())
		return info
	}
	info.Name, info.Version, info.KernelVersion = w.name, w.version, w.version
	info.Build, info.DisplayVersion = w.build, w.displayVersion
	info.Meta = c.meta(posturev1.Status_STATUS_OK, "")
	return info
}

type windowsVersion struct {
	name           string // "Windows 11 Pro"
	version        string // "10.0.22631.3880"
	build          string // "22631.3880"
	displayVersion string // "23H2"
}

// windows10Build is the first Windows 10 build.
const windows10Build = 10240

// windows11Build is the first Windows 11 build. Windows 11 kept
// ProductName "Windows 10 …", so the name is derived from the build.
const windows11Build = 22000

// parseWindowsVersion reads the CurrentVersion values.
func parseWindowsVersion(v map[string]any) (windowsVersion, error) {
	name, _ := v["ProductName"].(string)
	buildText, _ := v["CurrentBuildNumber"].(string)
	build, err := strconv.Atoi(buildText)
	if err != nil {
		return windowsVersion{}, fmt.Errorf("%s CurrentBuildNumber is %q, want a number", ntCurrentVersion, buildText)
	}
	major, hasMajor := v["CurrentMajorVersionNumber"].(uint64)
	minor, _ := v["CurrentMinorVersionNumber"].(uint64)
	kernel := fmt.Sprintf("%d.%d", major, minor)
	switch {
	case hasMajor:
	case build >= windows10Build:
		// CurrentVersion stays "6.3" on Windows 10 and 11 for old
		// programs' sake; the build number alone says 10.0.
		kernel = "10.0"
	default:
		// Windows 8.1 and older: "6.3".
		kernel, _ = v["CurrentVersion"].(string)
	}
	// Without UBR the patch level is unknown, and the build number is
	// reported alone rather than as revision 0.
	fullBuild := strconv.Itoa(build)
	if ubr, ok := v["UBR"].(uint64); ok {
		fullBuild = fmt.Sprintf("%d.%d", build, ubr)
	}
	installType, _ := v["InstallationType"].(string)
	if build >= windows11Build && installType != "Server" {
		if rest, ok := strings.CutPrefix(name, "Windows 10"); ok {
			name = "Windows 11" + rest
		}
	}
	display, _ := v["DisplayVersion"].(string)
	if display == "" {
		display, _ = v["ReleaseId"].(string)
	}
	return windowsVersion{
		name:           name,
		version:        kernel + "." + fullBuild,
		build:          fullBuild,
		displayVersion: display,
	}, nil
}
