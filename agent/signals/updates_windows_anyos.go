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
	"google.golang.org/protobuf/types/known/timestamppb"
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
func (c *Collector) winLastInstalled(ctx context.Context) *posturev1.InstalledUpdate {
	rows, err := wmiRows[quickFixEngineering](ctx, c, `ROOT\CIMV2`, "SELECT HotFixID, Description, InstalledOn FROM Win32_QuickFixEngineering")
	switch {
	case errors.Is(err, errAccessDenied):
		return &posturev1.InstalledUpdate{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, "needs administrator rights to list installed updates: "+err.Error())}
	case err != nil:
		return &posturev1.InstalledUpdate{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	h := newestHotfix(rows)
	if !h.ok {
		reason := h.reason
		if reason == "" {
			reason = fmt.Sprintf("none of the %d installed updates in Win32_QuickFixEngineering has a readable InstalledOn date", len(rows))
		}
		return &posturev1.InstalledUpdate{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, reason)}
	}
	// InstalledUpdate has no detail: how an ambiguous date was read is a
	// caveat in the reason of the OK status.
	return &posturev1.InstalledUpdate{Meta: c.meta(posturev1.Status_STATUS_OK, h.reason), Id: h.id, InstalledAt: timestamppb.New(h.at)}
}

// hotfixResult is the newest update of the hotfix list, and how sure the
// date is.
type hotfixResult struct {
	id     string
	at     time.Time
	ok     bool
	reason string
}

// newestHotfix picks the update with the latest InstalledOn; on a tie the
// higher KB number, which is the later release. InstalledOn is text that
// Windows writes as M/D/YYYY, but localized installations write it
// day-first (D/M/YYYY, D.M.YYYY). The order is decided once for the whole
// list, by a date that can only be read one way; when none can, the
// documented M/D/YYYY is used and the reason says that an ambiguous date
// was read that way.
func newestHotfix(rows []quickFixEngineering) hotfixResult {
	order, dayFirstAt, monthFirstAt := hotfixDateOrder(rows)
	if order == dateOrderMixed {
		return hotfixResult{reason: fmt.Sprintf("InstalledOn dates in Win32_QuickFixEngineering mix day-first and month-first forms "+
			"(%s and %s), so the newest update cannot be told", dayFirstAt, monthFirstAt)}
	}
	var h hotfixResult
	var raw string
	for _, r := range rows {
		t, valid := parseHotfixDate(r.InstalledOn, order == dateOrderDayFirst)
		if !valid {
			continue
		}
		if !h.ok || t.After(h.at) || (t.Equal(h.at) && kbNumber(r.HotFixID) > kbNumber(h.id)) {
			h.id, h.at, h.ok, raw = r.HotFixID, t, true, strings.TrimSpace(r.InstalledOn)
		}
	}
	if h.ok && order == dateOrderUnknown && ambiguousSlashDate(raw) {
		h.reason = fmt.Sprintf("InstalledOn %q was read month-first (M/D/YYYY), the form Windows writes; "+
			"no date in the list shows whether this installation writes them day-first", raw)
	}
	return h
}

type dateOrder int

const (
	dateOrderUnknown dateOrder = iota
	dateOrderMonthFirst
	dateOrderDayFirst
	dateOrderMixed
)

// hotfixDateOrder finds whether the list's a/b/YYYY dates are day-first or
// month-first from the dates whose first or second part exceeds 12.
func hotfixDateOrder(rows []quickFixEngineering) (order dateOrder, dayFirstAt, monthFirstAt string) {
	for _, r := range rows {
		a, b, ok := slashDateParts(r.InstalledOn)
		switch {
		case !ok:
		case a > 12 && b <= 12 && dayFirstAt == "":
			dayFirstAt = strings.TrimSpace(r.InstalledOn)
		case b > 12 && a <= 12 && monthFirstAt == "":
			monthFirstAt = strings.TrimSpace(r.InstalledOn)
		}
	}
	switch {
	case dayFirstAt != "" && monthFirstAt != "":
		return dateOrderMixed, dayFirstAt, monthFirstAt
	case dayFirstAt != "":
		return dateOrderDayFirst, dayFirstAt, ""
	case monthFirstAt != "":
		return dateOrderMonthFirst, "", monthFirstAt
	}
	return dateOrderUnknown, "", ""
}

