// Package testtools is shared test infrastructure: it finds the external
// programs tests depend on, opens the in-process TPM simulator, runs
// swtpm, a software TPM, as a separate process the way a device's TPM sits
// outside the agent, and runs nginx in front of the collector. Only tests
// import it.
//
// A test whose tool is missing is skipped with a loud message. CI sets
// POSTURE_REQUIRE_TOOLS=1 so that a missing tool fails instead of letting
// the test pass silently.
package testtools

import (
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
)

// RequireEnv is the environment variable that turns a missing tool from a
// skip into a failure when set to 1.
const RequireEnv = "POSTURE_REQUIRE_TOOLS"

// Require returns the path of the program name, or skips the test when it
// is not installed (fails it when RequireEnv is 1).
func Require(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	missing(t, fmt.Sprintf("MISSING TOOL %s: %v; install it (.ci/run lists what the tests need and how it installs them)", name, err))
	return ""
}

func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatal(msg)
	}
	t.Skipf("%s; set %s=1 to make this a failure", msg, RequireEnv)
}

// Simulator opens the go-tpm-tools TPM simulator (the Microsoft reference
// TPM, in process, needing cgo) with hierarchy seeds derived from seed, so
// one seed always yields the same EK and two seeds two distinct TPMs. Each
// call starts from a freshly manufactured TPM. The simulator is a process
// singleton: Get blocks until the previous one is closed, so close it
// before opening the next; the test's end closes it otherwise.
//
// Fixed seeds live only in memory: sim.Reset (a reboot) reloads the seeds
// manufactured into NV, which changes the SRK and EK and makes stored AK
// blobs fail to load. Seed 0 selects random seeds kept in NV instead; use
// it for tests that reset the TPM.
func Simulator(t testing.TB, seed int64) (transport.TPM, *simulator.Simulator) {
	t.Helper()
	open := func() (*simulator.Simulator, error) { return simulator.GetWithFixedSeedInsecure(seed) }
	if seed == 0 {
		open = simulator.Get
	}
	sim, err := open()
	if err != nil {
		missing(t, fmt.Sprintf("TPM SIMULATOR UNAVAILABLE (it needs cgo and libssl-dev): %v", err))
	}
	t.Cleanup(func() {
		if !sim.IsClosed() {
			_ = sim.Close()
		}
	})
	return transport.FromReadWriter(sim), sim
}

