package signals

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

// loginctl's captures of the sessions logind serves in a test.
type logindCapture struct{ list, show string }

var (
	gnomeSessions   = logindCapture{"screenlock/loginctl-list-sessions.stdout.txt", "screenlock/loginctl-show-session.stdout.txt"}
	kdeSessions     = logindCapture{"screenlock/loginctl-list-sessions-kde.stdout.txt", "screenlock/loginctl-show-session-kde.stdout.txt"}
	xfceSessions    = logindCapture{"screenlock/loginctl-list-sessions-xfce.stdout.txt", "screenlock/loginctl-show-session-xfce.stdout.txt"}
	greeterSessions = logindCapture{"screenlock/loginctl-list-sessions-greeter.stdout.txt", "screenlock/loginctl-show-session-greeter.stdout.txt"}
)

// asUser is the command line of gsettings run as a user by a root agent.
func asUser(uid int, name string, args ...string) string {
	return fmt.Sprintf("setpriv --reuid=%d --regid=%d --init-groups env -i HOME=/home/%s USER=%s LC_ALL=C "+
		"XDG_RUNTIME_DIR=/run/user/%d DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/%d/bus gsettings %s",
		uid, uid, name, name, uid, uid, strings.Join(args, " "))
}

// gnomeRecordings are the gsettings calls for alice (uid 1000), as root.
func gnomeRecordings(saver, idle, lockdown string) map[string]recorded {
	return map[string]recorded{
		asUser(1000, "alice", "list-recursively", "org.gnome.desktop.screensaver"):        {stdout: "screenlock/" + saver},
		asUser(1000, "alice", "get", "org.gnome.desktop.session", "idle-delay"):           {stdout: "screenlock/" + idle},
		asUser(1000, "alice", "get", "org.gnome.desktop.lockdown", "disable-lock-screen"): {stdout: "screenlock/" + lockdown},
	}
}

