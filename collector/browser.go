package collector

import (
	"context"
	"errors"
	"fmt"

	"github.com/posture-project/posture/collector/api"
	"github.com/posture-project/posture/collector/store"
)

// DefaultBrowserCertTTL is how long a browser certificate lasts unless
// Config.BrowserCertTTL says otherwise.
const DefaultBrowserCertTTL = api.DefaultBrowserCertTTL

// RequestMeasurement asks a device's agent to measure and report now
// (Check again on a deny page), over its report stream on whichever
// collector holds it: the request is an event every collector applies.
// held says whether this collector holds the stream.
func (c *Collector) RequestMeasurement(ctx context.Context, deviceID string) (bool, error) {
	held, err := c.api.RequestMeasurement(ctx, deviceID)
	if errors.Is(err, store.ErrNotFound) {
		return false, fmt.Errorf("device %s is not enrolled with this collector", deviceID)
	}
	return held, err
}

// ReportSeq is the sequence number of the device's newest stored report.
func (c *Collector) ReportSeq(deviceID string) (uint64, bool) {
	seq, _, _, ok := c.fleet.Head(deviceID)
	return seq, ok
}

// CertCurrent says whether a certificate is one the device holds now: its
// device certificate or a browser certificate of one of its users.
func (c *Collector) CertCurrent(deviceID, serial string, keySHA256 []byte) error {
	return c.fleet.HeldCert(deviceID, serial, keySHA256, c.cfg.Now())
}

// RecheckKey is the key of the deny page's Check again tokens, the same on
// every collector sharing the CA.
func (c *Collector) RecheckKey() ([]byte, error) { return c.ca.DeriveKey("recheck") }