// SWTPM is a running swtpm process with a manufactured TPM 2.0: EKs with
// certificates from a local CA made for this test, sha256 PCRs, and NV
// locked as on a real TPM.
type SWTPM struct {
	// Addr reaches the TPM with identity.OpenTPMDevice: "tcp://127.0.0.1:P",
	// whose control (platform) port is P+1.
	Addr string
	// StateDir holds the TPM state; it survives Restart.
	StateDir string
	// EKCACerts are the local CA's root and the intermediate that issued the
	// EK certificates; both belong in an ekcert_roots pool.
	EKCACerts []*x509.Certificate
	// EKCAFile is a PEM bundle of EKCACerts, usable as ekcert_roots.
	EKCAFile string

	t       testing.TB
	bin     string
	dir     string
	port    int
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// StartSWTPM manufactures a TPM with swtpm_setup --create-ek-cert, using a
// local CA and configuration files kept under the test's temporary
// directory (never /etc or /var), and runs swtpm on loopback TCP until the
// test ends. swtpm starts the TPM itself (not-need-init,startup-clear), so
// clients must not power it on.
func StartSWTPM(t testing.TB) *SWTPM {
	t.Helper()
	bin := Require(t, "swtpm")
	setup := Require(t, "swtpm_setup")
	localca := Require(t, "swtpm_localca")

	dir := t.TempDir()
	s := &SWTPM{t: t, bin: bin, dir: dir, StateDir: filepath.Join(dir, "state")}
	caDir := filepath.Join(dir, "localca")
	for _, d := range []string{s.StateDir, caDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"swtpm_setup.conf": fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			localca, filepath.Join(dir, "swtpm-localca.conf"), filepath.Join(dir, "swtpm-localca.options")),
		"swtpm-localca.conf": fmt.Sprintf("statedir = %s\nsigningkey = %s\nissuercert = %s\ncertserial = %s\n",
			caDir, filepath.Join(caDir, "signkey.pem"), filepath.Join(caDir, "issuercert.pem"), filepath.Join(caDir, "certserial")),
		"swtpm-localca.options": "--platform-manufacturer Posture\n--platform-version 2.1\n--platform-model test\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logFile := filepath.Join(dir, "swtpm_setup.log")
	out, err := exec.Command(setup, "--tpm2", "--tpmstate", s.StateDir,
		"--create-ek-cert", "--lock-nvram",
		"--config", filepath.Join(dir, "swtpm_setup.conf"),
		"--logfile", logFile).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(logFile)
		t.Fatalf("swtpm_setup: %v\n%s\n%s", err, out, log)
	}

	var bundle []byte
	for _, name := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		data, err := os.ReadFile(filepath.Join(caDir, name))
		if err != nil {
			t.Fatalf("swtpm_localca made no CA certificate: %v", err)
		}
		block, _ := pem.Decode(data)
		if block == nil {
			t.Fatalf("%s: no PEM certificate", name)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s.EKCACerts = append(s.EKCACerts, c)
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	s.EKCAFile = filepath.Join(dir, "ek-ca.pem")
	if err := os.WriteFile(s.EKCAFile, bundle, 0o600); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(s.stop)
	// Another process may take the ports between choosing and binding
	// them; swtpm then exits and another pair is tried.
	for attempt := 0; ; attempt++ {
		port, err := freePortPair()
		if err != nil {
			t.Fatalf("swtpm: %v", err)
		}
		s.port = port
		s.Addr = "tcp://127.0.0.1:" + strconv.Itoa(port)
		err = s.start()
		if err == nil {
			return s
		}
		if attempt == 4 {
			t.Fatal(err)
		}
	}
}

// Restart kills swtpm and starts it again on the same state and ports: to
// the TPM this is a power loss and a TPM Reset, so resetCount grows. Open
// connections break; clients reconnect with OpenTPMDevice.
func (s *SWTPM) Restart() {
	s.t.Helper()
	s.stop()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// freePortPair finds loopback ports P and P+1 that are free now, the pair
// the Microsoft simulator protocol expects.
func freePortPair() (int, error) {
	for range 50 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
		l1.Close()
		if err == nil {
			l2.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free pair of adjacent loopback ports")
}

func (s *SWTPM) start() error {
	logPath := filepath.Join(s.dir, "swtpm.log")
	cmd := exec.Command(s.bin, "socket", "--tpm2",
		"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(s.port),
		"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(s.port+1),
		"--tpmstate", "dir="+s.StateDir,
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+logPath)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start swtpm: %w", err)
	}
	s.cmd = cmd
	exited := make(chan struct{})
	s.exited = exited
	go func() {
		s.waitErr = cmd.Wait()
		close(exited)
	}()
	// swtpm answers once it listens and has loaded its state.
	deadline := time.Now().Add(10 * time.Second)
	for s.ping() != nil {
		select {
		case <-exited:
			s.cmd = nil
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("swtpm exited at start (%v): %s", s.waitErr, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return errors.New("swtpm did not answer within 10s")
		}
	}
	return nil
}

// ping sends TPM2_GetRandom(1) in the simulator protocol framing.
func (s *SWTPM) ping() error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.port), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	getRandom := []byte{0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 1}
	frame := append([]byte{0, 0, 0, 8, 0, 0, 0, 0, byte(len(getRandom))}, getRandom...)
	if _, err := c.Write(frame); err != nil {
		return err
	}
	// The reply is a length, the TPM response and a 4-byte acknowledgement.
	var size [4]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		return err
	}
	_, err = io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(size[:]))+4)
	return err
}

func (s *SWTPM) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}
