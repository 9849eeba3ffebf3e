package signals

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const defenderNamespace = `ROOT\Microsoft\Windows\Defender`

// mpComputerStatus is the part of Defender's MSFT_MpComputerStatus the
// agent reads.
type mpComputerStatus struct {
	AMServiceEnabled          bool
	AntivirusEnabled          bool
	RealTimeProtectionEnabled bool
	// AntivirusSignatureAge is in days; signatureAgeNever when no
	// signatures were ever installed.
	AntivirusSignatureAge uint32
	IsTamperProtected     bool
	// AMRunningMode: "Normal", "Passive Mode" or "SxS Passive Mode"
	// (another antivirus is primary), "EDR Block Mode", "Not running"
	// (the engine is stopped). Defender releases before it have none.
	AMRunningMode string
}

// signatureAgeNever is the AntivirusSignatureAge Defender reports when it
// has never installed signatures (AntivirusSignatureVersion 0.0.0.0). The
// report keeps it in signature_age_days, the largest age there is, so that
// any age limit fails; the detail says what it means.
const signatureAgeNever = math.MaxUint32

// winEndpointProtection reads Microsoft Defender Antivirus' status.
func (c *Collector) winEndpointProtection(ctx context.Context) *posturev1.EndpointProtection {
	failed := func(status posturev1.Status, reason string) *posturev1.EndpointProtection {
		return &posturev1.EndpointProtection{Product: defenderProduct, Meta: c.meta(status, reason)}
	}
	rows, err := wmiRows[mpComputerStatus](ctx, c, defenderNamespace, "SELECT * FROM MSFT_MpComputerStatus")
	switch {
	case errors.Is(err, errAccessDenied):
		return failed(posturev1.Status_STATUS_UNAVAILABLE, "needs administrator rights to read Microsoft Defender's status: "+err.Error())
	case errors.Is(err, fs.ErrNotExist):
		return failed(posturev1.Status_STATUS_UNAVAILABLE,
			"Microsoft Defender's WMI provider is missing, so Defender is not installed; third-party antivirus products are not examined")
	case err != nil:
		return failed(posturev1.Status_STATUS_ERROR, err.Error())
	case len(rows) == 0:
		return failed(posturev1.Status_STATUS_UNAVAILABLE, "MSFT_MpComputerStatus returned nothing: the Microsoft Defender service is not running")
	}
	return defenderState(rows[0], c.now())
}

const defenderProduct = "Microsoft Defender Antivirus"

// defenderState decides from Defender's status, read at t: protection is
// on when the service and the antivirus run in normal (active) mode with
// real-time scanning and signatures. Signature age and tamper protection
// are reported for policy to judge.
func defenderState(s mpComputerStatus, t time.Time) *posturev1.EndpointProtection {
	e := &posturev1.EndpointProtection{
		Meta:               metaAt(t, posturev1.Status_STATUS_OK, ""),
		Product:            defenderProduct,
		RealTimeProtection: s.RealTimeProtectionEnabled,
		SignatureAgeDays:   s.AntivirusSignatureAge,
		TamperProtection:   s.IsTamperProtected,
		RunningMode:        s.AMRunningMode,
	}
	var off []string
	if !s.AMServiceEnabled || !s.AntivirusEnabled {
		off = append(off, "the antivirus is off")
	}
	if !s.RealTimeProtectionEnabled {
		off = append(off, "real-time protection is off")
	}
	if why := runningModeProblem(s.AMRunningMode); why != "" {
		off = append(off, why)
	}
	if s.AntivirusSignatureAge == signatureAgeNever {
		off = append(off, "no antivirus signatures were ever installed (Update-MpSignature)")
	}
	e.Enabled = len(off) == 0
	if !s.IsTamperProtected {
		off = append(off, "tamper protection is off")
	}
	e.Detail = strings.Join(off, "; ")
	return e
}

// runningModeProblem explains an AMRunningMode other than active
// protection, in the meanings Microsoft documents for each mode.
func runningModeProblem(mode string) string {
	switch mode {
	case "", "Normal":
		return ""
	case "Passive Mode", "SxS Passive Mode":
		return fmt.Sprintf("Defender runs in %s: another antivirus product is primary and Defender does not remediate threats", mode)
	case "EDR Block Mode":
		return "Defender runs in EDR Block Mode: it remediates only what Defender for Endpoint detects " +
			"(whether it is also the primary antivirus depends on ForceDefenderPassiveMode, which is not read)"
	case "Not running":
		return "Microsoft Defender Antivirus is not running (turned off, for example by the policy \"Turn off Microsoft Defender Antivirus\", " +
			"or replaced by another antivirus product)"
	}
	return fmt.Sprintf("Defender reports the running mode %q, which is not active protection", mode)
}
