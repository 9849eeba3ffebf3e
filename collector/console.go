package collector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/posture-project/posture/collector/console"
)

// ConsoleConfig configures the admin console (collector/console) on its
// own listener.
type ConsoleConfig struct {
	// Listen is the console's HTTPS listen address.
	Listen string
	// URL is where browsers reach it: https://HOST[:PORT]. Empty means
	// the first of ServingNames (or the listen host) with the listen
	// port. The identity provider's redirect URI is URL/auth/callback.
	URL string
	// ServingNames are host names the console's certificate carries,
	// besides loopback and the listen and URL hosts (a certificate from
	// the collector CA; browsers must be given that CA).
	ServingNames []string
	// CertFile and KeyFile, when set, serve this certificate (a
	// company CA's, one browsers already trust) instead of one from the
	// collector CA; the files are read again when they change.
	CertFile, KeyFile string
	// OIDC signs people in with an identity provider; nil leaves only
	// one-time sign-in links.
	OIDC *console.OIDC
	// SessionTTL is how long a session lasts; 0 means
	// console.DefaultSessionTTL.
	SessionTTL time.Duration
}

// consoleURL is where browsers reach the console.
func (cc *ConsoleConfig) consoleURL(listen net.Addr) (string, error) {
	if cc.URL != "" {
		return strings.TrimSuffix(cc.URL, "/"), nil
	}
	host, port, err := net.SplitHostPort(listen.String())
	if err != nil {
		return "", err
	}
	if len(cc.ServingNames) > 0 {
		host = cc.ServingNames[0]
	} else if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return "", errors.New("the console listens on every address: give the URL browsers reach it at (--console-url https://HOST:PORT) or its name (--console-serving-name)")
	}
	return "https://" + net.JoinHostPort(host, port), nil
}

// startConsole binds the console's listener and makes the console: after
// the API exists, before Serve.
func (c *Collector) startConsole() error {
	cc := c.cfg.Console
	l, err := net.Listen("tcp", cc.Listen)
	if err != nil {
		return fmt.Errorf("console listen on %s: %w", cc.Listen, err)
	}
	url, err := cc.consoleURL(l.Addr())
	if err != nil {
		l.Close()
		return err
	}
	cons, err := console.New(console.Config{URL: url, API: c.api, Store: c.store, Fleet: c.fleet, OIDC: cc.OIDC, SessionTTL: cc.SessionTTL,
		Logger: c.log, Now: c.cfg.Now})
	if err != nil {
		l.Close()
		return err
	}
	tlsCfg, err := c.consoleTLS(l.Addr(), url)
	if err != nil {
		l.Close()
		return err
	}
	c.console, c.consoleListener = cons, tls.NewListener(l, tlsCfg)
	c.consoleSrv = &http.Server{Handler: cons.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		// Connections browsers drop or probe: noise, kept at debug level.
		ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug)}
	return nil
}

// consoleTLS is the console's TLS configuration: a certificate from the
// collector CA for the console's names, renewed as the listener's is, or
// the one configured. It asks for no client certificate: a browser holding
// a device certificate would otherwise ask its user to pick one.
func (c *Collector) consoleTLS(addr net.Addr, url string) (*tls.Config, error) {
	cc := c.cfg.Console
	var cfg *tls.Config
	if cc.CertFile != "" || cc.KeyFile != "" {
		kp, err := newKeyPairFiles(cc.CertFile, cc.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.get}
	} else {
		hosts := append([]string{}, cc.ServingNames...)
		if h, _, err := net.SplitHostPort(addr.String()); err == nil {
			hosts = append(hosts, h)
		}
		if h := hostOfURL(url); h != "" {
			hosts = append(hosts, h)
		}
		var err error
		if cfg, err = c.ServingTLS(hosts...); err != nil {
			return nil, err
		}
		cfg = cfg.Clone()
	}
	cfg.ClientAuth, cfg.ClientCAs = tls.NoClientCert, nil
	cfg.NextProtos = []string{"h2", "http/1.1"}
	return cfg, nil
}

func hostOfURL(u string) string {
	rest, ok := strings.CutPrefix(u, "https://")
	if !ok {
		return ""
	}
	rest, _, _ = strings.Cut(rest, "/")
	if h, _, err := net.SplitHostPort(rest); err == nil {
		return strings.Trim(h, "[]")
	}
	return strings.Trim(rest, "[]")
}

// ConsoleURL is where browsers reach the console; empty without one.
func (c *Collector) ConsoleURL() string {
	if c.console == nil {
		return ""
	}
	return c.console.URL()
}

// ConsoleAddr is the console listener's address; empty without one.
func (c *Collector) ConsoleAddr() string {
	if c.consoleListener == nil {
		return ""
	}
	return c.consoleListener.Addr().String()
}

// serveConsole serves the console until it is shut down.
func (c *Collector) serveConsole(errc chan<- error) {
	if err := c.consoleSrv.Serve(c.consoleListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		errc <- fmt.Errorf("console listener: %w", err)
	}
}

// stopConsole ends the console's requests, giving those under way a few
// seconds.
func (c *Collector) stopConsole() {
	if c.consoleSrv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.consoleSrv.Shutdown(ctx); err != nil {
		c.consoleSrv.Close()
	}
}

// signInLinks makes console sign-in links (api.Config.SignInLinks).
func (c *Collector) signInLinks(ctx context.Context, name string, ttl time.Duration, by string) (string, time.Time, error) {
	return c.console.SignInLink(ctx, name, ttl, by)
}

// keyPairFiles serves a certificate and key from files, read again when
// the certificate file changes (checked at most once a minute), so that
// a renewed certificate is served without a restart.
type keyPairFiles struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time
	checked time.Time
}

func newKeyPairFiles(certFile, keyFile string) (*keyPairFiles, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("the console's certificate needs both files: --console-tls-cert and --console-tls-key")
	}
	kp := &keyPairFiles{certFile: certFile, keyFile: keyFile}
	if err := kp.load(); err != nil {
		return nil, err
	}
	return kp, nil
}

func (kp *keyPairFiles) load() error {
	fi, err := os.Stat(kp.certFile)
	if err != nil {
		return fmt.Errorf("console certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		return fmt.Errorf("console certificate %s and key %s: %w", kp.certFile, kp.keyFile, err)
	}
	kp.cert, kp.modTime = &cert, fi.ModTime()
	return nil
}

func (kp *keyPairFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if now := time.Now(); now.Sub(kp.checked) > time.Minute {
		kp.checked = now
		if fi, err := os.Stat(kp.certFile); err == nil && !fi.ModTime().Equal(kp.modTime) {
			// A file half written keeps the certificate served so far.
			_ = kp.load()
		}
	}
	return kp.cert, nil
}

// pruneConsole deletes expired console sessions and sign-in links.
func (c *Collector) pruneConsole(ctx context.Context) {
	n, err := c.store.PruneConsole(ctx, c.cfg.Now(), time.Time{})
	switch {
	case err != nil:
		c.log.Error("prune console sessions", "err", err)
	case n > 0:
		c.log.Info("expired console sessions and sign-in links deleted", "count", n)
	}
}

// consoleLinks is the API's maker of sign-in links: nil without a console,
// so that console login says the console is not running.
func (c *Collector) consoleLinks() func(ctx context.Context, name string, ttl time.Duration, by string) (string, time.Time, error) {
	if c.cfg.Console == nil {
		return nil
	}
	return c.signInLinks
}

// DataDir is the collector's data directory, where its admin socket is.
func (c *Collector) DataDir() string { return c.cfg.DataDir }
