package signals

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// The screen lock is a per-user desktop setting, so it is read for each
// user with a graphical session, as logind lists them over D-Bus. GNOME
// keeps it in GSettings, read with gsettings as that user: only GLib
// applies the user's dconf database, the system databases and their locks
// over the schema defaults (no Go library reads dconf's GVDB files), and
// dconf's D-Bus service writes settings but does not read them. KDE Plasma
// keeps it in kscreenlockerrc.

// screenLockSession is one graphical login session.
type screenLockSession struct {
	id, user string
	desktop  string // "GNOME", "KDE", or the session's own name for others
	uid      int
}

// userLock is the screen lock measured for one session.
type userLock struct {
	known   bool   // false: could not be measured; why says so
	enabled bool   // locks after inactivity
	timeout uint32 // seconds of inactivity before it locks
	why     string
}

// screenLock measures the screen lock, reusing the last result while
// nothing it depends on has changed: no session started or ended, no
// display appeared, and no user or system setting file was written.
// Asking logind and gsettings costs ~25 ms of CPU per process.
func (c *Collector) screenLock(ctx context.Context) *posturev1.ScreenLock {
	return cachedConfig(c, "screenlock", c.screenLockStamp(), func() *posturev1.ScreenLock { return c.measureScreenLock(ctx) })
}

// screenLockStamp covers what the screen lock depends on: sessions and
// display sockets, users, the system dconf databases and KDE defaults, and
// the users' own settings under /home and /root.
func (c *Collector) screenLockStamp() string {
	paths := []string{c.path("/run/systemd/sessions"), c.path("/tmp/.X11-unix"), c.path("/run/user"),
		c.path("/etc/passwd"), c.path("/etc/dconf/db"), c.path("/etc/xdg/kscreenlockerrc")}
	for _, pattern := range []string{"/home/*/.config/dconf/user", "/home/*/.config/kscreenlockerrc",
		"/root/.config/dconf/user", "/root/.config/kscreenlockerrc"} {
		m, _ := filepath.Glob(c.path(pattern))
		paths = append(paths, m...)
	}
	return fileStamp(paths...)
}

func (c *Collector) measureScreenLock(ctx context.Context) *posturev1.ScreenLock {
	sessions, err := c.graphicalSessions(ctx)
	if err != nil {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	if len(sessions) == 0 {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_NOT_APPLICABLE, "no graphical session")}
	}
	var unknown, off []string
	enabled, timeout := true, uint32(0)
	for _, s := range sessions {
		l := c.sessionLock(ctx, s)
		who := fmt.Sprintf("user %s (%s session %s)", s.user, s.desktop, s.id)
		switch {
		case !l.known:
			unknown = append(unknown, who+": "+l.why)
		case !l.enabled:
			enabled = false
			off = append(off, who+": "+l.why)
		default:
			timeout = max(timeout, l.timeout)
		}
	}
	if len(unknown) > 0 {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, strings.Join(unknown, "; "))}
	}
	if !enabled {
		return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Detail: strings.Join(off, "; ")}
	}
	return &posturev1.ScreenLock{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, TimeoutSeconds: timeout}
}

// logind's D-Bus API (org.freedesktop.login1(5)).
const (
	logindService    = "org.freedesktop.login1"
	logindPath       = "/org/freedesktop/login1"
	logindSession    = logindService + ".Session"
	propertiesGetAll = "org.freedesktop.DBus.Properties.GetAll"
)

// logindSessionEntry is one entry of Manager.ListSessions: a(susso).
type logindSessionEntry struct {
	ID   string
	UID  uint32
	User string
	Seat string
	Path dbus.ObjectPath
}

