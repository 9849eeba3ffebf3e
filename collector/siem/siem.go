// Package siem exports every device change and every access decision as
// OCSF JSON lines (Device Config State Change, class 5019; Authorize
// Session, class 3003) for a SIEM: to a file with rotation, or to a syslog
// server as RFC 5424 messages over TCP or TLS (RFC 5425 framing).
//
// Lines come from the outbox, at least once: a line written again after a
// restart carries the same metadata.uid.
package siem

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/outbox"
	"github.com/posture-project/posture/collector/store"
)

// Config configures one export.
type Config struct {
	// Name names the export; its receiver is "siem:NAME".
	Name string
	// File, when set, is the file lines are appended to; it is rotated at
	// MaxSize (default 100 MiB) to FILE.1, FILE.2 …, keeping Keep of them
	// (default 10).
	File    string
	MaxSize int64
	Keep    int
	// Syslog, when set instead, is the server: tcp://HOST:PORT, or
	// tls://HOST:PORT verified by the CA certificates in SyslogCA (PEM;
	// the system's roots when empty). Facility is the syslog facility
	// (default local0 = 16).
	Syslog   string
	SyslogCA string
	Facility int
	// Decisions says whether access decisions are exported too (the
	// default: true). Each run of identical decisions (same device,
	// level, caller and outcome) is one line, when it begins.
	Decisions *bool
	// Version is the collector's, for metadata.product.version.
	Version string
	// Hostname and AppName fill syslog's HOSTNAME and APP-NAME.
	Hostname, AppName string
}

// Export is one configured export.
type Export struct {
	cfg  Config
	sink sink
}

// sink writes lines durably, in order.
type sink interface {
	write(ctx context.Context, lines []rendered) (int, error)
	close() error
}

// rendered is one line and its syslog severity.
type rendered struct {
	json     []byte
	severity int // RFC 5424 severity
	msgID    string
	at       time.Time
}

// New checks an export's configuration and opens its file or names its
// server (connected at the first write).
func New(cfg Config) (*Export, error) {
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, " \t\r\n,=:") {
		return nil, fmt.Errorf("SIEM export name %q: give a name without spaces, commas, colons or equal signs", cfg.Name)
	}
	e := &Export{cfg: cfg}
	switch {
	case cfg.File != "" && cfg.Syslog != "":
		return nil, fmt.Errorf("SIEM export %s: give a file or a syslog server, not both", cfg.Name)
	case cfg.File != "":
		if cfg.MaxSize == 0 {
			cfg.MaxSize = 100 << 20
		}
		if cfg.Keep == 0 {
			cfg.Keep = 10
		}
		if cfg.MaxSize < 4096 || cfg.Keep < 1 {
			return nil, fmt.Errorf("SIEM export %s: max-size must be at least 4 KiB and keep at least 1", cfg.Name)
		}
		f, err := openRotating(cfg.File, cfg.MaxSize, cfg.Keep)
		if err != nil {
			return nil, fmt.Errorf("SIEM export %s: %w", cfg.Name, err)
		}
		e.sink = f
	case cfg.Syslog != "":
		u, err := url.Parse(cfg.Syslog)
		if err != nil || (u.Scheme != "tcp" && u.Scheme != "tls") || u.Host == "" || u.Port() == "" {
			return nil, fmt.Errorf("SIEM export %s: syslog %q: give tcp://HOST:PORT or tls://HOST:PORT", cfg.Name, cfg.Syslog)
		}
		if cfg.Facility == 0 {
			cfg.Facility = 16
		}
		if cfg.Facility < 0 || cfg.Facility > 23 {
			return nil, fmt.Errorf("SIEM export %s: syslog facility %d: give 0 to 23", cfg.Name, cfg.Facility)
		}
		s, err := newSyslog(u, cfg)
		if err != nil {
			return nil, fmt.Errorf("SIEM export %s: %w", cfg.Name, err)
		}
		e.sink = s
	default:
		return nil, fmt.Errorf("SIEM export %s: give file=PATH or syslog=tls://HOST:PORT", cfg.Name)
	}
	e.cfg = cfg
	return e, nil
}

// Close closes the file or the connection.
func (e *Export) Close() error { return e.sink.close() }

// Decisions says whether the export takes decisions.
func (e *Export) Decisions() bool { return e.cfg.Decisions == nil || *e.cfg.Decisions }

// Receiver is the export as the outbox delivers to it.
func (e *Export) Receiver() outbox.Receiver {
	return outbox.Receiver{ID: "siem:" + e.cfg.Name, Kind: "siem", Sender: e, Wants: func(m store.OutboxMessage) bool {
		switch {
		case m.Receiver != "", m.Kind == store.OutboxVerification:
			return false
		case m.Kind == store.OutboxDecision:
			return e.Decisions()
		}
		return true
	}}
}

// syslog severities (RFC 5424) of OCSF severity_id.
func syslogSeverity(ocsf int) int {
	switch ocsf {
	case 5:
		return 2 // critical
	case 4:
		return 3 // error
	case 3:
		return 4 // warning
	case 2:
		return 5 // notice
	}
	return 6 // informational
}

// Send renders messages as OCSF lines and writes them.
func (e *Export) Send(ctx context.Context, msgs []store.OutboxMessage) (int, error) {
	lines := make([]rendered, 0, len(msgs))
	now := time.Now()
	for i, m := range msgs {
		l, err := Render(m, e.cfg.Version, now)
		if err == nil {
			var b []byte
			if b, err = json.Marshal(l); err == nil {
				lines = append(lines, rendered{json: b, severity: syslogSeverity(l.SeverityID), msgID: fmt.Sprint(l.ClassUID), at: m.At})
				continue
			}
		}
		// A line that cannot be made is passed over; those before it are
		// written first.
		n, werr := e.sink.write(ctx, lines)
		if werr != nil {
			return n, werr
		}
		return i, fmt.Errorf("render message %s: %v: %w", m.ID, err, outbox.ErrRejected)
	}
	return e.sink.write(ctx, lines)
}
