package signals

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// The measurements that ask systemd, logind and firewalld are tested
// against a real bus: a dbus-daemon each test starts on a socket of its
// own, where fake services, built from the outputs in testdata that
// systemctl, loginctl and busctl printed for the real ones, own the real
// services' names and answer on connections of their own, as the real
// services do.

// testBus is a running dbus-daemon.
type testBus struct {
	t    *testing.T
	addr string
}

// busConfig is the system bus's configuration cut down to what the tests
// need: a socket of their own, and anyone may own any name and call
// anything.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

// startTestBus starts dbus-daemon until the test ends. Without
// dbus-daemon (Debian package dbus-daemon) the test is skipped, or fails
// with POSTURE_REQUIRE_TOOLS=1.
func startTestBus(t *testing.T) *testBus {
	t.Helper()
	daemon := requireTool(t, "dbus-daemon")
	// A socket path must fit in 108 bytes, which test temporary
	// directories named after long test names may not.
	dir, err := os.MkdirTemp("", "bus")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "system_bus_socket")
	conf := filepath.Join(dir, "system.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, busConfig, sock), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(daemon, "--config-file="+conf, "--nofork", "--nopidfile", "--print-address")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// The daemon prints its address once it listens.
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
	}()
	select {
	case addr := <-line:
		if strings.TrimSpace(addr) == "" {
			t.Fatalf("dbus-daemon exited: %s", stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("dbus-daemon did not start: %s", stderr.String())
	}
	return &testBus{t: t, addr: "unix:path=" + sock}
}

// own connects to the bus as a service owning name, until the test ends.
func (b *testBus) own(name string) *dbus.Conn {
	b.t.Helper()
	conn, err := dbus.Connect(b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { conn.Close() })
	if reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		b.t.Fatalf("own %s: %v %v", name, reply, err)
	}
	return conn
}

// export exports methods on conn at path under iface.
func (b *testBus) export(conn *dbus.Conn, path dbus.ObjectPath, iface string, methods map[string]any) {
	b.t.Helper()
	if err := conn.ExportMethodTable(methods, path, iface); err != nil {
		b.t.Fatal(err)
	}
}

// fixtureText reads a file under testdata.
func fixtureText(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// busErrorFromCLI turns an error a command-line client printed for a
// failed call ("Failed to get unit file state for x.timer: No such file or
// directory", "Call failed: The name … was not provided by any .service
// files") back into the error the service sent: its message is what
// follows the client's own words.
func busErrorFromCLI(name, printed string) *dbus.Error {
	msg := strings.TrimSpace(printed)
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return dbus.NewError(name, []any{msg})
}

// serveSystemd answers Manager.GetUnitFileState as systemd 252 did for the
// captures in testdata/autoupdate: units maps a unit to the file holding
// what systemctl is-enabled printed for it; a unit not in units is not
// installed.
func (b *testBus) serveSystemd(units map[string]string) {
	b.t.Helper()
	missing := fixtureText(b.t, "autoupdate/systemctl-is-enabled-missing.stderr.txt")
	conn := b.own(systemdService)
	b.export(conn, systemdPath, systemdService+".Manager", map[string]any{
		"GetUnitFileState": func(unit string) (string, *dbus.Error) {
			file, ok := units[unit]
			if !ok {
				return "", busErrorFromCLI("org.freedesktop.DBus.Error.FileNotFound", missing)
			}
			return strings.TrimSpace(fixtureText(b.t, file)), nil
		},
	})
}

// serveFirewalld answers getDefaultZone with the zone busctl printed in a
// capture (`s "public"`).
func (b *testBus) serveFirewalld(zoneFile string) {
	b.t.Helper()
	reply := strings.TrimSpace(fixtureText(b.t, zoneFile))
	zone, ok := strings.CutPrefix(reply, "s ")
	if !ok {
		b.t.Fatalf("%s: %q is not a busctl string reply", zoneFile, reply)
	}
	zone, err := strconv.Unquote(zone)
	if err != nil {
		b.t.Fatalf("%s: %v", zoneFile, err)
	}
	conn := b.own(firewalldService)
	b.export(conn, firewalldPath, firewalldService, map[string]any{
		"getDefaultZone": func() (string, *dbus.Error) { return zone, nil },
	})
}

// logindSessions reads what loginctl printed about sessions: list-sessions
// (ID, uid, user, seat, tty) and show-session's blocks of properties.
func logindSessions(t *testing.T, listFile, showFile string) ([]logindSessionEntry, map[string]map[string]string) {
	t.Helper()
	var entries []logindSessionEntry
	for line := range strings.Lines(fixtureText(t, listFile)) {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		uid, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			t.Fatalf("%s: %q: %v", listFile, line, err)
		}
		seat := f[3]
		if seat == "-" {
			seat = ""
		}
		entries = append(entries, logindSessionEntry{ID: f[0], UID: uint32(uid), User: f[2], Seat: seat,
			Path: dbus.ObjectPath("/org/freedesktop/login1/session/" + busPathPart(f[0]))})
	}
	blocks := map[string]map[string]string{}
	if showFile != "" {
		for block := range strings.SplitSeq(fixtureText(t, showFile), "\n\n") {
			props := map[string]string{}
			for line := range strings.Lines(block) {
				if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
					props[k] = v
				}
			}
			if props["Id"] != "" {
				blocks[props["Id"]] = props
			}
		}
	}
	return entries, blocks
}

// busPathPart escapes a session ID for an object path as logind does
// (sd_bus_path_encode): characters other than letters and digits become
// _xx.
func busPathPart(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' && i > 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return b.String()
}

// logindProperties are the D-Bus values of the session properties loginctl
// printed: strings, and User, printed as the uid, as the (uo) logind sends.
func logindProperties(t *testing.T, printed map[string]string) map[string]dbus.Variant {
	t.Helper()
	out := map[string]dbus.Variant{}
	for k, v := range printed {
		if k != "User" {
			out[k] = dbus.MakeVariant(v)
			continue
		}
		uid, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			t.Fatalf("User=%q: %v", v, err)
		}
		out[k] = dbus.MakeVariant(struct {
			UID  uint32
			Path dbus.ObjectPath
		}{uint32(uid), dbus.ObjectPath("/org/freedesktop/login1/user/_" + v)})
	}
	return out
}

// serveLogind answers Manager.ListSessions and each session's properties
// from loginctl's captures.
func (b *testBus) serveLogind(listFile, showFile string) {
	b.t.Helper()
	entries, blocks := logindSessions(b.t, listFile, showFile)
	conn := b.own(logindService)
	b.export(conn, logindPath, logindService+".Manager", map[string]any{
		"ListSessions": func() ([]logindSessionEntry, *dbus.Error) { return entries, nil },
	})
	for _, e := range entries {
		props := logindProperties(b.t, blocks[e.ID])
		b.export(conn, e.Path, "org.freedesktop.DBus.Properties", map[string]any{
			"GetAll": func(iface string) (map[string]dbus.Variant, *dbus.Error) {
				if iface != logindSession {
					return map[string]dbus.Variant{}, nil
				}
				return props, nil
			},
		})
	}
}
