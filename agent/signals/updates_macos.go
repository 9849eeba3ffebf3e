package signals

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// softwareUpdatePrefs is where softwareupdated records its last check and
// the automatic-update settings; managed preferences (MDM profiles) in the
// second path override the first.
const (
	softwareUpdatePrefs        = "/Library/Preferences/com.apple.SoftwareUpdate"
	managedSoftwareUpdatePrefs = "/Library/Managed Preferences/com.apple.SoftwareUpdate"
)

// errNoDomain is a preferences domain that does not exist.
var errNoDomain = errors.New("preferences domain does not exist")

// readDefaults runs "defaults read DOMAIN" and parses its old-style
// property list.
func (c *Collector) readDefaults(ctx context.Context, domain string) (map[string]any, error) {
	args := []string{"read", domain}
	stdout, stderr, code, err := c.run(ctx, defaultsCmd, args...)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		if strings.Contains(string(stderr), "does not exist") {
			return nil, fmt.Errorf("defaults read %s: %w", domain, errNoDomain)
		}
		return nil, commandError(defaultsCmd, args, code, stderr, stdout)
	}
	v, err := parseOldPlist(string(stdout))
	if err != nil {
		return nil, fmt.Errorf("parse defaults read %s: %w", domain, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("defaults read %s printed no dictionary: %w", domain, errPlist)
	}
	return m, nil
}

// macUpdates reports what softwareupdated found at its last check. The
// agent does not run softwareupdate itself (it contacts Apple and takes
// minutes); observed_at is the time of that check, so that policy sees how
// old the evidence is.
func (c *Collector) macUpdates(ctx context.Context) *posturev1.Updates {
	const manager = "softwareupdate"
	prefs, err := c.readDefaults(ctx, softwareUpdatePrefs)
	if errors.Is(err, errNoDomain) {
		return &posturev1.Updates{Manager: manager, Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"softwareupdate has not recorded a check in "+softwareUpdatePrefs+" (run softwareupdate --list)")}
	}
	if err != nil {
		return &posturev1.Updates{Manager: manager, Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	u, checked, err := parseSoftwareUpdatePrefs(prefs)
	if err != nil {
		return &posturev1.Updates{Manager: manager, Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	observed := c.now()
	if !checked.IsZero() && checked.Before(observed) {
		observed = checked
	}
	u.Manager = manager
	u.Meta = metaAt(observed, posturev1.Status_STATUS_OK, "")
	return u
}

// macUpdatesDate is how defaults prints dates.
const macUpdatesDate = "2006-01-02 15:04:05 -0700"

// parseSoftwareUpdatePrefs counts RecommendedUpdates (an array of
// {"Display Name", "Display Version", Identifier, "Product Key"}), or
// takes LastRecommendedUpdatesAvailable when the list is absent. Apple
// publishes security content for every macOS update, so macOS updates,
// Rapid Security Responses and anything named a security update count as
// security updates. checked is LastSuccessfulDate.
func parseSoftwareUpdatePrefs(prefs map[string]any) (u *posturev1.Updates, checked time.Time, err error) {
	u = &posturev1.Updates{}
	if s, ok := plistString(prefs, "LastSuccessfulDate"); ok {
		checked, _ = time.Parse(macUpdatesDate, s)
	}
	list, hasList := prefs["RecommendedUpdates"].([]any)
	if !hasList {
		s, ok := plistString(prefs, "LastRecommendedUpdatesAvailable")
		if !ok {
			return nil, checked, fmt.Errorf("%s has neither RecommendedUpdates nor LastRecommendedUpdatesAvailable (run softwareupdate --list)", softwareUpdatePrefs)
		}
		var n uint32
		if _, err := fmt.Sscan(s, &n); err != nil {
			return nil, checked, fmt.Errorf("LastRecommendedUpdatesAvailable is %q, want a number", s)
		}
		// Without the list nothing says what they are: count them all as
		// security updates rather than none.
		u.Pending, u.SecurityPending = n, n
		return u, checked, nil
	}
	for _, item := range list {
		m, _ := item.(map[string]any)
		u.Pending++
		id, _ := plistString(m, "Identifier")
		key, _ := plistString(m, "Product Key")
		name, _ := plistString(m, "Display Name")
		all := strings.ToLower(id + " " + key + " " + name)
		if strings.Contains(all, "msu_update") || strings.Contains(all, "macos") ||
			strings.Contains(all, "security") || strings.Contains(all, "rapid") {
			u.SecurityPending++
		}
	}
	return u, checked, nil
}

// macAutoUpdate reads the automatic-update settings: AutomaticCheckEnabled,
// AutomaticDownload, CriticalUpdateInstall (security responses and system
// data files), AutomaticallyInstallMacOSUpdates. Security updates install
// by themselves when checking and CriticalUpdateInstall are on.
//
// The result is reused until one of the two preference files changes.
func (c *Collector) macAutoUpdate(ctx context.Context) autoUpdate {
	stamp := fileStamp(c.path(softwareUpdatePrefs+".plist"), c.path(managedSoftwareUpdatePrefs+".plist"))
	return c.cachedConfig("softwareupdate", stamp, func() autoUpdate { return c.measureMacAutoUpdate(ctx) })
}

func (c *Collector) measureMacAutoUpdate(ctx context.Context) autoUpdate {
	const mechanism = "softwareupdate"
	prefs, err := c.readDefaults(ctx, softwareUpdatePrefs)
	if err != nil && !errors.Is(err, errNoDomain) {
		return autoUpdate{meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error()), mechanism: mechanism}
	}
	managed, err := c.readDefaults(ctx, managedSoftwareUpdatePrefs)
	if err != nil && !errors.Is(err, errNoDomain) {
		return autoUpdate{meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error()), mechanism: mechanism}
	}
	a := macAutoUpdateState(prefs, managed)
	a.meta = c.meta(a.status.status, a.status.reason)
	a.mechanism = mechanism
	return a.autoUpdate
}

type macAutoUpdateResult struct {
	autoUpdate
	status statusReason
}

func macAutoUpdateState(prefs, managed map[string]any) macAutoUpdateResult {
	get := func(key string) (v, set bool) {
		if v, ok := plistBool(managed, key); ok {
			return v, true
		}
		return plistBool(prefs, key)
	}
	check, checkSet := get("AutomaticCheckEnabled")
	critical, criticalSet := get("CriticalUpdateInstall")
	download, _ := get("AutomaticDownload")
	macOS, _ := get("AutomaticallyInstallMacOSUpdates")
	if !checkSet || !criticalSet {
		var missing []string
		if !checkSet {
			missing = append(missing, "AutomaticCheckEnabled")
		}
		if !criticalSet {
			missing = append(missing, "CriticalUpdateInstall")
		}
		return macAutoUpdateResult{status: statusReason{posturev1.Status_STATUS_UNAVAILABLE,
			fmt.Sprintf("%s not set in %s or a configuration profile: the macOS default applies and cannot be read",
				strings.Join(missing, " and "), softwareUpdatePrefs)}}
	}
	detail := fmt.Sprintf("check %v, download %v, install security responses and system files %v, install macOS updates %v",
		check, download, critical, macOS)
	return macAutoUpdateResult{
		autoUpdate: autoUpdate{enabled: check && critical, detail: detail},
		status:     statusReason{posturev1.Status_STATUS_OK, ""},
	}
}
