package testtools

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
		if err := cmd.Start(); err != nil {
			t.Fatalf("start nginx: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()

		var err error
		for _, addr := range addrs {
			if err = waitListening(addr, exited); err != nil {
				break
			}
		}
		if err == nil {
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
					log, _ := os.ReadFile(errorLog)
					t.Logf("nginx error.log:\n%s", log)
				}
			})
			return addrs
		}
		_ = cmd.Process.Kill()
		log, _ := os.ReadFile(errorLog)
		if attempt < 3 && bytes.Contains(log, []byte("Address already in use")) {
			continue
		}
		t.Fatalf("nginx did not start: %v\n%s\nerror.log:\n%s", err, out.String(), log)
	}
}

// waitListening waits until addr accepts connections or the process exits.
func waitListening(addr string, exited <-chan error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return errors.Join(errors.New("the process exited"), err)
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
