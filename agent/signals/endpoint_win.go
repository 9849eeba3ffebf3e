package signals

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const defenderNamespace = `ROOT\Microsoft\Windows\Defender`

// mpComputerStatus is the part of Defender's MSFT_MpComputerStatus the
// agent reads.
type mpComputerStatus struct {
	AMServiceEnabled          bool
	AntivirusEnabled          bool
	RealTimeProtectionEnabled bool
	AntivirusSignatureAge     uint32 // days
	IsTamperProtected         bool
	// AMRunningMode: "Normal", "Passive Mode" (another antivirus is
	// primary), "EDR Block Mode", "SxS Passive Mode".
	AMRunningMode string
}

// winEndpointProtection reads Microsoft Defender Antivirus' status.
func (c *Collector) winEndpointProtection(ctx context.Context) endpointProtection {
	const product = "Microsoft Defender Antivirus"
	rows, err := wmiRows[mpComputerStatus](ctx, c, defenderNamespace, "SELECT * FROM MSFT_MpComputerStatus")
	switch {
	case errors.Is(err, errAccessDenied):
		return endpointProtection{product: product, meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"needs administrator rights to read Microsoft Defender's status: "+err.Error())}
	case errors.Is(err, fs.ErrNotExist):
		return endpointProtection{product: product, meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"Microsoft Defender's WMI provider is missing, so Defender is not installed; third-party antivirus products are not examined")}
	case err != nil:
		return endpointProtection{product: product, meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
	case len(rows) == 0:
		return endpointProtection{product: product, meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"MSFT_MpComputerStatus returned nothing: the Microsoft Defender service is not running")}
	}
	e := defenderState(rows[0])
	e.product = product
	e.meta = c.meta(posturev1.Status_STATUS_OK, "")
	return e
}

// defenderState decides: protection is on when the service and the
// antivirus run in normal (active) mode with real-time scanning.
// Signature age and tamper protection are reported for policy to judge.
func defenderState(s mpComputerStatus) endpointProtection {
	e := endpointProtection{
		realTimeProtection: s.RealTimeProtectionEnabled,
		signatureAgeDays:   s.AntivirusSignatureAge,
		tamperProtection:   s.IsTamperProtected,
		runningMode:        s.AMRunningMode,
	}
	var off []string
	if !s.AMServiceEnabled || !s.AntivirusEnabled {
		off = append(off, "the antivirus is off")
	}
	if !s.RealTimeProtectionEnabled {
		off = append(off, "real-time protection is off")
	}
	if s.AMRunningMode != "" && s.AMRunningMode != "Normal" {
		off = append(off, fmt.Sprintf("Defender runs in %s: another antivirus product is primary", s.AMRunningMode))
	}
	e.enabled = len(off) == 0
	if !s.IsTamperProtected {
		off = append(off, "tamper protection is off")
	}
	e.detail = strings.Join(off, "; ")
	return e
}