// slashDateParts splits "a/b/YYYY" into a and b.
func slashDateParts(s string) (a, b int, ok bool) {
	parts := strings.Split(strings.TrimSpace(s), "/")
	if len(parts) != 3 || len(parts[2]) != 4 {
		return 0, 0, false
	}
	a, errA := strconv.Atoi(parts[0])
	b, errB := strconv.Atoi(parts[1])
	return a, b, errA == nil && errB == nil
}

// ambiguousSlashDate reports an a/b/YYYY date that reads as two different
// days month-first and day-first.
func ambiguousSlashDate(s string) bool {
	a, b, ok := slashDateParts(s)
	return ok && a != b && a <= 12 && b <= 12
}

func kbNumber(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(strings.ToUpper(id), "KB"))
	return n
}

// parseHotfixDate reads one InstalledOn: a/b/YYYY in the given order,
// D.M.YYYY (the dotted form is day-first wherever it is used), YYYY-MM-DD,
// YYYYMMDD, or, as older installers record it, a 64-bit FILETIME in
// hexadecimal.
func parseHotfixDate(s string, dayFirst bool) (time.Time, bool) {
	s = strings.TrimSpace(s)
	layouts := []string{"1/2/2006", "2.1.2006", "2006-01-02", "20060102"}
	if dayFirst {
		layouts[0] = "2/1/2006"
	}
	for _, layout := range layouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
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
func (c *Collector) winAutoUpdate() *posturev1.AutoUpdate {
	read := func(key string, names ...string) (map[string]any, error) {
		v, err := c.regValues(key, names...)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return v, err
	}
	unavailable := func(err error) *posturev1.AutoUpdate {
		return &posturev1.AutoUpdate{Mechanism: windowsUpdate, Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	svc, err := read(wuauservKy, "Start")
	if err != nil {
		return unavailable(err)
	}
	pol, err := read(wuPolicyAU, "NoAutoUpdate", "AUOptions")
	if err != nil {
		return unavailable(err)
	}
	ux, err := read(wuUX, "PauseUpdatesExpiryTime")
	if err != nil {
		return unavailable(err)
	}
	return winAutoUpdateState(svc, pol, ux, c.now())
}

// winAutoUpdateState decides from the values read at now. AUOptions (policy
// "Configure Automatic Updates"): 2 notify before download, 3 download and
// notify to install, 4 download and schedule the install, 5 local
// administrator chooses, 7 download, notify to install and to restart.
// Without a policy Windows installs updates automatically.
func winAutoUpdateState(svc, pol, ux map[string]any, now time.Time) *posturev1.AutoUpdate {
	verdict := func(enabled bool, detail string) *posturev1.AutoUpdate {
		return &posturev1.AutoUpdate{Meta: metaAt(now, posturev1.Status_STATUS_OK, ""), Enabled: enabled, Mechanism: windowsUpdate, Detail: detail}
	}
	if start, _ := svc["Start"].(uint64); start == 4 {
		return verdict(false, "the Windows Update service (wuauserv) is disabled")
	}
	if v, _ := pol["NoAutoUpdate"].(uint64); v == 1 {
		return verdict(false, "automatic updates are turned off by policy (NoAutoUpdate=1 in "+wuPolicyAU+")")
	}
	if until, _ := ux["PauseUpdatesExpiryTime"].(string); until != "" {
		if t, err := time.Parse(time.RFC3339, until); err == nil && t.After(now) {
			return verdict(false, "updates are paused until "+t.UTC().Format(time.RFC3339))
		}
	}
	opt, set := pol["AUOptions"].(uint64)
	switch {
	case !set:
		return verdict(true, "no Windows Update policy: Windows downloads and installs updates automatically")
	case opt == 4:
		return verdict(true, "policy AUOptions=4: updates are downloaded and installed on a schedule")
	case opt == 5:
		return verdict(false, "policy AUOptions=5 lets the local administrator choose, and that choice is not read")
	case opt == 2:
		return verdict(false, "policy AUOptions=2: Windows only notifies before downloading updates")
	case opt == 3 || opt == 7:
		return verdict(false, fmt.Sprintf("policy AUOptions=%d: updates are downloaded but a person must install them", opt))
	}
	return verdict(false, fmt.Sprintf("unknown policy AUOptions=%d", opt))
}