func TestScreenLock(t *testing.T) {
	ok := func(reason string) *posturev1.SignalMeta { return metaAt(testTime, posturev1.Status_STATUS_OK, reason) }
	unavailable := func(reason string) *posturev1.SignalMeta {
		return metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE, reason)
	}
	locks := func(secs uint32) *posturev1.ScreenLock {
		return &posturev1.ScreenLock{Meta: ok(""), Enabled: true, TimeoutSeconds: secs}
	}
	noSession := &posturev1.ScreenLock{Meta: metaAt(testTime, posturev1.Status_STATUS_NOT_APPLICABLE, "no graphical session")}
	// A Wayland socket: some graphical session exists.
	desktop := map[string]string{"etc/passwd": "@testdata/screenlock/passwd", "run/user/1000/wayland-0": ""}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{"etc/passwd": "@testdata/screenlock/passwd", "run/user/1000/wayland-0": ""}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	const alice = "user alice (GNOME session 2): "

	tests := []struct {
		name       string
		euid       int
		files      map[string]string
		sessions   logindCapture // the sessions logind serves; none: no logind on the bus
		noBus      bool          // no system bus at all
		recordings map[string]recorded
		want       *posturev1.ScreenLock
	}{
		{
			name:     "GNOME defaults",
			files:    desktop,
			sessions: gnomeSessions,
			recordings: gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: locks(300),
		},
		{
			name:     "GNOME idle 600 s plus lock delay 30 s",
			files:    desktop,
			sessions: gnomeSessions,
			recordings: gnomeRecordings("gsettings-screensaver-delay30.stdout.txt", "gsettings-idle-delay-600.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: locks(630),
		},
		{
			name:     "GNOME lock off",
			files:    desktop,
			sessions: gnomeSessions,
			recordings: gnomeRecordings("gsettings-screensaver-lock-off.stdout.txt", "gsettings-idle-delay.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: &posturev1.ScreenLock{Meta: ok(""), Detail: alice + "automatic screen lock is off (org.gnome.desktop.screensaver lock-enabled false)"},
		},
		{
			name:     "GNOME never idle",
			files:    desktop,
			sessions: gnomeSessions,
			recordings: gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay-0.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: &posturev1.ScreenLock{Meta: ok(""), Detail: alice + "the screen never goes idle (org.gnome.desktop.session idle-delay 0), so it never locks"},
		},
		{
			name:     "GNOME lockdown",
			files:    desktop,
			sessions: gnomeSessions,
			recordings: gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay.stdout.txt",
				"gsettings-disable-lock-screen-true.stdout.txt"),
			want: &posturev1.ScreenLock{Meta: ok(""), Detail: alice + "locking is forbidden by org.gnome.desktop.lockdown disable-lock-screen"},
		},
		{
			name:     "GNOME schemas missing",
			files:    desktop,
			sessions: gnomeSessions,
			recordings: map[string]recorded{
				asUser(1000, "alice", "list-recursively", "org.gnome.desktop.screensaver"): {
					stderr: "screenlock/gsettings-no-schema.stderr.txt", exitCode: 1},
			},
			want: &posturev1.ScreenLock{Meta: unavailable(alice + "read GNOME settings of user alice: " +
				"gsettings list-recursively org.gnome.desktop.screensaver exited with status 1: No such schema ?org.gnome.desktop.nosuch?")},
		},
		{
			name:     "agent runs as the session's user",
			euid:     1000,
			files:    desktop,
			sessions: gnomeSessions,
			recordings: map[string]recorded{
				"gsettings list-recursively org.gnome.desktop.screensaver":     {stdout: "screenlock/gsettings-screensaver.stdout.txt"},
				"gsettings get org.gnome.desktop.session idle-delay":           {stdout: "screenlock/gsettings-idle-delay.stdout.txt"},
				"gsettings get org.gnome.desktop.lockdown disable-lock-screen": {stdout: "screenlock/gsettings-disable-lock-screen.stdout.txt"},
			},
			want: locks(300),
		},
		{
			name:     "agent runs as another user",
			euid:     1001,
			files:    desktop,
			sessions: gnomeSessions,
			want:     &posturev1.ScreenLock{Meta: unavailable(alice + "needs root to read the GNOME settings of user alice")},
		},
		{
			name:     "KDE with the user's settings",
			files:    with(map[string]string{"home/carol/.config/kscreenlockerrc": "@testdata/screenlock/kscreenlockerrc-user"}),
			sessions: kdeSessions,
			want:     locks(630),
		},
		{
			name:     "KDE defaults",
			files:    desktop,
			sessions: kdeSessions,
			want:     locks(305),
		},
		{
			name:     "KDE autolock off",
			files:    with(map[string]string{"home/carol/.config/kscreenlockerrc": "@testdata/screenlock/kscreenlockerrc-user-off"}),
			sessions: kdeSessions,
			want:     &posturev1.ScreenLock{Meta: ok(""), Detail: "user carol (KDE session 3): automatic screen lock is off (kscreenlockerrc [Daemon] Autolock=false)"},
		},
		{
			name: "KDE system settings locked down",
			files: with(map[string]string{
				"etc/xdg/kscreenlockerrc":            "@testdata/screenlock/kscreenlockerrc-system-immutable",
				"home/carol/.config/kscreenlockerrc": "@testdata/screenlock/kscreenlockerrc-user-off",
			}),
			sessions: kdeSessions,
			want:     locks(180),
		},
		{
			name:     "other desktop",
			files:    desktop,
			sessions: xfceSessions,
			want: &posturev1.ScreenLock{Meta: unavailable(
				"user dave (XFCE session 4): the screen lock of the XFCE desktop is not measured; only GNOME and KDE Plasma are")},
		},
		{
			name:     "only the login screen",
			files:    desktop,
			sessions: greeterSessions,
			want:     noSession,
		},
		{
			name:     "nobody logged in",
			files:    desktop,
			sessions: logindCapture{list: "screenlock/loginctl-list-sessions-none.stdout.txt"},
			want:     noSession,
		},
		{
			name:  "no display",
			noBus: true,
			want:  noSession,
		},
		{
			// As on the machine where loginctl-nosystemd.stderr.txt was
			// captured: no systemd, so no system bus, and an X server.
			name:  "no system bus, an X server",
			files: map[string]string{"tmp/.X11-unix/X0": ""},
			noBus: true,
			want: &posturev1.ScreenLock{Meta: unavailable("display sockets exist (/tmp/.X11-unix/X0) but logind cannot be asked: " +
				"no D-Bus system bus at unix:path=/nonexistent/system_bus_socket " +
				"(dial unix /nonexistent/system_bus_socket: connect: no such file or directory), so their users are unknown: " +
				"run the agent where systemd-logind or elogind manages sessions")},
		},
		{
			name:  "a system bus without logind",
			files: map[string]string{"run/user/1000/wayland-0": ""},
			want: &posturev1.ScreenLock{Meta: unavailable("display sockets exist (/run/user/1000/wayland-0) but logind is not running " +
				"(org.freedesktop.login1 is not on the system bus), so their users are unknown: " +
				"run the agent where systemd-logind or elogind manages sessions")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			busAddr := "unix:path=/nonexistent/system_bus_socket"
			if !tt.noBus {
				bus := startTestBus(t)
				if tt.sessions.list != "" {
					bus.serveLogind(tt.sessions.list, tt.sessions.show)
				}
				busAddr = bus.addr
			}
			c := New(Options{Root: fakeRoot(t, tt.files), Runner: newFakeRunner(t, tt.recordings), Now: fixedNow, SystemBus: busAddr})
			c.euid = tt.euid
			got := c.screenLock(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("screenLock (-want +got):\n%s", diff)
			}
		})
	}
}

