package testtools

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Nginx returns the nginx binary, or skips the test when nginx is not
// installed (fails it when RequireEnv is 1). Debian installs it in
// /usr/sbin, outside a non-root PATH.
func Nginx(t testing.TB) string {
	t.Helper()
	name := "nginx"
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		name = "/usr/sbin/nginx"
	}
	return Require(t, name)
}

// StartNginx runs nginx (bin) in the foreground with its files in dir until
// the test ends, and returns the addresses it listens on. render writes
// the whole configuration (nginx.conf, in dir) for listeners loopback
// addresses chosen free; an address taken between choosing and binding is
// retried with others. The configuration must run one foreground process
// (daemon off; master_process off) and keep its pid and temporary paths in
// dir. When the test fails, nginx's error log (dir/error.log) is logged.
func StartNginx(t testing.TB, bin, dir string, listeners int, render func(addrs []string) []byte) []string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		addrs := make([]string, listeners)
		for i := range addrs {
			addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
		}
		confPath := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(confPath, render(addrs), 0o600); err != nil {
			t.Fatal(err)
		}
		errorLog := filepath.Join(dir, "error.log")
		var out bytes.Buffer
		cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", errorLog)
		cmd.Stdout, cmd.Stderr = &out, &out
		errorLogText := func() string { log, _ := os.ReadFile(errorLog); return string(log) }
		err := runServer(t, cmd, addrs, func() string { return "nginx error.log:\n" + errorLogText() })
		if err == nil {
			return addrs
		}
		if attempt < 3 && strings.Contains(errorLogText(), "Address already in use") {
			continue
		}
		t.Fatalf("nginx did not start: %v\n%s\nerror.log:\n%s", err, out.String(), errorLogText())
	}
}

// runServer starts cmd, a server in the foreground, and waits until it
// listens on every one of addrs. Once it does, the server runs until the
// test ends (SIGTERM, a kill after 5 s), and logs() is logged if the test
// failed. If it does not, it is killed and the reason returned.
func runServer(t testing.TB, cmd *exec.Cmd, addrs []string, logs func() string) error {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	for _, addr := range addrs {
		if err := waitListening(addr, exited); err != nil {
			_ = cmd.Process.Kill()
			<-exited // its output is whole, and no longer written
			return errors.Join(err, waitErr)
		}
	}
	t.Cleanup(func() {
		// SIGQUIT would wait for keep-alive connections; TERM is a fast stop.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Log(logs())
		}
	})
	return nil
}

// waitListening waits until addr accepts connections or the process exits.
func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("the process exited")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("nothing listened within 10s")
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
