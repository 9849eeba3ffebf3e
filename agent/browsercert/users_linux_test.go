package browsercert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/posture-project/posture/internal/testtools"
)

// selfSigned is a client certificate named as the collector names browser
// certificates.
func selfSigned(t *testing.T, cn string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{Organization: []string{"Posture"}, CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return k, c
}

// TestNSSInstallReplaceRemove: a certificate is installed under its common
// name, a second one of that name replaces it, and RemoveAll takes out
// Posture's certificates only.
func TestNSSInstallReplaceRemove(t *testing.T) {
	testtools.Require(t, "certutil")
	testtools.Require(t, "pk12util")
	db := NSSDB{Dir: filepath.Join(t.TempDir(), "nssdb")}
	nick := Nickname("d1", "alice")
	k1, c1 := selfSigned(t, nick)
	if err := db.Install(k1, c1); err != nil {
		t.Fatal(err)
	}
	k2, c2 := selfSigned(t, nick)
	if err := db.Install(k2, c2); err != nil {
		t.Fatal(err)
	}
	got, err := db.Certificate(nick)
	if err != nil || !got.Equal(c2) {
		t.Fatalf("Certificate(%q) = %v, %v; want the second", nick, got, err)
	}
	ko, co := selfSigned(t, "someone else's")
	if err := db.Install(ko, co); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveAll(db)
	if err != nil || !slices.Equal(removed, []string{nick}) {
		t.Fatalf("RemoveAll = %v, %v; want %q", removed, err, nick)
	}
	names, _ := db.Nicknames()
	if !slices.Equal(names, []string{"someone else's"}) {
		t.Errorf("left %v, want only the other certificate", names)
	}
}

// TestUserDatabases: the uninstaller, as root, finds a user's database from
// the account list and removes the browser certificate as that user, so the
// database stays the user's.
func TestUserDatabases(t *testing.T) {
	testtools.Require(t, "certutil")
	testtools.Require(t, "pk12util")
	if os.Geteuid() != 0 {
		t.Skip("SKIP: acting as another user needs root")
	}
	const uid, gid = 65534, 65534
	home := t.TempDir()
	os.Chmod(home, 0o755)
	os.Chmod(filepath.Dir(home), 0o755) // the user reaches their home
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	passwd := filepath.Join(t.TempDir(), "passwd")
	lines := fmt.Sprintf("root:x:0:0:root:/nonexistent-root:/bin/sh\n# a comment\nbroken line\nnobody:x:%d:%d:nobody:%s:/usr/sbin/nologin\n", uid, gid, home)
	if err := os.WriteFile(passwd, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	if dbs, err := UserDatabases(passwd); err != nil || len(dbs) != 0 {
		t.Fatalf("before any database: %v, %v", dbs, err)
	}
	// The user's own database, made as the user.
	first := UserDB{UID: uid, GID: gid}
	first.DB = NSSDB{Dir: filepath.Join(home, ".pki", "nssdb")}
	if err := os.MkdirAll(first.DB.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(home, ".pki"), first.DB.Dir} {
		os.Chown(d, uid, gid)
	}
	dbs := func() []UserDB {
		dbs, err := UserDatabases(passwd)
		if err != nil {
			t.Fatal(err)
		}
		return dbs
	}
	// The user's certificate, put there as the user's own step would
	// (here by root, then handed to the user).
	k, c := selfSigned(t, Nickname("d1", "nobody"))
	if err := first.DB.Install(k, c); err != nil {
		t.Fatal(err)
	}
	filepath.Walk(filepath.Join(home, ".pki"), func(p string, _ os.FileInfo, _ error) error { return os.Chown(p, uid, gid) })
	found := dbs()
	if len(found) != 1 || found[0].User != "nobody" || found[0].DB.Dir != first.DB.Dir {
		t.Fatalf("UserDatabases = %+v, want nobody's", found)
	}
	if removed, err := RemoveAll(found[0].DB); err != nil || len(removed) != 1 {
		t.Fatalf("RemoveAll = %v, %v", removed, err)
	}
	if names, _ := found[0].DB.Nicknames(); len(names) != 0 {
		t.Errorf("left %v", names)
	}
	entries, _ := os.ReadDir(first.DB.Dir)
	for _, e := range entries {
		info, _ := e.Info()
		if st := info.Sys().(*syscall.Stat_t); st.Uid != uid {
			t.Errorf("%s is owned by %d after removal, want the user (%d)", e.Name(), st.Uid, uid)
		}
	}
}
