package browsercert

import (
	"crypto/ecdsa"
	"encoding/pem"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/posture-project/posture/internal/testtools"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// fakeCurrentUser plays certutil and PowerShell on one CurrentUser store
// in memory, for the commands CurrentUserStore runs, as Microsoft documents
// them (certutil -importPFX and -delstore; Remove-Item -DeleteKey on the
// Cert: drive). It checks what it is given: the PKCS #12 file must open
// with the password on the command line and hold an ECDSA key matching the
// certificate; the import must ask for NoExport.
type fakeCurrentUser struct {
	t     *testing.T
	items []fakeItem
	calls [][]string
	// noTPM makes the Platform Crypto Provider refuse, as on a machine
	// without a TPM; noPowerShell makes PowerShell fail.
	noTPM, noPowerShell bool
	failImport          bool
	passwords           []string
	// providers records the provider each import went to.
	providers []string
}

func (f *fakeCurrentUser) run(program string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, append([]string{program}, args...))
	switch program {
	case powershellProgram:
		if f.noPowerShell {
			return []byte("powershell: not found"), errExit
		}
		if len(args) != 4 || args[0] != "-NoProfile" || args[1] != "-NonInteractive" || args[2] != "-Command" {
			f.t.Fatalf("powershell %q", args)
		}
		if args[3] == listScript {
			var out []byte
			for _, it := range f.items {
				// One base64 line, as [Convert]::ToBase64String writes it.
				b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: it.cert.Raw})
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				out = append(out, []byte(lines[0]+"\r\n"+strings.Join(lines[1:len(lines)-1], "")+"\r\n"+lines[len(lines)-1]+"\r\n")...)
			}
			return out, nil
		}
		for i, it := range f.items {
			if args[3] == removeScript(sha1Hex(it.cert)) {
				f.items = append(f.items[:i], f.items[i+1:]...)
				return nil, nil
			}
		}
		return []byte("Remove-Item : Cannot find path"), errExit
	case certutilProgram:
		if len(args) == 4 && args[0] == "-user" && args[1] == "-delstore" && args[2] == "My" {
			for i, it := range f.items {
				if sha1Hex(it.cert) == args[3] {
					f.items = append(f.items[:i], f.items[i+1:]...)
					return nil, nil
				}
			}
			return []byte("CertUtil: -delstore command FAILED"), errExit
		}
		if len(args) < 6 || args[0] != "-user" || args[1] != "-p" || args[len(args)-1] != "NoExport" || args[len(args)-3] != "-importPFX" {
			f.t.Fatalf("certutil %q: not a command CurrentUserStore should run", args)
		}
		password, file, provider := args[2], args[len(args)-2], ""
		if args[3] == "-csp" {
			provider = args[4]
		}
		if provider == PlatformCryptoProvider && f.noTPM || f.failImport {
			return []byte("CertUtil: -importPFX command FAILED: 0x80090030 (-2146893776 NTE_DEVICE_NOT_READY)"), errExit
		}
		f.passwords = append(f.passwords, password)
		f.providers = append(f.providers, provider)
		b, err := os.ReadFile(file)
		if err != nil {
			f.t.Fatalf("importPFX: %v", err)
		}
		key, cert, err := pkcs12.Decode(b, password)
		if err != nil {
			return []byte("CertUtil: -importPFX command FAILED: The specified network password is not correct."), errExit
		}
		if k, ok := key.(*ecdsa.PrivateKey); !ok || !k.PublicKey.Equal(cert.PublicKey) {
			f.t.Errorf("importPFX: the key does not match the certificate")
		}
		f.items = append(f.items, fakeItem{cert: cert, hasKey: true})
		return []byte("CertUtil: -importPFX command completed successfully."), nil
	}
	f.t.Fatalf("%s %q: not a program CurrentUserStore should run", program, args)
	return nil, nil
}

func newFakeCurrentUser(t *testing.T) (*fakeCurrentUser, CurrentUserStore) {
	f := &fakeCurrentUser{t: t}
	return f, CurrentUserStore{Run: f.run, TempDir: t.TempDir()}
}

// The exact command lines Install runs: list (to remove the previous
// certificate), import into the TPM's provider with a one-time password
// and the key not exportable, list again to check; without a TPM, the
// software provider.
func TestCurrentUserInstallCommands(t *testing.T) {
	for _, tpm := range []bool{true, false} {
		name := map[bool]string{true: "tpm", false: "software"}[tpm]
		t.Run(name, func(t *testing.T) {
			f, s := newFakeCurrentUser(t)
			f.noTPM = !tpm
			key, cert := browserCert(t, Nickname("dev-1", "alice"), nil)
			if err := s.Install(key, cert); err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(f.passwords[0]) {
				t.Errorf("password %q is not 16 random bytes in hex", f.passwords[0])
			}
			file := f.calls[1][len(f.calls[1])-2]
			if !strings.HasPrefix(file, s.TempDir) || !strings.HasSuffix(file, ".p12") {
				t.Errorf("PKCS #12 file %q", file)
			}
			if _, err := os.Stat(file); !os.IsNotExist(err) {
				t.Errorf("the PKCS #12 file %s is still there after the import: %v", file, err)
			}
			list := []string{"powershell", "-NoProfile", "-NonInteractive", "-Command", listScript}
			pw := f.passwords[0]
			want := [][]string{list, {"certutil", "-user", "-p", pw, "-csp", "Microsoft Platform Crypto Provider", "-importPFX", file, "NoExport"}}
			wantProvider := PlatformCryptoProvider
			if !tpm {
				want = append(want, []string{"certutil", "-user", "-p", pw, "-importPFX", file, "NoExport"})
				wantProvider = ""
			}
			want = append(want, list)
			if d := cmp.Diff(want, f.calls); d != "" {
				t.Errorf("commands (-want +got):\n%s", d)
			}
			if d := cmp.Diff([]string{wantProvider}, f.providers); d != "" {
				t.Errorf("provider (-want +got):\n%s", d)
			}
			got, err := s.Certificate(cert.Subject.CommonName)
			if err != nil || !got.Equal(cert) {
				t.Errorf("Certificate: %v, %v", got, err)
			}
			key2, cert2 := browserCert(t, cert.Subject.CommonName, nil)
			if err := s.Install(key2, cert2); err != nil {
				t.Fatal(err)
			}
			if f.passwords[0] == f.passwords[1] {
				t.Errorf("two imports used the same password %q", f.passwords[0])
			}
		})
	}
}