// graphicalSessions lists the users' X11 and Wayland sessions from logind.
// Every such session has a display socket, so without one there is no
// graphical session and logind is not asked.
func (c *Collector) graphicalSessions(ctx context.Context) ([]screenLockSession, error) {
	sockets := c.displaySockets()
	if len(sockets) == 0 {
		return nil, nil
	}
	var entries []logindSessionEntry
	err := c.busCall(ctx, logindService, logindPath, logindService+".Manager.ListSessions", []any{&entries})
	switch {
	case errors.Is(err, errNoSystemBus):
		return nil, noLogind(sockets, "logind cannot be asked: "+err.Error())
	case serviceMissing(err):
		return nil, noLogind(sockets, "logind is not running ("+logindService+" is not on the system bus)")
	case err != nil:
		return nil, fmt.Errorf("cannot list login sessions: %w", err)
	}
	var out []screenLockSession
	for _, e := range entries {
		var props map[string]dbus.Variant
		err := c.busCall(ctx, logindService, e.Path, propertiesGetAll, []any{&props}, logindSession)
		if err != nil {
			// A session that ended since it was listed is gone, not an error.
			if busErrorName(err) == "org.freedesktop.DBus.Error.UnknownObject" {
				continue
			}
			return nil, fmt.Errorf("cannot read login session %s: %w", e.ID, err)
		}
		if s, ok := graphicalSession(props); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// graphicalSession reads a session's logind properties (Id, Name, User,
// Type, Class, Desktop, State) and keeps the sessions of users at a
// graphical display: greeters (the login screen) and lock screens are not
// a user at the desk, and tty and ssh sessions have no screen to lock.
func graphicalSession(props map[string]dbus.Variant) (screenLockSession, bool) {
	str := func(name string) string {
		s, _ := props[name].Value().(string)
		return s
	}
	graphical := str("Type") == "x11" || str("Type") == "wayland" || str("Type") == "mir"
	if !graphical || !strings.HasPrefix(str("Class"), "user") || str("State") == "closing" {
		return screenLockSession{}, false
	}
	// User is (uo): the uid and the user's object path.
	var user struct {
		UID  uint32
		Path dbus.ObjectPath
	}
	if err := props["User"].Store(&user); err != nil {
		return screenLockSession{}, false
	}
	return screenLockSession{id: str("Id"), user: str("Name"), uid: int(user.UID), desktop: desktopFamily(str("Desktop"))}, true
}

// displaySockets lists the X11 (/tmp/.X11-unix/X0) and Wayland
// ($XDG_RUNTIME_DIR/wayland-0) display sockets, relative to Root.
func (c *Collector) displaySockets() []string {
	var sockets []string
	x11, _ := filepath.Glob(c.path("/tmp/.X11-unix/X*"))
	wayland, _ := filepath.Glob(c.path("/run/user/*/wayland-[0-9]*"))
	for _, p := range append(x11, wayland...) {
		if !strings.HasSuffix(p, ".lock") {
			sockets = append(sockets, strings.TrimPrefix(p, strings.TrimSuffix(c.root, "/")))
		}
	}
	return sockets
}

// noLogind explains why displays exist but their users cannot be known.
func noLogind(sockets []string, why string) error {
	return fmt.Errorf("display sockets exist (%s) but %s, so their users are unknown: run the agent where systemd-logind or elogind manages sessions",
		strings.Join(sockets, ", "), why)
}

// desktopFamily names the desktop environments the agent can measure from
// a session's XDG_SESSION_DESKTOP ("ubuntu", "gnome-xorg", "plasmawayland").
func desktopFamily(desktop string) string {
	d := strings.ToLower(desktop)
	switch {
	case strings.Contains(d, "gnome") || strings.Contains(d, "ubuntu") || d == "pop":
		return "GNOME"
	case strings.Contains(d, "kde") || strings.Contains(d, "plasma"):
		return "KDE"
	case d == "":
		return "unnamed desktop"
	}
	return desktop
}

// sessionLock measures the screen lock of one session's user.
func (c *Collector) sessionLock(ctx context.Context, s screenLockSession) userLock {
	switch s.desktop {
	case "GNOME":
		return c.gnomeLock(ctx, s)
	case "KDE":
		return c.kdeLock(ctx, s)
	case "unnamed desktop":
		return userLock{why: "the session names no desktop environment (XDG_SESSION_DESKTOP is unset); only GNOME and KDE Plasma are measured"}
	}
	return userLock{why: fmt.Sprintf("the screen lock of the %s desktop is not measured; only GNOME and KDE Plasma are", s.desktop)}
}

// passwdEntry is the part of a passwd(5) line the agent needs.
type passwdEntry struct {
	name     string
	uid, gid int
	home     string
}

// lookupUID finds a user in /etc/passwd, then through NSS (getent), which
// also knows directory users.
func (c *Collector) lookupUID(ctx context.Context, uid int) (passwdEntry, error) {
	if b, err := os.ReadFile(c.path("/etc/passwd")); err == nil {
		if e, ok := findPasswd(b, uid); ok {
			return e, nil
		}
	}
	stdout, _, code, err := c.run(ctx, "getent", "passwd", strconv.Itoa(uid))
	if err == nil && code == 0 {
		if e, ok := findPasswd(stdout, uid); ok {
			return e, nil
		}
	}
	return passwdEntry{}, fmt.Errorf("user %d is in neither /etc/passwd nor getent passwd: %w", uid, fs.ErrNotExist)
}

func findPasswd(b []byte, uid int) (passwdEntry, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 {
			continue
		}
		u, err1 := strconv.Atoi(f[2])
		g, err2 := strconv.Atoi(f[3])
		if err1 == nil && err2 == nil && u == uid {
			return passwdEntry{name: f[0], uid: u, gid: g, home: f[5]}, true
		}
	}
	return passwdEntry{}, false
}

// gsettingsKeys are read in one call per schema.
const (
	gnomeScreensaver = "org.gnome.desktop.screensaver"
	gnomeSession     = "org.gnome.desktop.session"
	gnomeLockdown    = "org.gnome.desktop.lockdown"
)

// gnomeLock reads the user's GNOME settings: the screen locks idle-delay
// seconds after the last input (0 = never idle) plus lock-delay, if
// lock-enabled and not forbidden by lockdown disable-lock-screen.
func (c *Collector) gnomeLock(ctx context.Context, s screenLockSession) userLock {
	u, err := c.lookupUID(ctx, s.uid)
	if err != nil {
		return userLock{why: err.Error()}
	}
	saver, err := c.gsettings(ctx, u, "list-recursively", gnomeScreensaver)
	if err != nil {
		return userLock{why: err.Error()}
	}
	idle, err := c.gsettings(ctx, u, "get", gnomeSession, "idle-delay")
	if err != nil {
		return userLock{why: err.Error()}
	}
	lockdown, err := c.gsettings(ctx, u, "get", gnomeLockdown, "disable-lock-screen")
	if err != nil {
		return userLock{why: err.Error()}
	}
	return gnomeLockState(parseGsettingsList(saver, gnomeScreensaver), strings.TrimSpace(idle), strings.TrimSpace(lockdown))
}

// gnomeLockState decides from GVariant texts: lock-enabled "true",
// lock-delay "uint32 0", idle-delay "uint32 300", disable-lock-screen
// "false".
func gnomeLockState(saver map[string]string, idleDelay, disableLock string) userLock {
	lockEnabled, ok1 := parseGVariantBool(saver["lock-enabled"])
	lockDelay, ok2 := parseGVariantUint(saver["lock-delay"])
	idle, ok3 := parseGVariantUint(idleDelay)
	disabled, ok4 := parseGVariantBool(disableLock)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return userLock{why: fmt.Sprintf("unexpected gsettings values: lock-enabled %q, lock-delay %q, idle-delay %q, disable-lock-screen %q",
			saver["lock-enabled"], saver["lock-delay"], idleDelay, disableLock)}
	}
	switch {
	case disabled:
		return userLock{known: true, why: "locking is forbidden by org.gnome.desktop.lockdown disable-lock-screen"}
	case !lockEnabled:
		return userLock{known: true, why: "automatic screen lock is off (org.gnome.desktop.screensaver lock-enabled false)"}
	case idle == 0:
		return userLock{known: true, why: "the screen never goes idle (org.gnome.desktop.session idle-delay 0), so it never locks"}
	}
	return userLock{known: true, enabled: true, timeout: uint32(min(idle+lockDelay, 1<<32-1))}
}

