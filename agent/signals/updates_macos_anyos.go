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

// softwareUpdateDomain is the part of com.apple.SoftwareUpdate the agent
// reads.
type softwareUpdateDomain struct {
	AutomaticCheckEnabled            prefBool
	AutomaticDownload                prefBool
	CriticalUpdateInstall            prefBool
	AutomaticallyInstallMacOSUpdates prefBool
	// LastSuccessfulDate is the time of the last scan, as defaults prints
	// dates (macUpdatesDate).
	LastSuccessfulDate string
	// LastRecommendedUpdatesAvailable is a bare count, read as text so that
	// an odd value is reported rather than failing the domain.
	LastRecommendedUpdatesAvailable *string
	// RecommendedUpdates is the last scan's list; nil when the key is
	// missing, empty when the scan found nothing.
	RecommendedUpdates *[]recommendedUpdate
}

// recommendedUpdate is one entry of RecommendedUpdates.
type recommendedUpdate struct {
	DisplayName string `plist:"Display Name"`
	Identifier  string
	ProductKey  string `plist:"Product Key"`
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
	var prefs softwareUpdateDomain
	err := c.readDefaults(ctx, softwareUpdatePrefs, &prefs)
	if errors.Is(err, errNoDomain) {
		return &posturev1.Updates{Manager: manager, Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"softwareupdate has not recorded a check in "+softwareUpdatePrefs+" (run softwareupdate --list)")}
	}
	if err != nil {
		return &posturev1.Updates{Manager: manager, Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	}
	observed, reason := c.now(), "softwareupdated recorded no time for its last scan (LastSuccessfulDate), so the age of this answer is unknown"
	if checked, err := time.Parse(macUpdatesDate, prefs.LastSuccessfulDate); err == nil && checked.Before(observed) {
		observed, reason = checked, ""
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
func (c *Collector) macPendingUpdates(ctx context.Context, prefs softwareUpdateDomain) (*posturev1.Updates, error) {
	if prefs.RecommendedUpdates != nil {
		return countRecommendedUpdates(*prefs.RecommendedUpdates), nil
	}
	if prefs.LastRecommendedUpdatesAvailable != nil {
		s := *prefs.LastRecommendedUpdatesAvailable
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
func countRecommendedUpdates(list []recommendedUpdate) *posturev1.Updates {
	u := &posturev1.Updates{}
	for _, item := range list {
		u.Pending++
		if securityUpdate(item.Identifier, item.ProductKey, item.DisplayName) {
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
	var prefs, managed softwareUpdateDomain
	if err := c.readDefaults(ctx, softwareUpdatePrefs, &prefs); err != nil && !errors.Is(err, errNoDomain) {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error()), Mechanism: macUpdateMechanism}
	}
	if err := c.readDefaults(ctx, managedSoftwareUpdatePrefs, &managed); err != nil && !errors.Is(err, errNoDomain) {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error()), Mechanism: macUpdateMechanism}
	}
	return macAutoUpdateState(prefs, managed, c.now())
}

// macAutoUpdateState decides from the preferences read at t, the managed
// ones (configuration profiles) winning.
func macAutoUpdateState(prefs, managed softwareUpdateDomain, t time.Time) *posturev1.AutoUpdate {
	check := managed.AutomaticCheckEnabled.or(prefs.AutomaticCheckEnabled)
	critical := managed.CriticalUpdateInstall.or(prefs.CriticalUpdateInstall)
	download := managed.AutomaticDownload.or(prefs.AutomaticDownload).value
	macOS := managed.AutomaticallyInstallMacOSUpdates.or(prefs.AutomaticallyInstallMacOSUpdates).value
	if !check.set || !critical.set {
		var missing []string
		if !check.set {
			missing = append(missing, "AutomaticCheckEnabled")
		}
		if !critical.set {
			missing = append(missing, "CriticalUpdateInstall")
		}
		return &posturev1.AutoUpdate{Mechanism: macUpdateMechanism, Meta: metaAt(t, posturev1.Status_STATUS_UNAVAILABLE,
			fmt.Sprintf("%s not set in %s or a configuration profile: the macOS default applies and cannot be read",
				strings.Join(missing, " and "), softwareUpdatePrefs))}
	}
	return &posturev1.AutoUpdate{
		Meta:      metaAt(t, posturev1.Status_STATUS_OK, ""),
		Enabled:   check.value && critical.value,
		Mechanism: macUpdateMechanism,
		Detail: fmt.Sprintf("check %v, download %v, install security responses and system files %v, install macOS updates %v",
			check.value, download, critical.value, macOS),
	}
}
