package siem

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// syslogSink sends RFC 5424 messages over TCP, or TLS (RFC 5425), with
// octet-counting framing ("LEN SP MSG"). Go's log/syslog speaks the older
// BSD format and no TLS, and no maintained library does RFC 5425, so the
// few lines of the format are here.
type syslogSink struct {
	mu       sync.Mutex
	addr     string
	tls      *tls.Config // nil for plain TCP
	facility int
	hostname string
	app      string
	procID   string
	conn     net.Conn
}

func newSyslog(u *url.URL, cfg Config) (*syslogSink, error) {
	s := &syslogSink{addr: u.Host, facility: cfg.Facility, hostname: cfg.Hostname, app: cfg.AppName, procID: strconv.Itoa(os.Getpid())}
	if s.hostname == "" {
		s.hostname, _ = os.Hostname()
	}
	if s.app == "" {
		s.app = "posture-collector"
	}
	s.hostname, s.app = header(s.hostname, 255), header(s.app, 48)
	if u.Scheme == "tls" {
		s.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
		if cfg.SyslogCA != "" {
			pem, err := os.ReadFile(cfg.SyslogCA)
			if err != nil {
				return nil, fmt.Errorf("syslog CA: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("syslog CA %s holds no PEM certificate", cfg.SyslogCA)
			}
			s.tls.RootCAs = roots
		}
	}
	return s, nil
}

// header makes s a syslog header field: printable US-ASCII without
// spaces, at most n long, "-" when empty.
func header(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' {
			return -1
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	if s == "" {
		return "-"
	}
	return s
}

// frame is one line as an RFC 5424 message with its octet count.
func (s *syslogSink) frame(l rendered) []byte {
	msg := fmt.Sprintf("<%d>1 %s %s %s %s %s - %s", s.facility*8+l.severity, l.at.UTC().Format("2006-01-02T15:04:05.000000Z"),
		s.hostname, s.app, s.procID, header(l.msgID, 32), l.json)
	return []byte(strconv.Itoa(len(msg)) + " " + msg)
}

func (s *syslogSink) dial(ctx context.Context) error {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	var err error
	if s.tls != nil {
		s.conn, err = (&tls.Dialer{NetDialer: d, Config: s.tls}).DialContext(ctx, "tcp", s.addr)
	} else {
		s.conn, err = d.DialContext(ctx, "tcp", s.addr)
	}
	if err != nil {
		s.conn = nil
		return fmt.Errorf("connect to syslog %s: %w", s.addr, err)
	}
	return nil
}

// write sends lines in order. TCP gives no acknowledgement: a line counts
// as delivered once written to the connection; one lost with a broken
// connection is sent again (it was not counted when the write failed).
func (s *syslogSink) write(ctx context.Context, lines []rendered) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		if err := s.dial(ctx); err != nil {
			return 0, err
		}
	}
	for i, l := range lines {
		s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.conn.Write(s.frame(l)); err != nil {
			s.conn.Close()
			s.conn = nil
			return i, fmt.Errorf("write to syslog %s: %w", s.addr, err)
		}
	}
	return len(lines), nil
}

func (s *syslogSink) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}
