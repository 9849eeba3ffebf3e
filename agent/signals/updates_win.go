package signals

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const windowsUpdate = "Windows Update"

// winUpdates: counting pending updates needs a Windows Update Agent search,
// which contacts Microsoft and can take minutes, so it is not done; the
// installed patch level is OSInfo.version (build.UBR), and the newest
// installed update is measured separately.
func (c *Collector) winUpdates() *posturev1.Updates {
	return &posturev1.Updates{Manager: windowsUpdate, Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
		"pending updates are not counted on Windows by this agent version (a Windows Update search contacts Microsoft and can take minutes); the installed patch level is in the OS version (build.UBR)")}
}

// quickFixEngineering is one Win32_QuickFixEngineering row.
type quickFixEngineering struct {
	HotFixID    string
	Description string
	InstalledOn string
}

// winLastInstalled finds the newest installed update in the hotfix list.
// The list is slow to produce (seconds), so it runs on the slow schedule.
func (c *Collector) winLastInstalled(ctx context.Context) lastInstalledUpdate {
	rows, err := wmiRows[quickFixEngineering](ctx, c, `ROOT\CIMV2`, "SELECT HotFixID, Description, InstalledOn FROM Win32_QuickFixEngineering")
	switch {
	case errors.Is(err, errAccessDenied):
		return lastInstalledUpdate{meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, "needs administrator rights to list installed updates: "+err.Error())}
	case err != nil:
		return lastInstalledUpdate{meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	id, at, ok := newestHotfix(rows)
	if !ok {
		return lastInstalledUpdate{meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			fmt.Sprintf("none of the %d installed updates in Win32_QuickFixEngineering has a readable InstalledOn date", len(rows)))}
	}
	return lastInstalledUpdate{meta: c.meta(posturev1.Status_STATUS_OK, ""), id: id, installedAt: at}
}

// newestHotfix picks the update with the latest InstalledOn; on a tie the
// higher KB number, which is the later release.
func newestHotfix(rows []quickFixEngineering) (id string, at time.Time, ok bool) {
	for _, r := range rows {
		t, valid := parseHotfixDate(r.InstalledOn)
		if !valid {
			continue
		}
		if !ok || t.After(at) || (t.Equal(at) && kbNumber(r.HotFixID) > kbNumber(id)) {
			id, at, ok = r.HotFixID, t, true
		}
	}
	return id, at, ok
}

func kbNumber(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(strings.ToUpper(id), "KB"))
	return n
}

// parseHotfixDate reads InstalledOn, a string the WMI provider writes as
// M/D/YYYY whatever the locale; some updates (older installers) record a
// 64-bit FILETIME in hexadecimal instead.
func parseHotfixDate(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse("1/2/2006", s); err == nil {
		return t, true
	}
	if len(s) == 16 {
		if ft, err := strconv.ParseUint(s, 16, 64); err == nil && ft > 0 {
			// FILETIME counts 100 ns intervals since 1601-01-01 UTC.
			const epochDiff = 116444736000000000
			if ft > epochDiff {
				return time.Unix(0, int64(ft-epochDiff)*100).UTC(), true
			}
		}
	}
	return time.Time{}, false
}

const (
	wuPolicyAU = `HKLM\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU`
	wuUX       = `HKLM\SOFTWARE\Microsoft\WindowsUpdate\UX\Settings`
	wuauservKy = `HKLM\SYSTEM\CurrentControlSet\Services\wuauserv`
)

// winAutoUpdate reads the Windows Update configuration: the service's start
// type, the Group Policy (NoAutoUpdate, AUOptions) and a user's pause.
func (c *Collector) winAutoUpdate() autoUpdate {
	read := func(key string, names ...string) (map[string]any, error) {
		v, err := c.regValues(key, names...)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return v, err
	}
	svc, err := read(wuauservKy, "Start")
	if err != nil {
		return autoUpdate{mechanism: windowsUpdate, meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	pol, err := read(wuPolicyAU, "NoAutoUpdate", "AUOptions")
	if err != nil {
		return autoUpdate{mechanism: windowsUpdate, meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	ux, err := read(wuUX, "PauseUpdatesExpiryTime")
	if err != nil {
		return autoUpdate{mechanism: windowsUpdate, meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	a := winAutoUpdateState(svc, pol, ux, c.now())
	a.mechanism = windowsUpdate
	a.meta = c.meta(posturev1.Status_STATUS_OK, "")
	return a
}

// winAutoUpdateState decides. AUOptions (policy "Configure Automatic
// Updates"): 2 notify before download, 3 download and notify to install,
// 4 download and schedule the install, 5 local administrator chooses,
// 7 download, notify to install and to restart. Without a policy Windows
// installs updates automatically.
func winAutoUpdateState(svc, pol, ux map[string]any, now time.Time) autoUpdate {
	if start, _ := svc["Start"].(uint64); start == 4 {
		return autoUpdate{detail: "the Windows Update service (wuauserv) is disabled"}
	}
	if v, _ := pol["NoAutoUpdate"].(uint64); v == 1 {
		return autoUpdate{detail: "automatic updates are turned off by policy (NoAutoUpdate=1 in " + wuPolicyAU + ")"}
	}
	if until, _ := ux["PauseUpdatesExpiryTime"].(string); until != "" {
		if t, err := time.Parse(time.RFC3339, until); err == nil && t.After(now) {
			return autoUpdate{detail: "updates are paused until " + t.UTC().Format(time.RFC3339)}
		}
	}
	opt, set := pol["AUOptions"].(uint64)
	switch {
	case !set:
		return autoUpdate{enabled: true, detail: "no Windows Update policy: Windows downloads and installs updates automatically"}
	case opt == 4:
		return autoUpdate{enabled: true, detail: "policy AUOptions=4: updates are downloaded and installed on a schedule"}
	case opt == 5:
		return autoUpdate{detail: "policy AUOptions=5 lets the local administrator choose, and that choice is not read"}
	case opt == 2:
		return autoUpdate{detail: "policy AUOptions=2: Windows only notifies before downloading updates"}
	case opt == 3 || opt == 7:
		return autoUpdate{detail: fmt.Sprintf("policy AUOptions=%d: updates are downloaded but a person must install them", opt)}
	}
	return autoUpdate{detail: fmt.Sprintf("unknown policy AUOptions=%d", opt)}
}
