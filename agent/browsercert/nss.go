package browsercert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// NSSDB is an NSS certificate database, the store Chrome and Chromium read
// client certificates from on Linux ($HOME/.pki/nssdb), driven with
// certutil and pk12util (Debian libnss3-tools): NSS offers no Go binding,
// and its sql: database is not a format to write by hand.
type NSSDB struct {
	// Dir is the database directory.
	Dir string
	// Prepare, when set, adjusts each certutil and pk12util command before
	// it runs: the uninstaller, as root, runs them as the database's owner.
	Prepare func(*exec.Cmd)
}

// DefaultNSSDB is the user's database that Chrome and Chromium read.
func DefaultNSSDB() (NSSDB, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return NSSDB{}, fmt.Errorf("find the home directory for the NSS database: %w", err)
	}
	return NSSDB{Dir: filepath.Join(home, ".pki", "nssdb")}, nil
}

func (db NSSDB) arg() string { return "sql:" + db.Dir }

func (db NSSDB) tool(name string, args ...string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is not installed (Debian and Ubuntu: apt-get install libnss3-tools; Fedora: dnf install nss-tools): %w", name, err)
	}
	var out bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if db.Prepare != nil {
		db.Prepare(cmd)
	}
	err = cmd.Run()
	return out.String(), err
}

// ensure creates the database when it does not exist, without a password,
// as Chromium does on first start.
func (db NSSDB) ensure() error {
	if _, err := os.Stat(filepath.Join(db.Dir, "cert9.db")); err == nil {
		return nil
	}
	if err := os.MkdirAll(db.Dir, 0o700); err != nil {
		return fmt.Errorf("create NSS database directory: %w", err)
	}
	if out, err := db.tool("certutil", "-N", "-d", db.arg(), "--empty-password"); err != nil {
		return fmt.Errorf("create NSS database %s: %v: %s", db.Dir, err, strings.TrimSpace(out))
	}
	return nil
}

// Install imports key and cert under the certificate's common name as
// nickname, first removing any certificate (and key) under that nickname:
// a renewal replaces the previous one.
func (db NSSDB) Install(key *ecdsa.PrivateKey, cert *x509.Certificate) error {
	if err := db.ensure(); err != nil {
		return err
	}
	nick := cert.Subject.CommonName
	if err := db.Remove(nick); err != nil {
		return err
	}
	// The PKCS #12 file lives only for the import, readable by the user
	// alone, with an empty password as pk12util -W "" expects.
	pfx, err := pkcs12.Modern.WithRand(rand.Reader).Encode(key, cert, nil, "")
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
	if out, err := db.tool("pk12util", "-d", db.arg(), "-i", f.Name(), "-W", ""); err != nil {
		return fmt.Errorf("import the browser certificate into %s: %v: %s", db.Dir, err, strings.TrimSpace(out))
	}
	// pk12util names a certificate without a friendly name by its subject
	// ("CN - O"); the store's name is the common name alone.
	if !db.Has(nick) {
		names, err := db.Nicknames()
		if err != nil {
			return err
		}
		for _, n := range names {
			if strings.HasPrefix(n, nick+" - ") {
				if out, err := db.tool("certutil", "--rename", "-d", db.arg(), "-n", n, "--new-n", nick); err != nil {
					return fmt.Errorf("rename %q to %q in %s: %v: %s", n, nick, db.Dir, err, strings.TrimSpace(out))
				}
				break
			}
		}
	}
	if !db.Has(nick) {
		return fmt.Errorf("imported the browser certificate into %s, but certutil does not list %q", db.Dir, nick)
	}
	return nil
}

// Has says whether a certificate with nickname is in the database.
func (db NSSDB) Has(nick string) bool {
	_, err := db.tool("certutil", "-L", "-d", db.arg(), "-n", nick)
	return err == nil
}

// Certificate reads the certificate under nickname.
func (db NSSDB) Certificate(nick string) (*x509.Certificate, error) {
	out, err := db.tool("certutil", "-L", "-d", db.arg(), "-n", nick, "-r")
	if err != nil {
		return nil, fmt.Errorf("read %q from %s: %v", nick, db.Dir, err)
	}
	return x509.ParseCertificate([]byte(out))
}

// Nicknames lists the nicknames of the database's certificates.
func (db NSSDB) Nicknames() ([]string, error) {
	out, err := db.tool("certutil", "-L", "-d", db.arg())
	if err != nil {
		return nil, fmt.Errorf("list %s: %v: %s", db.Dir, err, strings.TrimSpace(out))
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		// Rows are the nickname, spaces, then the trust flags (u,u,u).
		line = strings.TrimRight(line, " \t\r")
		i := strings.LastIndexAny(line, " \t")
		if i < 0 || !strings.Contains(line[i+1:], ",") {
			continue
		}
		if n := strings.TrimSpace(line[:i]); n != "" && n != "Certificate Nickname" {
			names = append(names, n)
		}
	}
	return names, nil
}

// Remove deletes every certificate under nickname with its private key; a
// nickname not in the database is no error.
func (db NSSDB) Remove(nick string) error {
	if _, err := os.Stat(filepath.Join(db.Dir, "cert9.db")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for i := 0; i < 16 && db.Has(nick); i++ {
		if out, err := db.tool("certutil", "-F", "-d", db.arg(), "-n", nick); err != nil {
			// A certificate whose key is gone: delete the certificate.
			if out2, err2 := db.tool("certutil", "-D", "-d", db.arg(), "-n", nick); err2 != nil {
				return fmt.Errorf("remove %q from %s: %v: %s %s", nick, db.Dir, err, strings.TrimSpace(out), strings.TrimSpace(out2))
			}
		}
	}
	return nil
}

// Stores is several stores kept alike: one key and certificate installed
// in each (Chromium's NSS database and a Firefox profile's), so that one
// certificate counts for all at the collector, which keeps one per user.
type Stores []Store

// Install installs key and cert in every store.
func (s Stores) Install(key *ecdsa.PrivateKey, cert *x509.Certificate) error {
	for _, st := range s {
		if err := st.Install(key, cert); err != nil {
			return err
		}
	}
	return nil
}

// Certificate reads nick from every store; it fails unless all hold the
// same certificate, so that a store that lost it gets it again.
func (s Stores) Certificate(nick string) (*x509.Certificate, error) {
	var first *x509.Certificate
	for _, st := range s {
		c, err := st.Certificate(nick)
		if err != nil {
			return nil, err
		}
		if first != nil && !first.Equal(c) {
			return nil, fmt.Errorf("the stores hold different certificates under %q", nick)
		}
		first = c
	}
	if first == nil {
		return nil, errors.New("no store")
	}
	return first, nil
}

// Nicknames lists the nicknames of every store, each once.
func (s Stores) Nicknames() ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, st := range s {
		names, err := st.Nicknames()
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out, nil
}

// Remove removes nick from every store.
func (s Stores) Remove(nick string) error {
	for _, st := range s {
		if err := st.Remove(nick); err != nil {
			return err
		}
	}
	return nil
}
