package browsercert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// securityTool is macOS's keychain command.
const securityTool = "/usr/bin/security"

// DefaultBrowserApps are the browsers given access to the browser key when
// it is imported (security import -T), those of them that are installed:
// Safari, Chrome and Edge read client identities from the keychain, and
// Firefox does too through its OS client-certificate module.
var DefaultBrowserApps = []string{
	"/Applications/Safari.app",
	"/Applications/Google Chrome.app",
	"/Applications/Microsoft Edge.app",
	"/Applications/Firefox.app",
}

// Keychain is a macOS keychain, the user's login keychain by default, where
// Safari, Chrome, Edge and Firefox find client identities. It is driven
// with /usr/bin/security, which comes with macOS: the Security framework's
// Go bindings need cgo, and the agent is built without it. This file has no
// build constraint so that its tests run everywhere; only macOS has the
// tool.
type Keychain struct {
	// Path is the keychain file.
	Path string
	// Apps may use the imported key without the keychain asking the user
	// (security import -T); DefaultKeychain sets those of
	// DefaultBrowserApps that are installed.
	Apps []string
	// Prepare, when set, adjusts each security command before it runs:
	// the uninstaller, as root, runs them as the keychain's owner.
	Prepare func(*exec.Cmd)
	// Security runs the security tool with args and returns what it
	// printed (stdout and stderr) and an error for a non-zero exit; nil
	// runs /usr/bin/security.
	Security func(args ...string) ([]byte, error)
}

// DefaultKeychain is the user's login keychain, with the installed
// browsers of DefaultBrowserApps.
func DefaultKeychain() (Keychain, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return Keychain{}, fmt.Errorf("find the home directory for the login keychain: %w", err)
	}
	k := Keychain{Path: filepath.Join(home, "Library", "Keychains", "login.keychain-db")}
	for _, app := range DefaultBrowserApps {
		if _, err := os.Stat(app); err == nil {
			k.Apps = append(k.Apps, app)
		}
	}
	return k, nil
}

func (k Keychain) security(args ...string) ([]byte, error) {
	if k.Security != nil {
		return k.Security(args...)
	}
	var out bytes.Buffer
	cmd := exec.Command(securityTool, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if k.Prepare != nil {
		k.Prepare(cmd)
	}
	err := cmd.Run()
	return out.Bytes(), err
}

// importArgs is the security command that imports the PKCS #12 file
// under password into the keychain, its private key not extractable (-x),
// usable by the browsers in Apps.
func (k Keychain) importArgs(file, password string) []string {
	args := []string{"import", file, "-k", k.Path, "-f", "pkcs12", "-x", "-P", password}
	for _, app := range k.Apps {
		args = append(args, "-T", app)
	}
	return args
}

// Install imports key and cert into the keychain, first removing the
// identities under the certificate's common name: a renewal replaces the
// previous one.
func (k Keychain) Install(key *ecdsa.PrivateKey, cert *x509.Certificate) error {
	if err := k.Remove(cert.Subject.CommonName); err != nil {
		return err
	}
	// security reads the PKCS #12 password from its command line only
	// (without -P it asks in a dialog) and refuses an empty one on recent
	// macOS. The password is random and used once: it opens nothing but
	// this file, which only the user can read and which is gone as soon as
	// the import is done. The legacy encoding (3DES, SHA-1 MAC) is the one
	// every macOS release imports.
	pw := make([]byte, 16)
	if _, err := rand.Read(pw); err != nil {
		return err
	}
	password := hex.EncodeToString(pw)
	pfx, err := pkcs12.LegacyDES.WithRand(rand.Reader).Encode(key, cert, nil, password)
	if err != nil {
		return fmt.Errorf("package the browser certificate: %w", err)
	}
	f, err := os.CreateTemp("", "posture-browser-*.p12")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(pfx); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if out, err := k.security(k.importArgs(f.Name(), password)...); err != nil {
		return fmt.Errorf("import the browser certificate into %s (is the keychain unlocked?): %v: %s", k.Path, err, strings.TrimSpace(string(out)))
	}
	if _, err := k.Certificate(cert.Subject.CommonName); err != nil {
		return fmt.Errorf("imported the browser certificate into %s, but: %w", k.Path, err)
	}
	return nil
}

// certificates lists the keychain's certificates, as security
// find-certificate -a -p prints them: PEM blocks, read with encoding/pem.
func (k Keychain) certificates() ([]*x509.Certificate, error) {
	out, err := k.security("find-certificate", "-a", "-p", k.Path)
	if err != nil {
		// An empty keychain: errSecItemNotFound, whose message is
		// "The specified item could not be found in the keychain."
		if bytes.Contains(out, []byte("could not be found")) {
			return nil, nil
		}
		return nil, fmt.Errorf("list the certificates of %s: %v: %s", k.Path, err, strings.TrimSpace(string(out)))
	}
	var certs []*x509.Certificate
	for rest := out; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		// A certificate Go cannot parse is none of ours.
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			certs = append(certs, c)
		}
	}
	return certs, nil
}

