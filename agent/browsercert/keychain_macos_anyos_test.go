package browsercert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/posture-project/posture/internal/testtools"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// fakeKeychain plays /usr/bin/security on one keychain in memory, for the
// subcommands Keychain uses, as security(1) documents them. It checks what
// it is given: the PKCS #12 file must be readable by its owner only and
// open with the password on the command line, the key must be an ECDSA key
// matching the certificate.
type fakeKeychain struct {
	t     *testing.T
	path  string
	items []fakeItem
	calls [][]string
	// failImport makes import fail as a locked keychain does.
	failImport bool
	passwords  []string
}

type fakeItem struct {
	cert   *x509.Certificate
	hasKey bool
}

var errExit = errors.New("exit status 1")

func (f *fakeKeychain) run(args ...string) ([]byte, error) {
	f.calls = append(f.calls, append([]string(nil), args...))
	if len(args) < 2 || args[len(args)-1] != f.path && args[0] != "import" {
		f.t.Fatalf("security %q: not on keychain %s", args, f.path)
	}
	switch args[0] {
	case "import":
		if f.failImport {
			return []byte("security: SecKeychainItemImport: User interaction is not allowed.\n"), errExit
		}
		file, password := args[1], ""
		for i := 2; i < len(args)-1; i++ {
			if args[i] == "-P" {
				password = args[i+1]
			}
		}
		f.passwords = append(f.passwords, password)
		st, err := os.Stat(file)
		if err != nil {
			f.t.Fatalf("import: %v", err)
		}
		if st.Mode().Perm() != 0o600 {
			f.t.Errorf("the PKCS #12 file has mode %v, want 0600", st.Mode().Perm())
		}
		b, _ := os.ReadFile(file)
		key, cert, err := pkcs12.Decode(b, password)
		if err != nil {
			return []byte("security: SecKeychainItemImport: MAC verification failed during PKCS12 import (wrong password?)\n"), errExit
		}
		if k, ok := key.(*ecdsa.PrivateKey); !ok || !k.PublicKey.Equal(cert.PublicKey) {
			f.t.Errorf("import: the key does not match the certificate")
		}
		f.items = append(f.items, fakeItem{cert: cert, hasKey: true})
		return []byte("1 identity imported.\n"), nil
	case "find-certificate":
		if len(f.items) == 0 {
			return []byte("security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain.\n"), errExit
		}
		var out []byte
		for _, it := range f.items {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: it.cert.Raw})...)
		}
		return out, nil
	case "delete-identity", "delete-certificate":
		for i, it := range f.items {
			if sha1Hex(it.cert) == args[2] && (it.hasKey || args[0] == "delete-certificate") {
				f.items = append(f.items[:i], f.items[i+1:]...)
				return nil, nil
			}
		}
		return []byte("security: " + args[0] + ": The specified item could not be found in the keychain.\n"), errExit
	}
	f.t.Fatalf("security %q: not a subcommand Keychain should use", args)
	return nil, nil
}

// browserCert is a certificate named cn for key (a new one when nil).
func browserCert(t *testing.T, cn string, key *ecdsa.PrivateKey) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, c
}

func newFakeKeychain(t *testing.T) (*fakeKeychain, Keychain) {
	f := &fakeKeychain{t: t, path: "/Users/alice/Library/Keychains/login.keychain-db"}
	return f, Keychain{Path: f.path, Apps: []string{"/Applications/Safari.app", "/Applications/Google Chrome.app"}, Security: f.run}
}

// The exact command lines Install runs: list (to remove the previous
// identity), import with a one-time password, the key not extractable and
// the browsers allowed, list again to check.
func TestKeychainInstallCommands(t *testing.T) {
	f, k := newFakeKeychain(t)
	key, cert := browserCert(t, Nickname("dev-1", "alice"), nil)
	if err := k.Install(key, cert); err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 3 {
		t.Fatalf("calls: %q", f.calls)
	}
	imp := f.calls[1]
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(f.passwords[0]) {
		t.Errorf("password %q is not 16 random bytes in hex", f.passwords[0])
	}
	if !strings.HasPrefix(imp[1], os.TempDir()) || !strings.HasSuffix(imp[1], ".p12") {
		t.Errorf("PKCS #12 file %q", imp[1])
	}
	if _, err := os.Stat(imp[1]); !os.IsNotExist(err) {
		t.Errorf("the PKCS #12 file %s is still there after the import: %v", imp[1], err)
	}
	list := []string{"find-certificate", "-a", "-p", f.path}
	want := [][]string{
		list,
		{"import", imp[1], "-k", f.path, "-f", "pkcs12", "-x", "-P", f.passwords[0], "-T", "/Applications/Safari.app", "-T", "/Applications/Google Chrome.app"},
		list,
	}
	if d := cmp.Diff(want, f.calls); d != "" {
		t.Errorf("commands (-want +got):\n%s", d)
	}
	got, err := k.Certificate(cert.Subject.CommonName)
	if err != nil || !got.Equal(cert) {
		t.Errorf("Certificate: %v, %v", got, err)
	}
	// A second import gets another password.
	key2, cert2 := browserCert(t, cert.Subject.CommonName, nil)
	if err := k.Install(key2, cert2); err != nil {
		t.Fatal(err)
	}
	if f.passwords[0] == f.passwords[1] {
		t.Errorf("two imports used the same password %q", f.passwords[0])
	}
}