// gsettings runs gsettings as the session's user. As root the agent drops
// to the user with setpriv (no PAM session, so nothing is logged per call);
// as another user it cannot read someone else's settings.
func (c *Collector) gsettings(ctx context.Context, u passwdEntry, args ...string) (string, error) {
	var name string
	var argv []string
	switch c.euid {
	case u.uid:
		name, argv = "gsettings", args
	case 0:
		name = "setpriv"
		argv = append([]string{
			"--reuid=" + strconv.Itoa(u.uid), "--regid=" + strconv.Itoa(u.gid), "--init-groups",
			"env", "-i", "HOME=" + u.home, "USER=" + u.name, "LC_ALL=C",
			fmt.Sprintf("XDG_RUNTIME_DIR=/run/user/%d", u.uid),
			fmt.Sprintf("DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/%d/bus", u.uid),
			"gsettings"}, args...)
	default:
		return "", fmt.Errorf("needs root to read the GNOME settings of user %s", u.name)
	}
	stdout, stderr, code, err := c.run(ctx, name, argv...)
	if err != nil {
		return "", fmt.Errorf("read GNOME settings of user %s: %w", u.name, err)
	}
	if code != 0 {
		return "", fmt.Errorf("read GNOME settings of user %s: %w", u.name, commandError("gsettings", args, code, stderr, stdout))
	}
	return string(stdout), nil
}

