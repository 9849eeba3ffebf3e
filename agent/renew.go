package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// nextTLSKeyFile holds the TLS key a renewal asks the collector to certify.
// It is written before the request and moved onto tlsKeyFile after the new
// certificate is written, so the certificate on disk always has its key
// beside it, even after a crash between the two.
const nextTLSKeyFile = "tls-next.key"

const (
	// defaultRenewRetry is Config.RenewRetry when unset.
	defaultRenewRetry = 10 * time.Minute
	// renewLookMax bounds the wait before looking at the certificate
	// again: a timer does not count the time a laptop sleeps.
	renewLookMax = time.Hour
	// renewTimeout bounds one renewal exchange.
	renewTimeout = time.Minute
)

// renewDue is when a certificate should be renewed: once a third of its
// lifetime or less is left.
func renewDue(cert *x509.Certificate) time.Time {
	return cert.NotAfter.Add(-cert.NotAfter.Sub(cert.NotBefore) / 3)
}

// loadClientCert reads the device certificate and its TLS key from the
// state directory, completing a renewal that stopped between writing the
// certificate and moving its key in place.
func loadClientCert(dir string) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, tlsKeyFile)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err == nil {
		return cert, nil
	}
	nextPath := filepath.Join(dir, nextTLSKeyFile)
	next, nextErr := tls.LoadX509KeyPair(certPath, nextPath)
	if nextErr != nil {
		return tls.Certificate{}, err
	}
	// The renewal itself may be moving it right now.
	if err := os.Rename(nextPath, keyPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("move the renewed TLS key in place: %w", err)
	}
	return next, nil
}

// clientCertificate is a tls.Config.GetClientCertificate that presents the
// certificate in the state directory at each handshake, so a renewed one,
// or one from enrolling again, is used from the next connection on.
func clientCertificate(dir string) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, err := loadClientCert(dir)
		if err != nil {
			return nil, fmt.Errorf("load device certificate: %w", err)
		}
		return &cert, nil
	}
}

// renewal keeps what certificate renewal needs between attempts: the
// connections to close once another certificate is on disk, the serial of
// the certificate they were made with, and when renewal was last tried.
type renewal struct {
	dir  string
	look chan struct{} // a reconnect asks the renewal loop to look

	mu     sync.Mutex
	serial string // of the certificate on disk when last looked
	conns  map[*trackedConn]struct{}

	tried time.Time // the last attempt; used by the renewal loop only
}

func newRenewal(dir string) *renewal {
	r := &renewal{dir: dir, look: make(chan struct{}, 1), conns: map[*trackedConn]struct{}{}}
	if cert, err := loadClientCert(dir); err == nil {
		r.serial = cert.Leaf.SerialNumber.Text(16)
	}
	return r
}

// track makes the connections creds secures closable, so that a changed
// certificate is presented on a new connection rather than after the old
// one happens to break.
func (r *renewal) track(creds credentials.TransportCredentials) credentials.TransportCredentials {
	return &trackingCreds{TransportCredentials: creds, r: r}
}

