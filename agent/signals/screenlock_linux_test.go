package signals

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

const (
	listSessionsLine = "loginctl list-sessions --no-legend"
	showProps        = " -p Id -p Name -p User -p Type -p Class -p Desktop -p State"
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
		listSessionsLine: {stdout: "screenlock/loginctl-list-sessions.stdout.txt"},
		"loginctl show-session 2 7 c1" + showProps:                                        {stdout: "screenlock/loginctl-show-session.stdout.txt"},
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
	desktop := map[string]string{"usr/bin/loginctl": "", "etc/passwd": "@testdata/screenlock/passwd", "run/user/1000/wayland-0": ""}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{"usr/bin/loginctl": "", "etc/passwd": "@testdata/screenlock/passwd", "run/user/1000/wayland-0": ""}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	kde := map[string]recorded{
		listSessionsLine:                      {stdout: "screenlock/loginctl-list-sessions-kde.stdout.txt"},
		"loginctl show-session 3" + showProps: {stdout: "screenlock/loginctl-show-session-kde.stdout.txt"},
	}
	const alice = "user alice (GNOME session 2): "

	tests := []struct {
		name       string
		euid       int
		files      map[string]string
		recordings map[string]recorded
		want       *posturev1.ScreenLock
	}{
		{
			name:  "GNOME defaults",
			files: desktop,
			recordings: gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: locks(300),
		},
		{
			name:  "GNOME idle 600 s plus lock delay 30 s",
			files: desktop,
			recordings: gnomeRecordings("gsettings-screensaver-delay30.stdout.txt", "gsettings-idle-delay-600.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: locks(630),
		},
		{
			name:  "GNOME lock off",
			files: desktop,
			recordings: gnomeRecordings("gsettings-screensaver-lock-off.stdout.txt", "gsettings-idle-delay.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: &posturev1.ScreenLock{Meta: ok(""), Detail: alice + "automatic screen lock is off (org.gnome.desktop.screensaver lock-enabled false)"},
		},
		{
			name:  "GNOME never idle",
			files: desktop,
			recordings: gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay-0.stdout.txt",
				"gsettings-disable-lock-screen.stdout.txt"),
			want: &posturev1.ScreenLock{Meta: ok(""), Detail: alice + "the screen never goes idle (org.gnome.desktop.session idle-delay 0), so it never locks"},
		},
		{
			name:  "GNOME lockdown",
			files: desktop,
			recordings: gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay.stdout.txt",
				"gsettings-disable-lock-screen-true.stdout.txt"),
			want: &posturev1.ScreenLock{Meta: ok(""), Detail: alice + "locking is forbidden by org.gnome.desktop.lockdown disable-lock-screen"},
		},
		{
			name:  "GNOME schemas missing",
			files: desktop,
			recordings: map[string]recorded{
				listSessionsLine: {stdout: "screenlock/loginctl-list-sessions.stdout.txt"},
				"loginctl show-session 2 7 c1" + showProps: {stdout: "screenlock/loginctl-show-session.stdout.txt"},
				asUser(1000, "alice", "list-recursively", "org.gnome.desktop.screensaver"): {
					stderr: "screenlock/gsettings-no-schema.stderr.txt", exitCode: 1},
			},
			want: &posturev1.ScreenLock{Meta: unavailable(alice + "read GNOME settings of user alice: " +
				"gsettings list-recursively org.gnome.desktop.screensaver exited with status 1: No such schema ?org.gnome.desktop.nosuch?")},
		},
		{
			name:  "agent runs as the session's user",
			euid:  1000,
			files: desktop,
			recordings: map[string]recorded{
				listSessionsLine: {stdout: "screenlock/loginctl-list-sessions.stdout.txt"},
				"loginctl show-session 2 7 c1" + showProps:                     {stdout: "screenlock/loginctl-show-session.stdout.txt"},
				"gsettings list-recursively org.gnome.desktop.screensaver":     {stdout: "screenlock/gsettings-screensaver.stdout.txt"},
				"gsettings get org.gnome.desktop.session idle-delay":           {stdout: "screenlock/gsettings-idle-delay.stdout.txt"},
				"gsettings get org.gnome.desktop.lockdown disable-lock-screen": {stdout: "screenlock/gsettings-disable-lock-screen.stdout.txt"},
			},
			want: locks(300),
		},
		{
			name:  "agent runs as another user",
			euid:  1001,
			files: desktop,
			recordings: map[string]recorded{
				listSessionsLine: {stdout: "screenlock/loginctl-list-sessions.stdout.txt"},
				"loginctl show-session 2 7 c1" + showProps: {stdout: "screenlock/loginctl-show-session.stdout.txt"},
			},
			want: &posturev1.ScreenLock{Meta: unavailable(alice + "needs root to read the GNOME settings of user alice")},
		},
		{
			name:       "KDE with the user's settings",
			files:      with(map[string]string{"home/carol/.config/kscreenlockerrc": "@testdata/screenlock/kscreenlockerrc-user"}),
			recordings: kde,
			want:       locks(630),
		},
		{
			name:       "KDE defaults",
			files:      desktop,
			recordings: kde,
			want:       locks(305),
		},
		{
			name:       "KDE autolock off",
			files:      with(map[string]string{"home/carol/.config/kscreenlockerrc": "@testdata/screenlock/kscreenlockerrc-user-off"}),
			recordings: kde,
			want:       &posturev1.ScreenLock{Meta: ok(""), Detail: "user carol (KDE session 3): automatic screen lock is off (kscreenlockerrc [Daemon] Autolock=false)"},
		},
		{
			name: "KDE system settings locked down",
			files: with(map[string]string{
				"etc/xdg/kscreenlockerrc":            "@testdata/screenlock/kscreenlockerrc-system-immutable",
				"home/carol/.config/kscreenlockerrc": "@testdata/screenlock/kscreenlockerrc-user-off",
			}),
			recordings: kde,
			want:       locks(180),
		},
		{
			name:  "other desktop",
			files: desktop,
			recordings: map[string]recorded{
				listSessionsLine:                      {stdout: "screenlock/loginctl-list-sessions-xfce.stdout.txt"},
				"loginctl show-session 4" + showProps: {stdout: "screenlock/loginctl-show-session-xfce.stdout.txt"},
			},
			want: &posturev1.ScreenLock{Meta: unavailable(
				"user dave (XFCE session 4): the screen lock of the XFCE desktop is not measured; only GNOME and KDE Plasma are")},
		},
		{
			name:  "only the login screen",
			files: desktop,
			recordings: map[string]recorded{
				listSessionsLine:                       {stdout: "screenlock/loginctl-list-sessions-greeter.stdout.txt"},
				"loginctl show-session c1" + showProps: {stdout: "screenlock/loginctl-show-session-greeter.stdout.txt"},
			},
			want: noSession,
		},
		{
			name:       "nobody logged in",
			files:      desktop,
			recordings: map[string]recorded{listSessionsLine: {}},
			want:       noSession,
		},
		{
			name:  "no display",
			files: map[string]string{"usr/bin/loginctl": ""},
			want:  noSession,
		},
		{
			name:       "no systemd, an X server",
			files:      map[string]string{"usr/bin/loginctl": "", "tmp/.X11-unix/X0": ""},
			recordings: map[string]recorded{listSessionsLine: {stderr: "screenlock/loginctl-nosystemd.stderr.txt", exitCode: 1}},
			want: &posturev1.ScreenLock{Meta: unavailable("display sockets exist (/tmp/.X11-unix/X0) but logind is not running " +
				"(System has not been booted with systemd as init system (PID 1). Can't operate.), so their users are unknown: " +
				"run the agent where systemd-logind or elogind manages sessions")},
		},
		{
			name:  "a display but no loginctl",
			files: map[string]string{"run/user/1000/wayland-0": ""},
			want: &posturev1.ScreenLock{Meta: unavailable("display sockets exist (/run/user/1000/wayland-0) but loginctl is not installed, " +
				"so their users are unknown: run the agent where systemd-logind or elogind manages sessions")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Options{Root: fakeRoot(t, tt.files), Runner: newFakeRunner(t, tt.recordings), Now: fixedNow})
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
		"usr/bin/loginctl": "", "etc/passwd": "@testdata/screenlock/passwd", "run/user/1000/wayland-0": "",
		"home/alice/.config/dconf/user": "",
	})
	runner := newFakeRunner(t, gnomeRecordings("gsettings-screensaver.stdout.txt", "gsettings-idle-delay.stdout.txt",
		"gsettings-disable-lock-screen.stdout.txt"))
	clock := &fakeClock{now: testTime}
	c := New(Options{Root: root, Runner: runner, Now: clock.Now})
	c.euid = 0
	ctx := context.Background()
	c.screenLock(ctx)
	clock.Advance(time.Minute)
	got := c.screenLock(ctx)
	if n := runner.count(listSessionsLine); n != 1 {
		t.Fatalf("logind asked %d times with nothing changed, want 1", n)
	}
	if !got.GetEnabled() || got.GetTimeoutSeconds() != 300 || !got.GetMeta().GetObservedAt().AsTime().Equal(clock.Now()) {
		t.Errorf("reused result %v, want enabled after 300 s, observed now", got)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(root, "home", "alice", ".config", "dconf", "user"), later, later); err != nil {
		t.Fatal(err)
	}
	c.screenLock(ctx)
	if n := runner.count(listSessionsLine); n != 2 {
		t.Errorf("logind asked %d times after alice's settings changed, want 2", n)
	}
}

func TestParseLoginctlShow(t *testing.T) {
	got := parseLoginctlShow([]byte("Id=2\nName=alice\n\nId=7\nName=bob\nDesktop=\n"))
	want := []map[string]string{{"Id": "2", "Name": "alice"}, {"Id": "7", "Name": "bob", "Desktop": ""}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseLoginctlShow (-want +got):\n%s", diff)
	}
}