// Renewal replaces the certificate of that name, deleting the previous one
// with its key by thumbprint; RemoveAll takes out Posture's and nothing
// else; without PowerShell's deletion, certutil -delstore removes the
// certificate.
func TestCurrentUserRenewAndRemove(t *testing.T) {
	f, s := newFakeCurrentUser(t)
	if names, err := s.Nicknames(); err != nil || len(names) != 0 {
		t.Fatalf("an empty store: %q, %v", names, err)
	}
	if _, err := s.Certificate("x"); err == nil || !strings.Contains(err.Error(), `no certificate "x"`) {
		t.Errorf("Certificate of nothing: %v", err)
	}
	_, other := browserCert(t, "alice@example.com", nil)
	f.items = append(f.items, fakeItem{cert: other, hasKey: true})
	nick := Nickname("dev-1", "alice")
	key1, cert1 := browserCert(t, nick, nil)
	if err := s.Install(key1, cert1); err != nil {
		t.Fatal(err)
	}
	key2, cert2 := browserCert(t, nick, nil)
	f.calls = nil
	if err := s.Install(key2, cert2); err != nil {
		t.Fatal(err)
	}
	want := []string{"powershell", "-NoProfile", "-NonInteractive", "-Command", `Remove-Item -LiteralPath Cert:\CurrentUser\My\` + sha1Hex(cert1) + ` -DeleteKey -ErrorAction Stop`}
	if d := cmp.Diff(want, f.calls[1]); d != "" {
		t.Errorf("renewal deletes (-want +got):\n%s", d)
	}
	if got, err := s.Certificate(nick); err != nil || !got.Equal(cert2) {
		t.Errorf("after renewal: %v, %v", got, err)
	}
	f.items = append(f.items, fakeItem{cert: cert1})
	if _, err := s.Certificate(nick); err == nil || !strings.Contains(err.Error(), "2 certificates") {
		t.Errorf("two of a name: %v", err)
	}
	_, old := browserCert(t, Nickname("dev-0", "alice"), nil)
	f.items = append(f.items, fakeItem{cert: old, hasKey: true})
	// PowerShell lists but cannot delete: certutil -delstore does.
	run := f.run
	s.Run = func(program string, args ...string) ([]byte, error) {
		if program == powershellProgram && args[3] != listScript {
			f.calls = append(f.calls, append([]string{program}, args...))
			return []byte("Remove-Item : A parameter cannot be found that matches parameter name 'DeleteKey'."), errExit
		}
		return run(program, args...)
	}
	f.calls = nil
	removed, err := RemoveAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{nick, Nickname("dev-0", "alice")}, removed); d != "" {
		t.Errorf("removed (-want +got):\n%s", d)
	}
	if len(f.items) != 1 || !f.items[0].cert.Equal(other) {
		t.Errorf("left in the store: %d items", len(f.items))
	}
	var delstore int
	for _, c := range f.calls {
		if c[0] == certutilProgram && c[2] == "-delstore" {
			delstore++
		}
	}
	if delstore != 3 {
		t.Errorf("certutil -delstore ran %d times, want 3: %q", delstore, f.calls)
	}
}

// A failing import (with both providers) or listing is an error that
// says what failed, and leaves no file behind.
func TestCurrentUserImportFails(t *testing.T) {
	f, s := newFakeCurrentUser(t)
	f.failImport = true
	key, cert := browserCert(t, Nickname("dev-1", "alice"), nil)
	err := s.Install(key, cert)
	if err == nil || !strings.Contains(err.Error(), "with the Microsoft Platform Crypto Provider") || !strings.Contains(err.Error(), "with the software provider") || !strings.Contains(err.Error(), "NTE_DEVICE_NOT_READY") {
		t.Fatalf("Install: %v", err)
	}
	if entries, _ := os.ReadDir(s.TempDir); len(entries) != 0 {
		t.Errorf("files left in the temporary directory: %v", entries)
	}
	f.noPowerShell = true
	if _, err := s.Nicknames(); err == nil || !strings.Contains(err.Error(), "list the CurrentUser certificate store") {
		t.Errorf("a failing listing: %v", err)
	}
}

// The import commands in docs/browser-certificates.md are the ones
// Install builds.
func TestCurrentUserImportDocumented(t *testing.T) {
	blocks := testtools.CodeBlocks(t, "../../docs/browser-certificates.md", "## Windows: Chrome, Edge, Firefox", "")
	if len(blocks) < 2 {
		t.Fatalf("the Windows section has %d code blocks, want the two imports", len(blocks))
	}
	for i, csp := range []string{PlatformCryptoProvider, ""} {
		var words []string
		for _, a := range importArgs("FILE", "PASSWORD", csp) {
			if strings.Contains(a, " ") {
				a = `"` + a + `"`
			}
			words = append(words, a)
		}
		if want := "certutil " + strings.Join(words, " ") + "\n"; blocks[i] != want {
			t.Errorf("the documented import is\n%s\nInstall runs\n%s", blocks[i], want)
		}
	}
}