// parseGsettingsList reads "gsettings list-recursively SCHEMA" lines
// ("org.gnome.desktop.screensaver lock-delay uint32 0") into key → value.
func parseGsettingsList(s, schema string) map[string]string {
	out := make(map[string]string)
	for line := range strings.Lines(s) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), schema+" ")
		if !ok {
			continue
		}
		if k, v, ok := strings.Cut(rest, " "); ok {
			out[k] = v
		}
	}
	return out
}

func parseGVariantBool(s string) (bool, bool) {
	switch s {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// parseGVariantUint reads "uint32 300" (gsettings prints the type of a
// non-default-typed number) or a bare "300".
func parseGVariantUint(s string) (uint32, bool) {
	s = strings.TrimPrefix(s, "uint32 ")
	v, err := strconv.ParseUint(s, 10, 32)
	return uint32(v), err == nil
}

// kdeLock reads kscreenlockerrc as KDE's kcfg defines it: group [Daemon],
// Autolock (default true), Timeout in minutes (default 5), Lock, which
// requires the password (default true), and LockGrace in seconds
// (default 5). System-wide values in /etc/xdg are overridden by the user's
// file unless the group is marked immutable ([Daemon][$i]).
func (c *Collector) kdeLock(ctx context.Context, s screenLockSession) userLock {
	u, err := c.lookupUID(ctx, s.uid)
	if err != nil {
		return userLock{why: err.Error()}
	}
	settings := map[string]string{"Autolock": "true", "Timeout": "5", "Lock": "true", "LockGrace": "5"}
	system, err := os.ReadFile(c.path("/etc/xdg/kscreenlockerrc"))
	immutable := false
	if err == nil {
		immutable = mergeKConfig(settings, system, "Daemon")
	}
	userFile := filepath.Join(u.home, ".config", "kscreenlockerrc")
	if !immutable {
		b, err := os.ReadFile(c.path(userFile))
		switch {
		case errors.Is(err, fs.ErrPermission):
			return userLock{why: "needs root to read " + userFile}
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return userLock{why: err.Error()}
		case err == nil:
			mergeKConfig(settings, b, "Daemon")
		}
	}
	autolock, lock := settings["Autolock"] == "true", settings["Lock"] == "true"
	minutes, err1 := strconv.ParseUint(settings["Timeout"], 10, 32)
	grace, err2 := strconv.ParseUint(settings["LockGrace"], 10, 32)
	if err1 != nil || err2 != nil {
		return userLock{why: fmt.Sprintf("unexpected kscreenlockerrc values: Timeout %q, LockGrace %q", settings["Timeout"], settings["LockGrace"])}
	}
	switch {
	case !autolock:
		return userLock{known: true, why: "automatic screen lock is off (kscreenlockerrc [Daemon] Autolock=false)"}
	case !lock:
		return userLock{known: true, why: "the screen locker does not ask for a password (kscreenlockerrc [Daemon] Lock=false)"}
	}
	return userLock{known: true, enabled: true, timeout: uint32(min(minutes*60+grace, 1<<32-1))}
}

// mergeKConfig copies the keys of one group of a KConfig INI file into
// settings and reports whether the group is immutable. Keys may carry
// flags ("Timeout[$i]=10") and locales, which are stripped.
func mergeKConfig(settings map[string]string, b []byte, group string) (immutable bool) {
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			groups := strings.Split(strings.TrimSuffix(strings.TrimPrefix(line, "["), "]"), "][")
			in = len(groups) > 0 && groups[0] == group
			if in && slices.Contains(groups[1:], "$i") {
				immutable = true
			}
			continue
		}
		if !in {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, _, _ = strings.Cut(strings.TrimSpace(k), "[")
		settings[k] = strings.TrimSpace(v)
	}
	return immutable
}
