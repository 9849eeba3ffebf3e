package notify

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// notificationServer is org.freedesktop.Notifications as the test runs
// it: it records every notification.
type notificationServer struct {
	mu   sync.Mutex
	got  []string
	next uint32
}

func (s *notificationServer) Notify(app string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, app+"|"+summary+"|"+body)
	s.next++
	return s.next, nil
}

// sessionBus starts a dbus-daemon with a session bus of its own for the
// test and returns its address.
func sessionBus(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		if os.Getenv("POSTURE_REQUIRE_TOOLS") != "" {
			t.Fatalf("dbus-daemon not found (apt-get install dbus-daemon): %v", err)
		}
		t.Skip("SKIPPED: dbus-daemon not found, the D-Bus path is not tested (apt-get install dbus-daemon)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "session.conf")
	os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=`+filepath.Join(dir, "bus")+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`), 0o600)
	cmd := exec.Command(bin, "--config-file="+conf, "--nofork", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon printed no address")
	}
	return ""
}

// A notification reaches the freedesktop notification service on a real
// session bus.
func TestNotifyBus(t *testing.T) {
	addr := sessionBus(t)
	conn, err := dbus.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Auth(nil); err != nil {
		t.Fatal(err)
	}
	if err := conn.Hello(); err != nil {
		t.Fatal(err)
	}
	srv := &notificationServer{}
	if err := conn.Export(srv, "/org/freedesktop/Notifications", "org.freedesktop.Notifications"); err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName("org.freedesktop.Notifications", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own the notification service: %v %v", reply, err)
	}
	if err := NotifyBus(addr, "Device check failing", "disk encryption: not encrypted: /."); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.got) != 1 || srv.got[0] != "Posture|Device check failing|disk encryption: not encrypted: /." {
		t.Errorf("the service got %q", srv.got)
	}
}

// As a user without a session bus, nothing is shown.
func TestNoSessionBus(t *testing.T) {
	if os.Getuid() == 0 {
		t.Skip("root asks logind for sessions; this is the user's path")
	}
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	if err := New().Notify("t", "b"); err != ErrNoSession {
		t.Errorf("Notify without a session bus: %v, want ErrNoSession", err)
	}
}
