package signals

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const (
	// policiesSystem holds the machine inactivity limit ("Interactive
	// logon: Machine inactivity limit"), which locks every session.
	policiesSystem = `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System`
	// Per-user screen saver settings, and their Group Policy override.
	userDesktop       = `Control Panel\Desktop`
	userDesktopPolicy = `Software\Policies\Microsoft\Windows\Control Panel\Desktop`
)

// screenSaverValues are the per-user values that make a password-protected
// screen saver (all REG_SZ).
var screenSaverValues = []string{"ScreenSaveActive", "ScreenSaverIsSecure", "ScreenSaveTimeOut", "SCRNSAVE.EXE"}

// winScreenLock reads the machine inactivity limit; without one, the
// password-protected screen saver of every user whose profile is loaded
// (the logged-on users).
func (c *Collector) winScreenLock() *posturev1.ScreenLock {
	sys, err := c.regValues(policiesSystem, "InactivityTimeoutSecs")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	if secs, _ := sys["InactivityTimeoutSecs"].(uint64); secs > 0 {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, TimeoutSeconds: uint32(min(secs, 1<<32-1))}
	}
	if c.registry == nil {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, errNoWindowsSource.Error())}
	}
	hives, err := c.registry.SubKeys("HKU")
	if err != nil {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, fmt.Sprintf("cannot list the logged-on users' registry hives (HKU): %v", err))}
	}
	users := map[string]userScreenSaver{}
	for _, sid := range hives {
		// Local and domain accounts (S-1-5-21-…) and Microsoft Entra ID
		// accounts (S-1-12-1-…); not service accounts or the _Classes hives.
		if (!strings.HasPrefix(sid, "S-1-5-21-") && !strings.HasPrefix(sid, "S-1-12-1-")) || strings.HasSuffix(sid, "_Classes") {
			continue
		}
		own, err := c.regValues(`HKU\`+sid+`\`+userDesktop, screenSaverValues...)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
		}
		pol, err := c.regValues(`HKU\`+sid+`\`+userDesktopPolicy, screenSaverValues...)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
		}
		users[sid] = userScreenSaver{own: own, policy: pol}
	}
	return winScreenLockState(users, c.now())
}

// userScreenSaver holds one user's screen saver values and their policy
// override.
type userScreenSaver struct{ own, policy map[string]any }

func (u userScreenSaver) get(name string) string {
	if v, ok := u.policy[name].(string); ok {
		return v
	}
	v, _ := u.own[name].(string)
	return v
}

// winScreenLockState decides from the users' screen savers, read at t:
// each must be active, have a program, ask for the password, and start
// after a timeout.
func winScreenLockState(users map[string]userScreenSaver, t time.Time) *posturev1.ScreenLock {
	if len(users) == 0 {
		return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_NOT_APPLICABLE, "no user is logged on")}
	}
	var off []string
	var timeout uint32
	for _, sid := range slices.Sorted(maps.Keys(users)) {
		u := users[sid]
		secs, _ := strconv.ParseUint(strings.TrimSpace(u.get("ScreenSaveTimeOut")), 10, 32)
		switch {
		case u.get("ScreenSaveActive") != "1" || u.get("SCRNSAVE.EXE") == "":
			off = append(off, "user "+sid+" has no screen saver")
		case u.get("ScreenSaverIsSecure") != "1":
			off = append(off, "user "+sid+"'s screen saver does not ask for the password")
		case secs == 0:
			off = append(off, "user "+sid+"'s screen saver has no timeout")
		default:
			timeout = max(timeout, uint32(secs))
		}
	}
	if len(off) > 0 {
		return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_OK, ""), Detail: strings.Join(off, "; ") +
			" (set the policy \"Interactive logon: Machine inactivity limit\"; locking on display sleep is not examined)"}
	}
	return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_OK, ""), Enabled: true, TimeoutSeconds: timeout}
}