// onDisk notes the certificate now on disk; when it is not the one the
// open connections were made with, they are closed, and the next ones
// present it.
func (r *renewal) onDisk(cert *x509.Certificate) {
	serial := cert.SerialNumber.Text(16)
	r.mu.Lock()
	changed := r.serial != "" && r.serial != serial
	r.serial = serial
	var conns []*trackedConn
	if changed {
		for c := range r.conns {
			conns = append(conns, c)
		}
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// reconnecting runs before each report stream: the connection follows a
// certificate that changed on disk (renewed, or enrolled again), and the
// renewal loop looks whether renewal is due.
func (a *Agent) reconnecting() {
	if cert, err := loadClientCert(a.cfg.StateDir); err == nil {
		a.renewal.onDisk(cert.Leaf)
	}
	select {
	case a.renewal.look <- struct{}{}:
	default:
	}
}

// renewLoop renews the device certificate when a third of its lifetime or
// less is left: it looks at start, on every reconnect and at least hourly.
// A failed renewal is logged and tried again after Config.RenewRetry; the
// certificate keeps working until it expires.
func (a *Agent) renewLoop(ctx context.Context) {
	for {
		wait := a.renewIfDue(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-a.renewal.look:
		}
	}
}

func (a *Agent) renewRetry() time.Duration {
	if a.cfg.RenewRetry > 0 {
		return a.cfg.RenewRetry
	}
	return defaultRenewRetry
}

// renewIfDue renews the certificate if it is due and says how long to wait
// before looking again. Attempts are at least RenewRetry apart, also after
// a success: a collector issuing certificates shorter-lived than that is
// not asked in a loop.
func (a *Agent) renewIfDue(ctx context.Context) time.Duration {
	r := a.renewal
	cert, err := loadClientCert(a.cfg.StateDir)
	if err != nil {
		a.log.Error("device certificate unreadable; cannot renew it", "err", err)
		return a.renewRetry()
	}
	leaf := cert.Leaf
	now := time.Now()
	due := renewDue(leaf)
	if now.Before(due) {
		return min(due.Sub(now), renewLookMax)
	}
	if since := now.Sub(r.tried); !r.tried.IsZero() && since < a.renewRetry() {
		return a.renewRetry() - since
	}
	r.tried = now
	renewed, err := a.renewCertificate(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Error("device certificate renewal failed; the current certificate keeps working until it expires",
				"err", err, "expires", leaf.NotAfter.UTC().Format(time.RFC3339), "retry_in", a.renewRetry())
		}
		return jitter(a.renewRetry(), 0.1)
	}
	a.log.Info("device certificate renewed", "serial", renewed.SerialNumber.Text(16),
		"not_after", renewed.NotAfter.UTC().Format(time.RFC3339), "replaced_serial", leaf.SerialNumber.Text(16))
	return 0 // look at the new one
}

// renewCertificate asks the collector, over the agent's authenticated
// connection, to certify a new TLS key, proving with the device identity
// that the device asks; it writes the new key and certificate and moves
// the connection onto them.
func (a *Agent) renewCertificate(ctx context.Context) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, renewTimeout)
	defer cancel()
	key, err := pki.NewKey()
	if err != nil {
		return nil, fmt.Errorf("create TLS key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("encode TLS key: %w", err)
	}
	nextPath := filepath.Join(a.cfg.StateDir, nextTLSKeyFile)
	if err := pki.WritePrivateKey(nextPath, key); err != nil {
		return nil, err
	}

	st, err := posturev1.NewReportServiceClient(a.conn).RenewCertificate(ctx)
	if err != nil {
		return nil, renewErr(err)
	}
	defer st.CloseSend()
	m, err := st.Recv()
	if err != nil {
		return nil, renewErr(err)
	}
	ch := m.GetChallenge()
	if ch == nil {
		return nil, errors.New("collector did not open the renewal with a challenge")
	}
	ans, err := a.id.AnswerRenewal(ch.GetNonce(), pub)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&posturev1.RenewRequest{Step: &posturev1.RenewRequest_Answer{Answer: ans}}); err != nil {
		if _, rerr := st.Recv(); rerr != nil {
			err = rerr // the collector's reason
		}
		return nil, renewErr(err)
	}
	if m, err = st.Recv(); err != nil {
		return nil, renewErr(err)
	}
	cert, err := x509.ParseCertificate(m.GetResult().GetCertificate())
	if err != nil {
		return nil, fmt.Errorf("renewed certificate from collector: %w", err)
	}
	if der, _ := x509.MarshalPKIXPublicKey(cert.PublicKey); !bytes.Equal(der, pub) {
		return nil, errors.New("collector certified another key than the one sent")
	}
	if id, err := pki.PeerID(cert); err != nil || id.String() != a.enr.SPIFFEID {
		return nil, fmt.Errorf("renewed certificate names %v, want %s", id, a.enr.SPIFFEID)
	}

	// The certificate first, then its key: in between (or after a crash
	// there) loadClientCert finds the key under nextTLSKeyFile.
	if err := pki.WriteCertificates(filepath.Join(a.cfg.StateDir, certFile), cert); err != nil {
		return nil, err
	}
	if err := os.Rename(nextPath, filepath.Join(a.cfg.StateDir, tlsKeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("move the renewed TLS key in place: %w", err)
	}
	a.renewal.onDisk(cert)
	return cert, nil
}

func renewErr(err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("renew device certificate: %s (%s)", st.Message(), st.Code())
	}
	return fmt.Errorf("renew device certificate: %w", err)
}

// trackingCreds records the connections it secures in a renewal.
type trackingCreds struct {
	credentials.TransportCredentials
	r *renewal
}

func (c *trackingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	t := &trackedConn{Conn: conn, r: c.r}
	c.r.mu.Lock()
	c.r.conns[t] = struct{}{}
	c.r.mu.Unlock()
	return t, info, nil
}

func (c *trackingCreds) Clone() credentials.TransportCredentials {
	return &trackingCreds{TransportCredentials: c.TransportCredentials.Clone(), r: c.r}
}

// trackedConn is a connection a renewal can close.
type trackedConn struct {
	net.Conn
	r *renewal
}

func (c *trackedConn) Close() error {
	c.r.mu.Lock()
	delete(c.r.conns, c)
	c.r.mu.Unlock()
	return c.Conn.Close()
}
