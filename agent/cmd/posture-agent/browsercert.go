package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/posture-project/posture/agent/browsercert"
	"github.com/posture-project/posture/internal/inert"
)

// defaultSocket is where the agent listens for its users' browser
// certificate requests.
func defaultSocket() string {
	if s := os.Getenv("POSTURE_AGENT_SOCKET"); s != "" {
		return s
	}
	switch runtime.GOOS {
	case "darwin":
		return "/var/run/posture-agent.sock"
	case "windows":
		return "" // no local socket: see docs/browser-certificates.md
	}
	return "/run/posture-agent/agent.sock"
}

// browserCertCommand runs posture-agent browser-cert, the per-user step
// started at login (docs/browser-certificates.md).
func browserCertCommand(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("browser-cert", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", defaultSocket(), "the agent's local socket")
	var nssdbs dirList
	fs.Var(&nssdbs, "nssdb", "NSS database directory; repeat for several (default: $HOME/.pki/nssdb, which Chrome and Chromium read)")
	remove := fs.Bool("remove", false, "remove every Posture browser certificate from the store, and stop")
	watch := fs.Duration("watch", 0, "keep running, checking this often (e.g. 10m) whether the certificate needs renewing")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	store, err := userStore(nssdbs)
	if err != nil {
		return err
	}
	if *remove {
		removed, err := browsercert.RemoveAll(store)
		for _, n := range removed {
			inert.Fprintf(out, "removed %s\n", n)
		}
		return err
	}
	ensure := func() error {
		res, err := browsercert.Ensure(browsercert.Options{Socket: *socket, Store: store})
		if err != nil {
			return err
		}
		if res.Renewed {
			inert.Fprintf(out, "installed browser certificate %q for device %s, valid until %s\n", res.Nickname, res.DeviceID, res.Cert.NotAfter.UTC().Format(time.RFC3339))
		} else {
			inert.Fprintf(out, "browser certificate %q for device %s is current (valid until %s)\n", res.Nickname, res.DeviceID, res.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		return nil
	}
	if *watch <= 0 {
		return ensure()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for {
		if err := ensure(); err != nil {
			// At login the agent may not be up yet, or the network down:
			// try again at the next round.
			inert.Fprintf(os.Stderr, "posture-agent browser-cert: %s\n", err.Error())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*watch):
		}
	}
}

// dirList is a flag given once per directory.
type dirList []string

func (d *dirList) String() string     { return fmt.Sprint([]string(*d)) }
func (d *dirList) Set(v string) error { *d = append(*d, v); return nil }

// userStore is the user's certificate store on this platform: the NSS
// databases named, kept alike, or the default one.
func userStore(nssdbs []string) (browsercert.Store, error) {
	if len(nssdbs) == 1 {
		return browsercert.NSSDB{Dir: nssdbs[0]}, nil
	}
	if len(nssdbs) > 1 {
		var s browsercert.Stores
		for _, d := range nssdbs {
			s = append(s, browsercert.NSSDB{Dir: d})
		}
		return s, nil
	}
	switch runtime.GOOS {
	case "linux", "freebsd", "openbsd", "netbsd":
		return browsercert.DefaultNSSDB()
	}
	return nil, fmt.Errorf("browser certificates on %s: %w (see docs/browser-certificates.md)", runtime.GOOS, errors.ErrUnsupported)
}

// removeUsersBrowserCerts takes every local user's Posture browser
// certificates out of their NSS databases, as each user (uninstall).
func removeUsersBrowserCerts(out io.Writer) {
	dbs, err := browsercert.UserDatabases("/etc/passwd")
	if err != nil {
		if !errors.Is(err, errors.ErrUnsupported) {
			inert.Fprintf(out, "browser certificates not removed: %s\n", err.Error())
		}
		return
	}
	for _, u := range dbs {
		removed, err := browsercert.RemoveAll(u.DB)
		for _, n := range removed {
			inert.Fprintf(out, "removed browser certificate %q of %s\n", n, u.User)
		}
		if err != nil {
			inert.Fprintf(out, "browser certificates of %s not removed: %s\n", u.User, err.Error())
		}
	}
}
