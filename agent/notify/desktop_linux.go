package notify

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"
)

// AppName is the application name notifications carry.
const AppName = "Posture"

// NotifyBus shows a notification through the freedesktop notification
// service (org.freedesktop.Notifications.Notify) on the session bus at
// address, as the user who owns that bus.
func NotifyBus(address, title, body string) error {
	conn, err := dbus.Dial(address)
	if err != nil {
		return fmt.Errorf("connect to the session bus %s: %w", address, err)
	}
	defer conn.Close()
	if err := conn.Auth(nil); err != nil {
		return fmt.Errorf("authenticate to the session bus: %w", err)
	}
	if err := conn.Hello(); err != nil {
		return fmt.Errorf("session bus: %w", err)
	}
	obj := conn.Object("org.freedesktop.Notifications", "/org/freedesktop/Notifications")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// urgency 2 (critical) keeps it on screen until the user sees it.
	hints := map[string]dbus.Variant{"urgency": dbus.MakeVariant(byte(2))}
	call := obj.CallWithContext(ctx, "org.freedesktop.Notifications.Notify", 0,
		AppName, uint32(0), "dialog-warning", title, body, []string{}, hints, int32(-1))
	if call.Err != nil {
		return fmt.Errorf("show the notification: %w", call.Err)
	}
	return nil
}

// session is a user's active graphical session.
type session struct {
	uid  uint32
	user string
}

// graphicalSessions asks logind (org.freedesktop.login1 on the system
// bus) for the active local sessions of type x11 or wayland.
func graphicalSessions() ([]session, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("connect to the system bus: %w", err)
	}
	defer conn.Close()
	var list []struct {
		ID   string
		UID  uint32
		User string
		Seat string
		Path dbus.ObjectPath
	}
	if err := conn.Object("org.freedesktop.login1", "/org/freedesktop/login1").Call("org.freedesktop.login1.Manager.ListSessions", 0).Store(&list); err != nil {
		return nil, fmt.Errorf("list logind sessions: %w", err)
	}
	var out []session
	for _, s := range list {
		obj := conn.Object("org.freedesktop.login1", s.Path)
		typ, err1 := obj.GetProperty("org.freedesktop.login1.Session.Type")
		active, err2 := obj.GetProperty("org.freedesktop.login1.Session.Active")
		remote, err3 := obj.GetProperty("org.freedesktop.login1.Session.Remote")
		if err := errors.Join(err1, err2, err3); err != nil {
			continue
		}
		if t, _ := typ.Value().(string); (t == "x11" || t == "wayland") && active.Value() == true && remote.Value() == false {
			out = append(out, session{uid: s.UID, user: s.User})
		}
	}
	return out, nil
}

// linuxDesktop notifies every active graphical session: on the session
// bus the agent was started with when it runs as a user, or, as the
// system service (root), in each logged-in user's session by running the
// agent's notify command as that user: a session bus admits its owner.
type linuxDesktop struct {
	helper string // the posture-agent executable
}

// New is this machine's desktop.
func New() Desktop {
	exe, _ := os.Executable()
	return &linuxDesktop{helper: exe}
}

func (d *linuxDesktop) Notify(title, body string) error {
	if os.Getuid() != 0 {
		addr := os.Getenv("DBUS_SESSION_BUS_ADDRESS")
		if addr == "" {
			return ErrNoSession
		}
		return NotifyBus(addr, title, body)
	}
	sessions, err := graphicalSessions()
	if err != nil {
		return fmt.Errorf("%w (%v)", ErrNoSession, err)
	}
	if len(sessions) == 0 {
		return ErrNoSession
	}
	var errs []error
	for _, s := range sessions {
		errs = append(errs, d.notifyAs(s, title, body))
	}
	return errors.Join(errs...)
}

// notifyAs runs "posture-agent notify" as the session's user, on its bus.
func (d *linuxDesktop) notifyAs(s session, title, body string) error {
	bus := fmt.Sprintf("/run/user/%d/bus", s.uid)
	if _, err := os.Stat(bus); err != nil {
		return nil // no session bus: nothing to show in
	}
	gid := s.uid
	if st, err := os.Stat(fmt.Sprintf("/run/user/%d", s.uid)); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			gid = sys.Gid
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.helper, "notify", "--title", title, "--body", body)
	cmd.Env = []string{"DBUS_SESSION_BUS_ADDRESS=unix:path=" + bus, "HOME=/", "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: s.uid, Gid: gid, NoSetGroups: true}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("notify user %s (uid %s): %v: %s", s.user, strconv.Itoa(int(s.uid)), err, out)
	}
	return nil
}
