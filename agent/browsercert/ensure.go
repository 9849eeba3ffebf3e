package browsercert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Store is a user's certificate store: an NSS database, the macOS login
// keychain or the Windows CurrentUser store.
type Store interface {
	// Install adds key and cert under the certificate's common name,
	// replacing what was under it.
	Install(key *ecdsa.PrivateKey, cert *x509.Certificate) error
	// Certificate reads the certificate under nickname.
	Certificate(nick string) (*x509.Certificate, error)
	// Nicknames lists what the store holds.
	Nicknames() ([]string, error)
	// Remove deletes what is under nickname, key included.
	Remove(nick string) error
}

// nicknamePrefix starts the common name (and store nickname) of every
// browser certificate: "Posture device <id> (<user>)".
const nicknamePrefix = "Posture device "

// Nickname is the common name the collector gives the browser certificate
// of user on device, which is also its name in the user's store.
func Nickname(deviceID, user string) string {
	return fmt.Sprintf("%s%s (%s)", nicknamePrefix, deviceID, user)
}

// Options configure Ensure.
type Options struct {
	// Socket is the agent's local socket.
	Socket string
	// Store is the user's certificate store.
	Store Store
	// StateFile records which certificate was installed, under which
	// device certificate; empty means DefaultStateFile.
	StateFile string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Result says what Ensure did.
type Result struct {
	DeviceID string
	Nickname string
	// Renewed is set when a new certificate was installed.
	Renewed bool
	// Cert is the certificate in the store.
	Cert *x509.Certificate
}

// state is what the state file keeps.
type state struct {
	Serial      string `json:"serial"`
	IssuedUnder string `json:"issued_under"`
}

// DefaultStateFile is $XDG_CONFIG_HOME/posture/browser-cert.json.
func DefaultStateFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "posture", "browser-cert.json"), nil
}

// Ensure makes sure the user's store holds a browser certificate that
// counts: one issued under the device certificate the agent holds now,
// not past half its lifetime. Otherwise it makes a new key, has the agent
// get it a certificate, and replaces the previous one; it also removes
// browser certificates of other devices (the machine enrolled again).
func Ensure(opts Options) (Result, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	if opts.StateFile == "" {
		f, err := DefaultStateFile()
		if err != nil {
			return Result{}, err
		}
		opts.StateFile = f
	}
	dev, err := Ask(opts.Socket, Request{Op: OpDevice})
	if err != nil {
		return Result{}, err
	}
	res := Result{DeviceID: dev.DeviceID, Nickname: Nickname(dev.DeviceID, dev.User)}
	var st state
	if b, err := os.ReadFile(opts.StateFile); err == nil {
		json.Unmarshal(b, &st)
	}
	if cur, err := opts.Store.Certificate(res.Nickname); err == nil {
		half := cur.NotBefore.Add(cur.NotAfter.Sub(cur.NotBefore) / 2)
		if st.IssuedUnder == dev.DeviceCertSerial && st.Serial == cur.SerialNumber.Text(16) && now().Before(half) {
			res.Cert = cur
			return res, nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return res, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return res, err
	}
	ans, err := Ask(opts.Socket, Request{Op: OpBrowserCert, PublicKey: pub})
	if err != nil {
		return res, err
	}
	cert, err := x509.ParseCertificate(ans.Certificate)
	if err != nil {
		return res, fmt.Errorf("the agent's browser certificate cannot be parsed: %w", err)
	}
	if k, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !k.Equal(&key.PublicKey) {
		return res, errors.New("the agent's browser certificate is not for the key this step made")
	}
	res.Nickname = cert.Subject.CommonName
	if err := opts.Store.Install(key, cert); err != nil {
		return res, err
	}
	// Certificates of this machine's earlier enrollments are of no use.
	if names, err := opts.Store.Nicknames(); err == nil {
		for _, n := range names {
			if strings.HasPrefix(n, nicknamePrefix) && !strings.HasPrefix(n, nicknamePrefix+ans.DeviceID+" ") {
				opts.Store.Remove(n)
			}
		}
	}
	b, _ := json.Marshal(state{Serial: cert.SerialNumber.Text(16), IssuedUnder: ans.DeviceCertSerial})
	if err := os.MkdirAll(filepath.Dir(opts.StateFile), 0o700); err != nil {
		return res, err
	}
	if err := os.WriteFile(opts.StateFile, b, 0o600); err != nil {
		return res, err
	}
	res.Renewed, res.Cert = true, cert
	return res, nil
}

// RemoveAll deletes every browser certificate of Posture from the store.
func RemoveAll(s Store) (removed []string, err error) {
	names, err := s.Nicknames()
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if strings.HasPrefix(n, nicknamePrefix) {
			if err := s.Remove(n); err != nil {
				return removed, err
			}
			removed = append(removed, n)
		}
	}
	return removed, nil
}

// UserStore is a local account's certificate store, set to be changed as
// that account, for the uninstaller.
type UserStore struct {
	User  string
	Store Store
}
