package browsercert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
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

// PlatformCryptoProvider is the Windows key storage provider whose keys
// live in the TPM: a key imported into it is wrapped by the TPM and never
// leaves it in the clear.
const PlatformCryptoProvider = "Microsoft Platform Crypto Provider"

// CurrentUserStore is the Windows CurrentUser certificate store "My"
// (Cert:\CurrentUser\My), where Chrome and Edge find client
// certificates, and Firefox too through its OS client-certificate module. It is driven with certutil.exe and Windows
// PowerShell, which come with Windows: CryptoAPI from Go needs no cgo but
// a good deal of unsafe code, and the commands are what an administrator
// runs by hand. This file has no build constraint so that its tests run
// everywhere; only Windows has the tools.
type CurrentUserStore struct {
	// Run runs the program (certutil or powershell) with args and returns
	// what it printed (stdout and stderr) and an error for a non-zero
	// exit; nil runs them from %SystemRoot%\System32.
	Run func(program string, args ...string) ([]byte, error)
	// TempDir is where the PKCS #12 file is written for certutil; empty
	// means os.TempDir(), which on Windows is the user's own
	// %LOCALAPPDATA%\Temp.
	TempDir string
}

// The programs CurrentUserStore runs.
const (
	certutilProgram   = "certutil"
	powershellProgram = "powershell"
)

func (s CurrentUserStore) run(program string, args ...string) ([]byte, error) {
	if s.Run != nil {
		return s.Run(program, args...)
	}
	sys := filepath.Join(envOrDefault("SystemRoot", `C:\Windows`), "System32")
	path := filepath.Join(sys, "certutil.exe")
	if program == powershellProgram {
		path = filepath.Join(sys, "WindowsPowerShell", "v1.0", "powershell.exe")
	}
	var out bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

func envOrDefault(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// importArgs is the certutil command that imports the PKCS #12 file
// under password into the CurrentUser store My, its private key not
// exportable (NoExport), into the key storage provider csp (the default
// software one when empty).
func importArgs(file, password, csp string) []string {
	args := []string{"-user", "-p", password}
	if csp != "" {
		args = append(args, "-csp", csp)
	}
	return append(args, "-importPFX", file, "NoExport")
}

// listScript prints every certificate of Cert:\CurrentUser\My as PEM,
// which certificates reads with encoding/pem: certutil's own listing is
// localized text.
const listScript = `Get-ChildItem -LiteralPath Cert:\CurrentUser\My | ForEach-Object { '-----BEGIN CERTIFICATE-----'; [Convert]::ToBase64String($_.RawData); '-----END CERTIFICATE-----' }`

// powershellArgs runs script in Windows PowerShell without a profile or a
// prompt.
func powershellArgs(script string) []string {
	return []string{"-NoProfile", "-NonInteractive", "-Command", script}
}

// removeScript deletes the certificate of SHA-1 thumbprint with its
// private key (-DeleteKey): certutil -delstore would leave the key behind.
func removeScript(thumbprint string) string {
	return `Remove-Item -LiteralPath Cert:\CurrentUser\My\` + thumbprint + ` -DeleteKey -ErrorAction Stop`
}

// Install imports key and cert into the store, first removing the
// certificates under the certificate's common name: a renewal replaces
// the previous one. The key goes to the Platform Crypto Provider (the
// TPM) where it takes it, else to the software provider; either way not
// exportable.
func (s CurrentUserStore) Install(key *ecdsa.PrivateKey, cert *x509.Certificate) error {
	if err := s.Remove(cert.Subject.CommonName); err != nil {
		return err
	}
	// certutil reads the PKCS #12 password from its command line (or asks
	// on the console). The password is random and used once: it opens
	// nothing but this file, which is in the user's own temporary
	// directory and gone as soon as the import is done; the command line
	// is visible to the user's own processes and to administrators, who
	// could read the file anyway. The legacy encoding (3DES, SHA-1 MAC) is
	// the one every Windows release imports.
	pw := make([]byte, 16)
	if _, err := rand.Read(pw); err != nil {
		return err
	}
	password := hex.EncodeToString(pw)
	pfx, err := pkcs12.LegacyDES.WithRand(rand.Reader).Encode(key, cert, nil, password)
	if err != nil {
		return fmt.Errorf("package the browser certificate: %w", err)
	}
	f, err := os.CreateTemp(s.TempDir, "posture-browser-*.p12")
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
	tpmOut, tpmErr := s.run(certutilProgram, importArgs(f.Name(), password, PlatformCryptoProvider)...)
	if tpmErr != nil {
		// No TPM, or a TPM the provider does not take ECDSA P-256 keys
		// into: the software provider, the key still not exportable.
		if out, err := s.run(certutilProgram, importArgs(f.Name(), password, "")...); err != nil {
			return fmt.Errorf("import the browser certificate into the CurrentUser store: with the %s: %v: %s; with the software provider: %v: %s",
				PlatformCryptoProvider, tpmErr, strings.TrimSpace(string(tpmOut)), err, strings.TrimSpace(string(out)))
		}
	}
	if _, err := s.Certificate(cert.Subject.CommonName); err != nil {
		return fmt.Errorf("imported the browser certificate into the CurrentUser store, but: %w", err)
	}
	return nil
}

// certificates lists the certificates of Cert:\CurrentUser\My.
func (s CurrentUserStore) certificates() ([]*x509.Certificate, error) {
	out, err := s.run(powershellProgram, powershellArgs(listScript)...)
	if err != nil {
		return nil, fmt.Errorf("list the CurrentUser certificate store: %v: %s", err, strings.TrimSpace(string(out)))
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
func (s CurrentUserStore) named(nick string) ([]*x509.Certificate, error) {
	certs, err := s.certificates()
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
func (s CurrentUserStore) Certificate(nick string) (*x509.Certificate, error) {
	certs, err := s.named(nick)
	if err != nil {
		return nil, err
	}
	switch len(certs) {
	case 0:
		return nil, fmt.Errorf("no certificate %q in the CurrentUser store", nick)
	case 1:
		return certs[0], nil
	}
	return nil, fmt.Errorf("%d certificates %q in the CurrentUser store", len(certs), nick)
}

// Nicknames lists the common names of the store's certificates.
func (s CurrentUserStore) Nicknames() ([]string, error) {
	certs, err := s.certificates()
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

// Remove deletes every certificate whose common name is nick with its
// private key, by its SHA-1 thumbprint; when PowerShell cannot, certutil
// -delstore deletes the certificate alone (its key, not exportable, stays
// in the provider unused). A name not in the store is no error.
func (s CurrentUserStore) Remove(nick string) error {
	certs, err := s.named(nick)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range certs {
		h := sha1Hex(c)
		if _, err := s.run(powershellProgram, powershellArgs(removeScript(h))...); err != nil {
			if out, err2 := s.run(certutilProgram, "-user", "-delstore", "My", h); err2 != nil {
				errs = append(errs, fmt.Errorf("remove %q (thumbprint %s) from the CurrentUser store: %v: %s", nick, h, err2, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}