// named lists the certificates whose common name is nick.
func (k Keychain) named(nick string) ([]*x509.Certificate, error) {
	certs, err := k.certificates()
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, c := range certs {
		if c.Subject.CommonName == nick {
			out = append(out, c)
		}
	}
	return out, nil
}

// Certificate reads the certificate whose common name is nick; it fails
// when there are several, so that Ensure installs one afresh.
func (k Keychain) Certificate(nick string) (*x509.Certificate, error) {
	certs, err := k.named(nick)
	if err != nil {
		return nil, err
	}
	switch len(certs) {
	case 0:
		return nil, fmt.Errorf("no certificate %q in %s", nick, k.Path)
	case 1:
		return certs[0], nil
	}
	return nil, fmt.Errorf("%d certificates %q in %s", len(certs), nick, k.Path)
}

// Nicknames lists the common names of the keychain's certificates.
func (k Keychain) Nicknames() ([]string, error) {
	certs, err := k.certificates()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var names []string
	for _, c := range certs {
		if n := c.Subject.CommonName; n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	return names, nil
}

// sha1Hex is the certificate's SHA-1 hash, by which security names it
// (-Z).
func sha1Hex(c *x509.Certificate) string {
	sum := sha1.Sum(c.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// Remove deletes every certificate whose common name is nick with its
// private key (security delete-identity), or alone when its key is gone; a
// name not in the keychain is no error.
func (k Keychain) Remove(nick string) error {
	certs, err := k.named(nick)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range certs {
		h := sha1Hex(c)
		if _, err := k.security("delete-identity", "-Z", h, k.Path); err != nil {
			if out, err2 := k.security("delete-certificate", "-Z", h, k.Path); err2 != nil {
				errs = append(errs, fmt.Errorf("remove %q (SHA-1 %s) from %s: %v: %s", nick, h, k.Path, err2, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}

// userKeychain is a local account's login keychain, found by
// loginKeychains.
type userKeychain struct {
	User, Home, Path string
	UID, GID         uint32
}

// loginKeychains lists the login keychains of the accounts whose homes are
// in usersDir (/Users on macOS), with the owner of each home as owner
// reports it; homes without a login keychain, Shared and hidden entries
// are skipped.
func loginKeychains(usersDir string, owner func(os.FileInfo) (uid, gid uint32, ok bool)) ([]userKeychain, error) {
	entries, err := os.ReadDir(usersDir)
	if err != nil {
		return nil, fmt.Errorf("list local accounts: %w", err)
	}
	var out []userKeychain
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || name == "Shared" || strings.HasPrefix(name, ".") {
			continue
		}
		home := filepath.Join(usersDir, name)
		kc := filepath.Join(home, "Library", "Keychains", "login.keychain-db")
		st, err := os.Stat(kc)
		if err != nil {
			continue
		}
		uid, gid, ok := owner(st)
		if !ok {
			continue
		}
		out = append(out, userKeychain{User: name, Home: home, Path: kc, UID: uid, GID: gid})
	}
	return out, nil
}
