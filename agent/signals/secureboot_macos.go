package signals

import (
	"bufio"
	"bytes"
	"context"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// macSecureBoot reports the boot security policy where it is readable.
// Intel Macs with a T2 chip show it in system_profiler SPiBridgeDataType
// ("Secure Boot: Full Security"), as root; Intel Macs without a T2 have no
// secure boot. Apple silicon always boots through a signed chain, but its
// policy level (Full, Reduced, Permissive Security) is readable only with
// bputil as root, whose output Apple does not document, so it is reported
// as unavailable. A measured result is kept until the agent restarts: the
// policy changes only in recoveryOS.
func (c *Collector) macSecureBoot(ctx context.Context, appleSilicon bool) *posturev1.SecureBoot {
	c.macBoot.mu.Lock()
	defer c.macBoot.mu.Unlock()
	if last := c.macBoot.last; last != nil {
		sb := &posturev1.SecureBoot{Enabled: last.Enabled, LegacyBios: last.LegacyBios,
			Meta: c.meta(last.GetMeta().GetStatus(), last.GetMeta().GetReason())}
		return sb
	}
	if appleSilicon {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"the boot security policy of an Apple silicon Mac (Full, Reduced or Permissive Security) is readable only with bputil -d as root, whose output is undocumented; not measured by this agent version")}
	}
	if c.euid != 0 {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"needs root to read the T2 secure boot setting (system_profiler SPiBridgeDataType)")}
	}
	args := []string{"SPiBridgeDataType"}
	stdout, stderr, code, err := c.run(ctx, systemProfiler, args...)
	if err != nil {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	if code != 0 {
		return &posturev1.SecureBoot{Meta: c.meta(posturev1.Status_STATUS_ERROR,
			commandError(systemProfiler, args, code, stderr, stdout).Error())}
	}
	sb := parseIBridge(stdout)
	if sb.meta.status == posturev1.Status_STATUS_OK {
		c.macBoot.last = &posturev1.SecureBoot{Enabled: sb.enabled, Meta: c.meta(sb.meta.status, sb.meta.reason)}
	}
	return &posturev1.SecureBoot{Enabled: sb.enabled, Meta: c.meta(sb.meta.status, sb.meta.reason)}
}

// statusReason is a SignalMeta before it gets a time.
type statusReason struct {
	status posturev1.Status
	reason string
}

type iBridgeResult struct {
	meta    statusReason
	enabled bool
}

// parseIBridge reads system_profiler SPiBridgeDataType text. The Secure
// Boot line names one of the Startup Security Utility levels: Full Security
// and Medium Security both verify the OS signature; No Security does not.
func parseIBridge(b []byte) iBridgeResult {
	if len(bytes.TrimSpace(b)) == 0 {
		return iBridgeResult{meta: statusReason{posturev1.Status_STATUS_OK,
			"this Intel Mac has no T2 security chip, so it has no secure boot"}}
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || k != "Secure Boot" {
			continue
		}
		switch v = strings.TrimSpace(v); v {
		case "Full Security", "Medium Security":
			return iBridgeResult{meta: statusReason{posturev1.Status_STATUS_OK, ""}, enabled: true}
		case "No Security":
			return iBridgeResult{meta: statusReason{posturev1.Status_STATUS_OK,
				"Startup Security Utility is set to No Security (set Full Security in recoveryOS)"}}
		default:
			return iBridgeResult{meta: statusReason{posturev1.Status_STATUS_ERROR,
				"system_profiler SPiBridgeDataType shows an unknown Secure Boot level " + `"` + v + `"`}}
		}
	}
	return iBridgeResult{meta: statusReason{posturev1.Status_STATUS_ERROR,
		"system_profiler SPiBridgeDataType shows no Secure Boot line; output starts " + `"` + firstLine(b) + `"`}}
}