// TestScreenLockReusedUntilSettingsChange checks that logind and gsettings
// are asked again only when a session, a display or a settings file
// changes.
func TestScreenLockReusedUntilSettingsChange(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"etc/passwd": "@testdata/screenlock/passwd", "run/user/1000/wayland-0": "",
		"home/alice/.config/dconf/user": "",
	})
	bus := startTestBus(t)
	bus.serveLogind(gnomeSessions.list, gnomeSessions.show)
	runner := newFakeRunner(t, gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay.stdout.txt",
		"gsettings-disable-lock-screen.stdout.txt"))
	clock := &fakeClock{now: testTime}
	c := New(Options{Root: root, Runner: runner, Now: clock.Now, SystemBus: bus.addr})
	c.euid = 0
	ctx := context.Background()
	saver := asUser(1000, "alice", "list-recursively", "org.gnome.desktop.screensaver")
	c.screenLock(ctx)
	clock.Advance(time.Minute)
	got := c.screenLock(ctx)
	if n := runner.count(saver); n != 1 {
		t.Fatalf("measured %d times with nothing changed, want 1", n)
	}
	if !got.GetEnabled() || got.GetTimeoutSeconds() != 300 || !got.GetMeta().GetObservedAt().AsTime().Equal(clock.Now()) {
		t.Errorf("reused result %v, want enabled after 300 s, observed now", got)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(root, "home", "alice", ".config", "dconf", "user"), later, later); err != nil {
		t.Fatal(err)
	}
	c.screenLock(ctx)
	if n := runner.count(saver); n != 2 {
		t.Errorf("measured %d times after alice's settings changed, want 2", n)
	}
}

// The session properties logind sends are decoded as loginctl printed them
// for the captured sessions: only users' graphical sessions are kept.
func TestGraphicalSession(t *testing.T) {
	tests := []struct {
		capture logindCapture
		want    []screenLockSession
	}{
		{gnomeSessions, []screenLockSession{{id: "2", user: "alice", uid: 1000, desktop: "GNOME"}}},
		{kdeSessions, []screenLockSession{{id: "3", user: "carol", uid: 1002, desktop: "KDE"}}},
		{xfceSessions, []screenLockSession{{id: "4", user: "dave", uid: 1003, desktop: "XFCE"}}},
		{greeterSessions, nil},
	}
	for _, tt := range tests {
		t.Run(tt.capture.show, func(t *testing.T) {
			entries, blocks := logindSessions(t, tt.capture.list, tt.capture.show)
			var got []screenLockSession
			for _, e := range entries {
				if s, ok := graphicalSession(logindProperties(t, blocks[e.ID])); ok {
					got = append(got, s)
				}
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(screenLockSession{})); diff != "" {
				t.Errorf("graphical sessions (-want +got):\n%s", diff)
			}
		})
	}
	if _, ok := graphicalSession(map[string]dbus.Variant{"Type": dbus.MakeVariant("wayland"), "Class": dbus.MakeVariant("user"),
		"User": dbus.MakeVariant("1000")}); ok {
		t.Error("a session whose User is not (uo) was kept")
	}
}
