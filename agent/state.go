// Package agent is the posture agent's runtime: enrollment, the measuring
// loop, the durable spool and the long-lived report stream.
package agent

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/posture-project/posture/internal/durable"
	"github.com/posture-project/posture/internal/pki"
)

// Files in the state directory.
const (
	identityFile = "identity.key"  // report-signing key (software identity)
	tlsKeyFile   = "tls.key"       // mutual TLS key
	certFile     = "device.crt"    // device certificate from the collector
	caFile       = "ca.crt"        // pinned collector CA
	configFile   = "agent.json"    // enrollment facts
	chainFile    = "chain.json"    // acknowledged report chain head
	decisionFile = "decision.json" // the collector's latest decision, for status
	spoolDir     = "spool"
)

// enrollment is what the agent learned when it enrolled.
type enrollment struct {
	Collector string `json:"collector"`
	// Collectors are further collectors sharing the first one's database,
	// which the agent moves to when it loses the one it reports to.
	Collectors  []string `json:"collectors,omitempty"`
	DeviceID    string   `json:"device_id"`
	SPIFFEID    string   `json:"spiffe_id"`
	TrustDomain string   `json:"trust_domain"`
	Identity    string   `json:"identity"`
	TPM         string   `json:"tpm,omitempty"`       // TPM address when not the platform's
	EventLog    string   `json:"event_log,omitempty"` // event log path when not the platform's
}

// chainHead is the newest report the collector acknowledged, and the
// report signed after it whose fate is not known yet.
type chainHead struct {
	Seq    uint64 `json:"seq"`
	Digest []byte `json:"digest"`
	// Sent is recorded before a report is sent and cleared by its
	// acknowledgement. It is kept here rather than in the report's spool
	// entry because the spool drops its oldest entries when full, and a
	// collector that stored the report while the acknowledgement was lost
	// names it in the next Welcome: without this record the agent would
	// sign another report with the same sequence number, a fork.
	Sent *sentReport `json:"sent,omitempty"`
	// AckedAt is when the collector last acknowledged a report (posture-agent
	// status shows it).
	AckedAt time.Time `json:"acked_at,omitzero"`
}

// sentReport is a report signed and sent but not acknowledged.
type sentReport struct {
	Entry  uint64 `json:"entry"` // spool ID of the measurement, which may be gone
	Seq    uint64 `json:"seq"`
	Digest []byte `json:"digest"`
}

// ensureStateDir creates the state directory, or tightens an existing one,
// so that only its owner (Unix) or SYSTEM and Administrators (Windows) can
// enter it: it holds private keys.
func ensureStateDir(dir string) error {
	if dir == "" {
		return errors.New("state directory is required")
	}
	if err := durable.MkdirPrivate(dir); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	return nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFileAtomic(path, append(data, '\n'), 0o600)
}

// loadEnrollment reads the enrollment and the TLS material to reach the
// collector with.
func loadEnrollment(dir string) (enrollment, *tls.Config, error) {
	var e enrollment
	if err := readJSON(filepath.Join(dir, configFile), &e); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return e, nil, fmt.Errorf("this device is not enrolled (no %s in %s): run posture-agent enroll --token TOKEN", configFile, dir)
		}
		return e, nil, err
	}
	cas, err := pki.ReadCertificates(filepath.Join(dir, caFile))
	if err != nil {
		return e, nil, err
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	if _, err := loadClientCert(dir); err != nil {
		return e, nil, fmt.Errorf("load device certificate: %w", err)
	}
	cfg := pki.ClientTLS(roots, e.TrustDomain, nil)
	cfg.GetClientCertificate = clientCertificate(dir) // read at each handshake: renewals take effect
	return e, cfg, nil
}

func loadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	signer, err := pki.ReadPrivateKey(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := pki.NewKey()
		if err != nil {
			return nil, fmt.Errorf("create key: %w", err)
		}
		return key, pki.WritePrivateKey(path, key)
	}
	if err != nil {
		return nil, err
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T, want ECDSA", path, signer)
	}
	return key, nil
}
