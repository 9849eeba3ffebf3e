package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/gatewayfront"
)

// httpFront is the forward-auth listener.
type httpFront struct {
	srv *http.Server
	l   net.Listener
	tls bool
	url string
}

// frontTimeouts bound how long a /check connection may take over a request
// and sit idle between requests (HTTP/1.1 keep-alive and HTTP/2 alike), so
// a client that connects and goes quiet cannot hold a descriptor forever.
type frontTimeouts struct {
	readHeader, read, write, idle time.Duration
}

// defaultFrontTimeouts suit gateways: a /check request is a few headers,
// its answer comes from memory, and a gateway whose idle connection was
// closed opens another.
var defaultFrontTimeouts = frontTimeouts{
	readHeader: 5 * time.Second,
	read:       10 * time.Second,
	write:      10 * time.Second,
	idle:       60 * time.Second,
}

// forwardAuthServer binds the HTTP front end. It serves TLS from the
// collector CA unless plaintext is asked for on a loopback address (nginx
// on the same host).
// frontConfig is what the run flags say of the HTTP front end.
type frontConfig struct {
	addr       string // --http-listen
	bearerFile string // --http-bearer-file
	certHeader string // --http-cert-header
	plaintext  bool   // --http-plaintext
	advertise  string // --advertise
	timeouts   frontTimeouts
}

func forwardAuthServer(c *collector.Collector, fc frontConfig) (*httpFront, error) {
	addr, bearerFile, plaintext, advertise, timeouts := fc.addr, fc.bearerFile, fc.plaintext, fc.advertise, fc.timeouts
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--http-listen %q: %w", addr, err)
	}
	if plaintext {
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("--http-plaintext is allowed only on a loopback address, not %q: device certificates and bearer secrets would cross the network in the clear", host)
		}
	}
	secrets, err := readBearerFile(bearerFile)
	if err != nil {
		return nil, err
	}
	recheckKey, err := c.RecheckKey()
	if err != nil {
		return nil, err
	}
	fa, err := gatewayfront.NewForwardAuth(gatewayfront.ForwardAuthConfig{
		Decider: c, TrustDomain: c.TrustDomain(), Roots: c.Roots(), BearerSecrets: secrets,
		Rejections: c.GatewayRejections("forward_auth"), GatewayRevoked: c.GatewayRevoked, CertHeader: fc.certHeader,
		Rechecker: c, RecheckKey: recheckKey,
	})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/check", fa)
	// The deny page's Check again and its status (docs/end-users.md).
	mux.HandleFunc(gatewayfront.PathPrefix, fa.ServeBrowser)
	f := &httpFront{srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: timeouts.readHeader,
		ReadTimeout:       timeouts.read,
		WriteTimeout:      timeouts.write,
		// HTTP/2 takes its idle timeout from here too.
		IdleTimeout:    timeouts.idle,
		MaxHeaderBytes: 64 << 10,
	}}
	if !plaintext {
		hosts := []string{host}
		if h, _, err := net.SplitHostPort(advertise); err == nil {
			hosts = append(hosts, h)
		}
		if f.srv.TLSConfig, err = c.ServingTLS(hosts...); err != nil {
			return nil, err
		}
		f.tls = true
		// Bounds the connections of clients without a certificate per
		// address; in plaintext every client is on this host.
		c.LimitFront("forward_auth", f.srv)
	}
	if f.l, err = net.Listen("tcp", addr); err != nil {
		return nil, fmt.Errorf("--http-listen: %w", err)
	}
	scheme := "https"
	if plaintext {
		scheme = "http"
	}
	f.url = scheme + "://" + f.l.Addr().String() + "/check"
	return f, nil
}

func (f *httpFront) serve() error {
	var err error
	if f.tls {
		err = f.srv.ServeTLS(f.l, "", "")
	} else {
		err = f.srv.Serve(f.l)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (f *httpFront) close() { f.srv.Close() }

// shutdown stops accepting requests and waits up to timeout for those in
// progress, then closes what is left.
func (f *httpFront) shutdown(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		f.srv.Close()
	}
}

// readBearerFile reads gateway bearer secrets, one per line. The file must
// not be readable by others: it holds credentials.
func readBearerFile(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--http-bearer-file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("--http-bearer-file %s has mode %v; it holds credentials: chmod 600 it", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--http-bearer-file: %w", err)
	}
	var secrets []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			secrets = append(secrets, line)
		}
	}
	if len(secrets) == 0 {
		return nil, fmt.Errorf("--http-bearer-file %s holds no secret", path)
	}
	return secrets, nil
}
