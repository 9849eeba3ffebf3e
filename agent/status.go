package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/posture-project/posture/agent/spool"
	"github.com/posture-project/posture/internal/durable"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// Status is what an agent's state directory says about it, for
// posture-agent status. It is read from the files, so it is true whether
// or not the agent runs.
type Status struct {
	// Enrolled is set once the device enrolled; the rest is empty before.
	Enrolled  bool
	DeviceID  string
	SPIFFEID  string
	Collector string
	Identity  string // software or tpm
	// LastSeq is the newest report the collector acknowledged (0: none).
	LastSeq uint64
	// AckedAt is when it was acknowledged (zero: not known, or none).
	AckedAt time.Time
	// Unsent is how many measurements wait in the spool.
	Unsent int
	// CertExpires is when the device certificate expires (the agent renews
	// it once a third of its lifetime is left).
	CertExpires time.Time
	// Decision is what the collector last said it decided about the
	// device (nil: nothing yet).
	Decision *posturev1.AgentDecision
}

// saveDecision keeps the collector's latest decision for status. Losing it
// costs nothing but the display, so a failure is only logged.
func (a *Agent) saveDecision(d *posturev1.AgentDecision) {
	b, err := protojson.Marshal(d)
	if err == nil {
		err = durable.WriteFileAtomic(filepath.Join(a.cfg.StateDir, decisionFile), b, 0o600)
	}
	if err != nil {
		a.log.Warn("record the collector's decision", "err", err)
	}
}

// ReadStatus reads the status of the agent whose state directory is dir.
// A directory that does not exist is an agent not enrolled.
func ReadStatus(dir string) (Status, error) {
	var st Status
	var e enrollment
	if err := readJSON(filepath.Join(dir, configFile), &e); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return st, nil
		}
		return st, fmt.Errorf("read %s: %w", filepath.Join(dir, configFile), err)
	}
	st.Enrolled, st.DeviceID, st.SPIFFEID, st.Collector, st.Identity = true, e.DeviceID, e.SPIFFEID, e.Collector, e.Identity
	var h chainHead
	if err := readJSON(filepath.Join(dir, chainFile), &h); err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("read %s: %w", filepath.Join(dir, chainFile), err)
	}
	st.LastSeq, st.AckedAt = h.Seq, h.AckedAt
	n, err := spool.Count(filepath.Join(dir, spoolDir))
	if err != nil {
		return st, err
	}
	st.Unsent = n
	if certs, err := pki.ReadCertificates(filepath.Join(dir, certFile)); err == nil && len(certs) > 0 {
		st.CertExpires = certs[0].NotAfter
	}
	if b, err := os.ReadFile(filepath.Join(dir, decisionFile)); err == nil {
		var d posturev1.AgentDecision
		if protojson.Unmarshal(b, &d) == nil {
			st.Decision = &d
		}
	}
	return st, nil
}
