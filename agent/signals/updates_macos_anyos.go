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

// macUpdates reports what softwareupdated found at its last scan. The
// agent does not scan itself (a scan contacts Apple and takes minutes);
// observed_at is the time of that scan (LastSuccessfulDate), so that policy
// sees how old the evidence is. The scan's list comes from
// RecommendedUpdates in softwareupdated's preferences, or, where that list
// is missing, from "softwareupdate --list --no-scan", which prints the last
// scan's result without contacting Apple. LastRecommendedUpdatesAvailable,
// a bare count, is read only before macOS 15.4, which stopped keeping it
// current (root3nl/SupportApp#207).
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
	observed, reason := c.now(), "softwareupdated recorded no time for its last scan (LastSuccessfulDate), so the age of this answer is unknown"
	if s, ok := plistString(prefs, "LastSuccessfulDate"); ok {
		if checked, err := time.Parse(macUpdatesDate, s); err == nil && checked.Before(observed) {
			observed, reason = checked, ""
		}
	}
	u, err := c.macPendingUpdates(ctx, prefs)
	switch {
	case errors.Is(err, errUpdateScanFailed):
		return &posturev1.Updates{Manager: manager, Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	case err != nil:
		return &posturev1.Updates{Manager: manager, Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	u.Manager = manager
	u.Meta = metaAt(observed, posturev1.Status_STATUS_OK, reason)
	return u
}

// macUpdatesDate is how defaults prints dates.
const macUpdatesDate = "2006-01-02 15:04:05 -0700"

// errUpdateScanFailed marks a last scan that did not finish: its updates
// are unknown, never none.
var errUpdateScanFailed = errors.New("the last software update scan failed")

// scanFailedError reports the failed scan in softwareupdate's words.
type scanFailedError struct{ line string }

func (e scanFailedError) Error() string {
	return fmt.Sprintf("softwareupdate --list reports a failed scan (%q); pending updates are unknown until a scan succeeds "+
		"(softwareupdate --list)", shorten(e.line, 100))
}

func (e scanFailedError) Is(target error) bool { return target == errUpdateScanFailed }

// macPendingUpdates counts the pending updates of the last scan from the
// best source at hand (see macUpdates).
func (c *Collector) macPendingUpdates(ctx context.Context, prefs map[string]any) (*posturev1.Updates, error) {
	if list, ok := prefs["RecommendedUpdates"].([]any); ok {
		return countRecommendedUpdates(list), nil
	}
	if s, ok := plistString(prefs, "LastRecommendedUpdatesAvailable"); ok {
		major, minor, err := c.macMajorMinor(ctx)
		if err == nil && (major < 15 || major == 15 && minor < 4) {
			var n uint32
			if _, err := fmt.Sscan(s, &n); err != nil {
				return nil, fmt.Errorf("LastRecommendedUpdatesAvailable is %q, want a number", s)
			}
			// Without the list nothing says what they are: count them all
			// as security updates rather than none.
			return &posturev1.Updates{Pending: n, SecurityPending: n}, nil
		}
	}
	args := []string{"--list", "--no-scan"}
	stdout, stderr, code, err := c.run(ctx, softwareupdate, args...)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, commandError(softwareupdate, args, code, stderr, stdout)
	}
	// softwareupdate splits its messages between stdout and stderr across
	// releases; read them as one text.
	pending, security, err := parseSoftwareUpdateList(append(append([]byte{}, stdout...), stderr...))
	if err != nil {
		return nil, err
	}
	return &posturev1.Updates{Pending: pending, SecurityPending: security}, nil
}

// countRecommendedUpdates counts RecommendedUpdates, an array of {"Display
// Name", "Display Version", Identifier, "Product Key"}.
func countRecommendedUpdates(list []any) *posturev1.Updates {
	u := &posturev1.Updates{}
	for _, item := range list {
		m, _ := item.(map[string]any)
		u.Pending++
		id, _ := plistString(m, "Identifier")
		key, _ := plistString(m, "Product Key")
		name, _ := plistString(m, "Display Name")
		if securityUpdate(id, key, name) {
			u.SecurityPending++
		}
	}
	return u
}

// securityUpdate tells whether an update, by its names, carries security
// fixes: Apple publishes security content for every macOS update (MSU_UPDATE
// product keys, security updates, Rapid Security Responses and Background
// Security Improvements) and for every Safari update.
func securityUpdate(names ...string) bool {
	all := strings.ToLower(strings.Join(names, " "))
	for _, word := range []string{"macos", "msu_update", "security", "rapid", "safari"} {
		if strings.Contains(all, word) {
			return true
		}
	}
	return false
}

// parseSoftwareUpdateList reads softwareupdate --list output: "* Label:
// <label>" lines, each followed by a "Title: <title>, Version: …, Action:
// restart," line (macOS 10.15 and later; before, "* <label>" and a title
// line), or "No new software available.". A failed scan ("Scan finished
// with error: …") and output with neither a list nor that sentence are
// errors, never "no updates".
func parseSoftwareUpdateList(b []byte) (pending, security uint32, err error) {
	var updates []string
	none := false
	for line := range strings.Lines(string(b)) {
		t := strings.TrimSpace(line)
		lower := strings.ToLower(t)
		switch {
		case strings.HasPrefix(t, "* "):
			updates = append(updates, strings.TrimPrefix(strings.TrimPrefix(t, "* "), "Label: "))
		case strings.HasPrefix(t, "Title: ") && len(updates) > 0:
			updates[len(updates)-1] += " " + t
		case t == "No new software available." || t == "No updates are available.":
			none = true
		case strings.Contains(lower, "error") || strings.Contains(lower, "can't connect") || strings.Contains(lower, "cannot connect"):
			return 0, 0, scanFailedError{line: t}
		}
	}
	if len(updates) == 0 && !none {
		return 0, 0, fmt.Errorf("softwareupdate --list printed neither updates nor \"No new software available.\"; output starts %q", firstLine(b))
	}
	for _, u := range updates {
		pending++
		if securityUpdate(u) {
			security++
		}
	}
	return pending, security, nil
}

// shorten cuts s at a word boundary before max bytes and marks the cut.
func shorten(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := strings.LastIndexByte(s[:max], ' ')
	if cut <= 0 {
		cut = max
	}
	return s[:cut] + " …"
}

// macAutoUpdate reads the automatic-update settings: AutomaticCheckEnabled,
// AutomaticDownload, CriticalUpdateInstall (security responses and system
// data files), AutomaticallyInstallMacOSUpdates. Security updates install
// by themselves when checking and CriticalUpdateInstall are on.
//
// The result is reused until one of the two preference files changes.
func (c *Collector) macAutoUpdate(ctx context.Context) *posturev1.AutoUpdate {
	stamp := fileStamp(c.path(softwareUpdatePrefs+".plist"), c.path(managedSoftwareUpdatePrefs+".plist"))
	return cachedConfig(c, "softwareupdate", stamp, func() *posturev1.AutoUpdate { return c.measureMacAutoUpdate(ctx) })
}

const macUpdateMechanism = "softwareupdate"

func (c *Collector) measureMacAutoUpdate(ctx context.Context) *posturev1.AutoUpdate {
	prefs, err := c.readDefaults(ctx, softwareUpdatePrefs)
	if err != nil && !errors.Is(err, errNoDomain) {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error()), Mechanism: macUpdateMechanism}
	}
	managed, err := c.readDefaults(ctx, managedSoftwareUpdatePrefs)
	if err != nil && !errors.Is(err, errNoDomain) {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error()), Mechanism: macUpdateMechanism}
	}
	return macAutoUpdateState(prefs, managed, c.now())
}

// macAutoUpdateState decides from the preferences read at t, the managed
// ones (configuration profiles) winning.
func macAutoUpdateState(prefs, managed map[string]any, t time.Time) *posturev1.AutoUpdate {
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
		return &posturev1.AutoUpdate{Mechanism: macUpdateMechanism, Meta: metaAt(t, posturev1.Status_STATUS_UNAVAILABLE,
			fmt.Sprintf("%s not set in %s or a configuration profile: the macOS default applies and cannot be read",
				strings.Join(missing, " and "), softwareUpdatePrefs))}
	}
	return &posturev1.AutoUpdate{
		Meta:      metaAt(t, posturev1.Status_STATUS_OK, ""),
		Enabled:   check && critical,
		Mechanism: macUpdateMechanism,
		Detail: fmt.Sprintf("check %v, download %v, install security responses and system files %v, install macOS updates %v",
			check, download, critical, macOS),
	}
}