// Renewal replaces the identity of that name, deleting the previous one
// by its SHA-1 hash; RemoveAll takes out Posture's and nothing else; a
// certificate whose key is gone is deleted alone.
func TestKeychainRenewAndRemove(t *testing.T) {
	f, k := newFakeKeychain(t)
	if names, err := k.Nicknames(); err != nil || len(names) != 0 {
		t.Fatalf("an empty keychain: %q, %v", names, err)
	}
	if _, err := k.Certificate("x"); err == nil || !strings.Contains(err.Error(), `no certificate "x"`) {
		t.Errorf("Certificate of nothing: %v", err)
	}
	_, other := browserCert(t, "Apple Development: alice@example.com", nil)
	f.items = append(f.items, fakeItem{cert: other, hasKey: true})
	nick := Nickname("dev-1", "alice")
	key1, cert1 := browserCert(t, nick, nil)
	if err := k.Install(key1, cert1); err != nil {
		t.Fatal(err)
	}
	key2, cert2 := browserCert(t, nick, nil)
	f.calls = nil
	if err := k.Install(key2, cert2); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"delete-identity", "-Z", sha1Hex(cert1), f.path}, f.calls[1]); d != "" {
		t.Errorf("renewal deletes (-want +got):\n%s", d)
	}
	if got, err := k.Certificate(nick); err != nil || !got.Equal(cert2) {
		t.Errorf("after renewal: %v, %v", got, err)
	}
	// Two of one name (put there by hand) are refused, so Ensure renews.
	f.items = append(f.items, fakeItem{cert: cert1, hasKey: false})
	if _, err := k.Certificate(nick); err == nil || !strings.Contains(err.Error(), "2 certificates") {
		t.Errorf("two of a name: %v", err)
	}
	_, old := browserCert(t, Nickname("dev-0", "alice"), nil)
	f.items = append(f.items, fakeItem{cert: old, hasKey: true})
	removed, err := RemoveAll(k)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{nick, Nickname("dev-0", "alice")}, removed); d != "" {
		t.Errorf("removed (-want +got):\n%s", d)
	}
	if len(f.items) != 1 || !f.items[0].cert.Equal(other) {
		t.Errorf("left in the keychain: %d items", len(f.items))
	}
	var sawCertOnly bool
	for _, c := range f.calls {
		sawCertOnly = sawCertOnly || c[0] == "delete-certificate" && c[2] == sha1Hex(cert1)
	}
	if !sawCertOnly {
		t.Errorf("the certificate without a key was not deleted with delete-certificate: %q", f.calls)
	}
}

// A locked keychain (or any failure of security) is an error that says
// which keychain and what to check, and leaves no file behind.
func TestKeychainImportFails(t *testing.T) {
	f, k := newFakeKeychain(t)
	f.failImport = true
	key, cert := browserCert(t, Nickname("dev-1", "alice"), nil)
	err := k.Install(key, cert)
	if err == nil || !strings.Contains(err.Error(), "is the keychain unlocked?") || !strings.Contains(err.Error(), "User interaction is not allowed") {
		t.Fatalf("Install: %v", err)
	}
	if _, err := os.Stat(f.calls[1][1]); !os.IsNotExist(err) {
		t.Errorf("the PKCS #12 file is left: %v", err)
	}
	k.Security = func(args ...string) ([]byte, error) {
		return []byte("security: SecKeychainSearchCopyNext: The user name or passphrase you entered is not correct.\n"), fmt.Errorf("exit status 51")
	}
	if _, err := k.Nicknames(); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("a failing listing: %v", err)
	}
}

// The uninstaller finds each account's login keychain under /Users,
// skipping Shared, hidden entries and homes without one.
func TestLoginKeychains(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"alice/Library/Keychains/login.keychain-db", "bob/Library/Keychains/login.keychain-db", "Shared/Library/Keychains/login.keychain-db", ".hidden/Library/Keychains/login.keychain-db", "carol/Library/Preferences/x"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := loginKeychains(dir, func(fi os.FileInfo) (uint32, uint32, bool) {
		if strings.HasPrefix(fi.Name(), "login") {
			return 501, 20, true
		}
		return 0, 0, false
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []userKeychain{
		{User: "alice", Home: filepath.Join(dir, "alice"), Path: filepath.Join(dir, "alice/Library/Keychains/login.keychain-db"), UID: 501, GID: 20},
		{User: "bob", Home: filepath.Join(dir, "bob"), Path: filepath.Join(dir, "bob/Library/Keychains/login.keychain-db"), UID: 501, GID: 20},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("loginKeychains (-want +got):\n%s", d)
	}
	if _, err := loginKeychains(filepath.Join(dir, "none"), nil); err == nil {
		t.Error("a missing /Users is no error")
	}
}

// The import command in docs/browser-certificates.md is the one Install
// builds.
func TestKeychainImportDocumented(t *testing.T) {
	blocks := testtools.CodeBlocks(t, "../../docs/browser-certificates.md", "## macOS: Safari, Chrome, Edge, Firefox", "")
	k := Keychain{Path: "KEYCHAIN", Apps: DefaultBrowserApps[:2]}
	var words []string
	for _, a := range k.importArgs("FILE", "PASSWORD") {
		if strings.Contains(a, " ") {
			a = `"` + a + `"`
		}
		words = append(words, a)
	}
	want := "security " + strings.Join(words, " ") + " …\n"
	if blocks[0] != want {
		t.Errorf("the documented import is\n%s\nInstall runs\n%s", blocks[0], want)
	}
}
