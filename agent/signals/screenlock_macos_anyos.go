package signals

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// On macOS the screen locks when the screen saver starts or the display
// sleeps, whichever comes first, plus the password delay. The delay (or
// "off") is per user, from sysadminctl -screenLock status; the screen
// saver's idle time is a per-user, per-host preference; display sleep is
// system-wide (pmset). Only the user at the console is measured: that is
// whose screen can be left unlocked.

func (c *Collector) macScreenLock(ctx context.Context) *posturev1.ScreenLock {
	u, loggedIn, err := c.macConsoleUser(ctx)
	if err != nil {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, "cannot tell who is logged in: "+err.Error())}
	}
	if !loggedIn {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_NOT_APPLICABLE, "no graphical session")}
	}

	var in macScreenLockInputs
	stdout, stderr, code, err := c.runAsUser(ctx, u, sysadminctl, "-screenLock", "status")
	if err != nil {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	// sysadminctl logs its answer on stderr.
	in.sysadminctl = string(stdout) + string(stderr)
	if code != 0 {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_ERROR,
			commandError(sysadminctl, []string{"-screenLock", "status"}, code, stderr, stdout).Error())}
	}

	args := []string{"-currentHost", "read", "com.apple.screensaver", "idleTime"}
	stdout, stderr, code, err = c.runAsUser(ctx, u, defaultsCmd, args...)
	switch {
	case err != nil:
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	case code == 0:
		n, err := strconv.Atoi(strings.TrimSpace(string(stdout)))
		if err != nil {
			return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_ERROR,
				fmt.Sprintf("screen saver idleTime is %q, want seconds", firstLine(stdout)))}
		}
		in.idleTime, in.idleTimeSet = n, true
	case !strings.Contains(string(stderr), "does not exist"):
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_ERROR, commandError(defaultsCmd, args, code, stderr, stdout).Error())}
	}

	stdout, stderr, code, err = c.run(ctx, pmset, "-g")
	if err != nil {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	if code != 0 {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_ERROR, commandError(pmset, []string{"-g"}, code, stderr, stdout).Error())}
	}
	in.displaySleep, in.displaySleepSet = parsePmsetDisplaySleep(stdout)

	return macScreenLockState(in, c.now())
}

// macScreenLockInputs are the raw facts the decision needs.
type macScreenLockInputs struct {
	sysadminctl     string
	idleTime        int // seconds; 0 = never
	idleTimeSet     bool
	displaySleep    int // minutes; 0 = never
	displaySleepSet bool
}

var (
	screenLockDelay = regexp.MustCompile(`screenLock delay is (immediate|(\d+) seconds?)`)
	screenLockOff   = regexp.MustCompile(`screenLock is off`)
)

// macScreenLockState decides from what was read at t. sysadminctl prints
// "screenLock delay is immediate", "screenLock delay is 300 seconds" or
// "screenLock is off".
func macScreenLockState(in macScreenLockInputs, t time.Time) *posturev1.ScreenLock {
	var delay int
	switch m := screenLockDelay.FindStringSubmatch(in.sysadminctl); {
	case m != nil && m[1] == "immediate":
	case m != nil:
		delay, _ = strconv.Atoi(m[2])
	case screenLockOff.MatchString(in.sysadminctl):
		return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_OK, ""),
			Detail: "no password is required after the screen saver starts or the display sleeps (System Settings › Lock Screen)"}
	default:
		return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_ERROR,
			fmt.Sprintf("sysadminctl -screenLock status printed %q, want \"screenLock delay is …\" or \"screenLock is off\"", firstLine([]byte(in.sysadminctl))))}
	}
	idle := -1 // seconds until the screen saver or display sleep; -1 never
	if in.idleTimeSet && in.idleTime > 0 {
		idle = in.idleTime
	}
	if in.displaySleepSet && in.displaySleep > 0 && (idle < 0 || in.displaySleep*60 < idle) {
		idle = in.displaySleep * 60
	}
	switch {
	case idle >= 0:
		return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_OK, ""), Enabled: true,
			TimeoutSeconds: uint32(min(idle+delay, 1<<32-1))}
	case !in.idleTimeSet:
		return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_UNAVAILABLE,
			"the display never sleeps and the screen saver's idle time is not set (the macOS default applies and cannot be read)")}
	}
	return &posturev1.ScreenLock{Meta: metaAt(t, posturev1.Status_STATUS_OK, ""),
		Detail: "neither the screen saver (idleTime 0) nor display sleep (displaysleep 0) ever starts, so the screen never locks"}
}

// parsePmsetDisplaySleep reads the "displaysleep N" line of pmset -g
// (minutes; the line may carry a note after the number).
func parsePmsetDisplaySleep(b []byte) (int, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "displaysleep" {
			n, err := strconv.Atoi(f[1])
			return n, err == nil
		}
	}
	return 0, false
}
