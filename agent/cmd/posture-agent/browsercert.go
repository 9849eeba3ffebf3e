package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/posture-project/posture/agent/browsercert"
	"github.com/posture-project/posture/internal/cliflag"
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
		// An AF_UNIX socket (Windows 10 1803 and later) in a directory of
		// its own, whose access list lets interactive users connect.
		return filepath.Join(envOr("ProgramData", `C:\ProgramData`), "Posture", "socket", "agent.sock")
	}
	return "/run/posture-agent/agent.sock"
}

// newBrowserCertCommand is posture-agent browser-cert, the per-user step
// started at login (docs/browser-certificates.md).
func newBrowserCertCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "browser-cert",
		Short: "As the user (at login): keep this user's browser certificate in their certificate store",
		Long: `browser-cert runs as the device's user, at login: it makes the user's own
browser key, has the agent get a short-lived certificate for it from the
collector (through the agent's local socket, which knows the user by the
socket's peer credentials), and keeps it in the user's certificate store:
on Linux the NSS database, where Chrome, Chromium and Firefox find it; on
macOS the login keychain, its key not extractable, where Safari, Chrome,
Edge and Firefox find it; on Windows the CurrentUser store, its key not
exportable and in the TPM (Microsoft Platform Crypto Provider) where it
can be, where Chrome, Edge and Firefox find it. With --watch it keeps running and renews the
certificate before it expires; --remove takes every Posture browser
certificate out.`,
		Args: noArgs,
		// Run as the logged-in user, who may not read the agent's
		// configuration file; browser-cert needs none of it.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
	}
	fs := cmd.Flags()
	socket := fs.String("socket", defaultSocket(), "the agent's local socket (also $POSTURE_AGENT_SOCKET)")
	nssdbs := fs.StringArray("nssdb", nil, "NSS database directory; repeat for several, kept alike (default: $HOME/.pki/nssdb, which Chrome and Chromium read)")
	keychain := fs.String("keychain", "", "macOS keychain file (default: the login keychain, ~/Library/Keychains/login.keychain-db)")
	remove := fs.Bool("remove", false, "remove every Posture browser certificate from the store, and stop")
	watch := cliflag.Duration(fs, "watch", 0, "keep running, checking this often (e.g. 10m) whether the certificate needs renewing")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return browserCert(cmd.Context(), cmd.OutOrStdout(), *socket, storeFlags{nssdbs: *nssdbs, keychain: *keychain}, *remove, *watch)
	}
	return cmd
}

// browserCert does what browser-cert asks.
func browserCert(ctx context.Context, out io.Writer, socket string, flags storeFlags, remove bool, watch time.Duration) error {
	store, err := userStore(runtime.GOOS, flags)
	if err != nil {
		return err
	}
	if remove {
		removed, err := browsercert.RemoveAll(store)
		for _, n := range removed {
			inert.Fprintf(out, "removed %s\n", n)
		}
		return err
	}
	ensure := func() error {
		res, err := browsercert.Ensure(browsercert.Options{Socket: socket, Store: store})
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
	if watch <= 0 {
		return ensure()
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
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
		case <-time.After(watch):
		}
	}
}

// storeFlags name the stores browser-cert keeps.
type storeFlags struct {
	nssdbs   []string
	keychain string
}

// userStore is the user's certificate store on goos: the NSS databases or
// the keychain named, or the platform's default (the NSS database on
// Linux and the BSDs, the login keychain on macOS, the CurrentUser store
// on Windows).
func userStore(goos string, f storeFlags) (browsercert.Store, error) {
	if len(f.nssdbs) > 0 && f.keychain != "" {
		return nil, errors.New("name NSS databases (--nssdb) or a keychain (--keychain), not both")
	}
	if len(f.nssdbs) == 1 {
		return browsercert.NSSDB{Dir: f.nssdbs[0]}, nil
	}
	if len(f.nssdbs) > 1 {
		var s browsercert.Stores
		for _, d := range f.nssdbs {
			s = append(s, browsercert.NSSDB{Dir: d})
		}
		return s, nil
	}
	if f.keychain != "" || goos == "darwin" {
		k, err := browsercert.DefaultKeychain()
		if f.keychain != "" {
			k.Path = f.keychain
		}
		return k, err
	}
	switch goos {
	case "linux", "freebsd", "openbsd", "netbsd":
		return browsercert.DefaultNSSDB()
	case "windows":
		return browsercert.CurrentUserStore{}, nil
	}
	return nil, fmt.Errorf("browser certificates on %s: %w (see docs/browser-certificates.md)", goos, errors.ErrUnsupported)
}

// removeUsersBrowserCerts takes every local user's Posture browser
// certificates out of their stores (NSS databases on Linux, login
// keychains on macOS), as each user (uninstall); on Windows only the
// store of the account running it, and it says why.
func removeUsersBrowserCerts(out io.Writer) {
	stores, err := browsercert.UserStores()
	if err != nil && !errors.Is(err, errors.ErrUnsupported) {
		// What could be listed is still cleaned.
		inert.Fprintf(out, "browser certificates not removed: %s\n", err.Error())
	}
	for _, u := range stores {
		removed, err := browsercert.RemoveAll(u.Store)
		for _, n := range removed {
			inert.Fprintf(out, "removed browser certificate %q of %s\n", n, u.User)
		}
		if err != nil {
			inert.Fprintf(out, "browser certificates of %s not removed (a locked keychain refuses: delete them in Keychain Access; they expire within a day): %s\n", u.User, err.Error())
		}
	}
}
