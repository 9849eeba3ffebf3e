package signals

import (
	"context"
	"fmt"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// macEndpointProtection reports the protections macOS builds in: System
// Integrity Protection (csrutil status) and Gatekeeper (spctl --status).
// Neither needs root.
func (c *Collector) macEndpointProtection(ctx context.Context) *posturev1.EndpointProtection {
	const product = "macOS SIP and Gatekeeper"
	failed := func(status posturev1.Status, reason string) *posturev1.EndpointProtection {
		return &posturev1.EndpointProtection{Product: product, Meta: c.meta(status, reason)}
	}
	stdout, stderr, code, err := c.run(ctx, csrutil, "status")
	if err != nil {
		return failed(posturev1.Status_STATUS_UNAVAILABLE, err.Error())
	}
	if code != 0 {
		return failed(posturev1.Status_STATUS_ERROR, commandError(csrutil, []string{"status"}, code, stderr, stdout).Error())
	}
	sip, sipDetail, err := parseCsrutilStatus(stdout)
	if err != nil {
		return failed(posturev1.Status_STATUS_ERROR, err.Error())
	}
	// spctl exits non-zero when assessments are disabled, and prints the
	// status either way.
	stdout, stderr, code, err = c.run(ctx, spctl, "--status")
	if err != nil {
		return failed(posturev1.Status_STATUS_UNAVAILABLE, err.Error())
	}
	gk, err := parseSpctlStatus(stdout, stderr)
	if err != nil {
		return failed(posturev1.Status_STATUS_ERROR, fmt.Sprintf("%v (exit status %d)", err, code))
	}
	var off []string
	if !sip {
		off = append(off, "System Integrity Protection is "+sipDetail+" (csrutil enable in recoveryOS)")
	}
	if !gk {
		off = append(off, "Gatekeeper is off (spctl --global-enable)")
	}
	return &posturev1.EndpointProtection{
		Meta:                      c.meta(posturev1.Status_STATUS_OK, ""),
		Product:                   product,
		Enabled:                   sip && gk,
		SystemIntegrityProtection: sip,
		Gatekeeper:                gk,
		Detail:                    strings.Join(off, "; "),
	}
}

// parseCsrutilStatus reads "System Integrity Protection status: enabled.".
// Only a plain "enabled" counts: a custom configuration has protections
// off whatever its status word says (OS X 10.11 printed "enabled (Custom
// Configuration)" with every protection disabled; later releases print
// "unknown (Custom Configuration)"). state then names the protections the
// "Configuration:" list shows disabled; Apple Internal is disabled on
// every customer Mac and is left out.
func parseCsrutilStatus(b []byte) (enabled bool, state string, err error) {
	found, custom := false, false
	var off []string
	for line := range strings.Lines(string(b)) {
		t := strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(t, "System Integrity Protection status:"); ok {
			found = true
			state = strings.TrimSuffix(strings.TrimSpace(rest), ".")
			custom = strings.Contains(state, "Custom Configuration")
			continue
		}
		if name, value, ok := strings.Cut(t, ": "); ok && custom && value == "disabled" && name != "Apple Internal" {
			off = append(off, name)
		}
	}
	switch {
	case !found:
		return false, "", fmt.Errorf("csrutil status printed %q, want \"System Integrity Protection status: …\"", firstLine(b))
	case custom && len(off) > 0:
		return false, "a custom configuration with " + joinAnd(off) + " disabled", nil
	case custom:
		return false, "a custom configuration", nil
	}
	return state == "enabled", state, nil
}

// joinAnd joins names as "a, b and c".
func joinAnd(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// parseSpctlStatus reads "assessments enabled" or "assessments disabled"
// (older releases print it on stderr).
func parseSpctlStatus(stdout, stderr []byte) (bool, error) {
	s := string(stdout) + string(stderr)
	switch {
	case strings.Contains(s, "assessments enabled"):
		return true, nil
	case strings.Contains(s, "assessments disabled"):
		return false, nil
	}
	return false, fmt.Errorf("spctl --status printed %q, want \"assessments enabled\" or \"assessments disabled\"", firstLine([]byte(s)))
}
