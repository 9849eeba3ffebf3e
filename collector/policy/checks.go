package policy

import (
	"fmt"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// outcome is a check's verdict before it is dressed as a CheckResult.
type outcome struct {
	result      posturev1.Outcome
	reason      string
	remediation string
	meta        *posturev1.SignalMeta
}

func pass(meta *posturev1.SignalMeta, reason string) outcome {
	return outcome{result: posturev1.Outcome_OUTCOME_PASS, reason: reason, meta: meta}
}

func fail(meta *posturev1.SignalMeta, reason, fix string) outcome {
	return outcome{result: posturev1.Outcome_OUTCOME_FAIL, reason: reason, remediation: fix, meta: meta}
}

// unknownUnlessOK returns an unknown outcome when a signal was not
// measured, and a not-applicable one when the signal does not exist on the
// device.
func unknownUnlessOK(meta *posturev1.SignalMeta, what, fix string) (outcome, bool) {
	switch meta.GetStatus() {
	case posturev1.Status_STATUS_OK:
		return outcome{}, false
	case posturev1.Status_STATUS_NOT_APPLICABLE:
		return outcome{result: posturev1.Outcome_OUTCOME_NOT_APPLICABLE, reason: fmt.Sprintf("%s does not apply: %s", what, meta.GetReason()), meta: meta}, true
	}
	why := meta.GetReason()
	if why == "" {
		why = "the agent did not report it"
	}
	status := strings.ToLower(strings.TrimPrefix(meta.GetStatus().String(), "STATUS_"))
	if meta == nil {
		status = "missing"
	}
	return outcome{
		result:      posturev1.Outcome_OUTCOME_UNKNOWN,
		reason:      fmt.Sprintf("%s is unknown (%s: %s); unknown counts as failing", what, status, why),
		remediation: fix,
		meta:        meta,
	}, true
}

func checkDisk(_ Check, r *posturev1.PostureReport, _ *Measured) outcome {
	d := r.GetDisk()
	const fix = "encrypt the system disk (LUKS on Linux, FileVault on macOS, BitLocker on Windows)"
	if o, unknown := unknownUnlessOK(d.GetMeta(), "disk encryption", fix); unknown {
		return o
	}
	if d.GetSystemEncrypted() {
		return pass(d.GetMeta(), "system disk is encrypted")
	}
	var plain []string
	for _, v := range d.GetVolumes() {
		if !v.GetEncrypted() {
			plain = append(plain, v.GetMountPoint())
		}
	}
	// A few name the problem; a storage server's hundreds would make a
	// reason no one reads, kept with every decision.
	const named = 5
	if len(plain) > named {
		plain = append(plain[:named], fmt.Sprintf("and %d more", len(plain)-named))
	}
	return fail(d.GetMeta(), fmt.Sprintf("not encrypted: %s", strings.Join(plain, ", ")), fix)
}

func checkUpdates(c Check, r *posturev1.PostureReport, _ *Measured) outcome {
	u := r.GetUpdates()
	const fix = "install pending security updates"
	if o, unknown := unknownUnlessOK(u.GetMeta(), "pending security updates", fix); unknown {
		return o
	}
	n := u.GetSecurityPending()
	if n <= c.MaxSecurityPending {
		return pass(u.GetMeta(), fmt.Sprintf("%d pending security updates (at most %d allowed)", n, c.MaxSecurityPending))
	}
	return fail(u.GetMeta(), fmt.Sprintf("%d pending security updates, at most %d allowed", n, c.MaxSecurityPending), fix)
}

// secureBootState is the secure boot state that the secure_boot check
// judges and level expressions see as device.secure_boot: the collector's
// own reading of PCR 7 when the check's measured setting uses it, else the
// agent's report.
type secureBootState struct {
	meta       *posturev1.SignalMeta
	measured   bool // from the TPM event log, not the agent
	enabled    bool
	setupMode  bool
	legacyBIOS bool
	// missing says why a required measurement is unknown; then meta is not
	// OK and the other fields mean nothing.
	missing string
}

// secureBootFrom resolves the state for a measured setting (prefer when
// empty).
func secureBootFrom(mode string, r *posturev1.PostureReport, m *Measured) secureBootState {
	if mode != "ignore" {
		if m != nil && m.SecureBootKnown {
			return secureBootState{
				meta:     &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: r.GetCreatedAt(), Source: posturev1.Source_SOURCE_TPM},
				measured: true,
				enabled:  m.SecureBoot,
			}
		}
		if mode == "require" {
			why := "no TPM event log"
			if m != nil && m.Reason != "" {
				why = m.Reason
			}
			return secureBootState{meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_UNAVAILABLE, Reason: why}, missing: why}
		}
	}
	s := r.GetSecureBoot()
	return secureBootState{meta: s.GetMeta(), enabled: s.GetEnabled(), setupMode: s.GetSetupMode(), legacyBIOS: s.GetLegacyBios()}
}

// view is device.secure_boot. A measured SecureBoot variable shows the
// machine boots UEFI, and when it is set, that secure boot is out of setup
// mode; when it is clear the measurement does not tell setup mode, so
// setup_mode is absent and an expression reading it denies.
func (s secureBootState) view() map[string]any {
	if s.measured && !s.enabled {
		return map[string]any{"enabled": false, "legacy_bios": false}
	}
	return map[string]any{"enabled": s.enabled, "setup_mode": s.setupMode, "legacy_bios": s.legacyBIOS}
}

func checkSecureBoot(c Check, r *posturev1.PostureReport, m *Measured) outcome {
	s := secureBootFrom(c.Measured, r, m)
	const fix = "enable UEFI Secure Boot in the firmware settings"
	switch {
	case s.missing != "":
		return outcome{result: posturev1.Outcome_OUTCOME_UNKNOWN, meta: r.GetSecureBoot().GetMeta(),
			reason:      "measured secure boot is required and unknown (" + s.missing + "); unknown counts as failing",
			remediation: "run the agent as root on a device with a TPM, so it can send the TPM event log"}
	case s.measured && s.enabled:
		return pass(s.meta, "secure boot is enabled, as measured by the TPM (PCR 7)")
	case s.measured:
		return fail(s.meta, "secure boot is disabled, as measured by the TPM (PCR 7)", fix)
	}
	if o, unknown := unknownUnlessOK(s.meta, "secure boot", fix); unknown {
		return o
	}
	switch {
	case s.legacyBIOS:
		return fail(s.meta, "machine boots with legacy BIOS, which has no secure boot", "switch the firmware to UEFI boot and enable Secure Boot")
	case s.setupMode:
		return fail(s.meta, "secure boot is in setup mode and enforces nothing", fix)
	case s.enabled:
		return pass(s.meta, "secure boot is enabled")
	}
	return fail(s.meta, "secure boot is disabled", fix)
}

func checkOSVersion(c Check, r *posturev1.PostureReport, _ *Measured) outcome {
	o := r.GetOs()
	const fix = "upgrade the operating system"
	if out, unknown := unknownUnlessOK(o.GetMeta(), "OS version", fix); unknown {
		return out
	}
	name := strings.ToLower(o.GetName())
	min, ok := c.MinVersions[name]
	if !ok {
		min, ok = c.MinVersions[o.GetPlatform()]
	}
	if !ok {
		return outcome{
			result:      posturev1.Outcome_OUTCOME_UNKNOWN,
			reason:      fmt.Sprintf("the policy sets no minimum version for %q; unknown counts as failing", o.GetName()),
			remediation: fmt.Sprintf("ask an admin to add %s to min_versions", name),
			meta:        o.GetMeta(),
		}
	}
	if compareVersions(o.GetVersion(), min) >= 0 {
		return pass(o.GetMeta(), fmt.Sprintf("%s %s is at or above %s", o.GetName(), o.GetVersion(), min))
	}
	return fail(o.GetMeta(), fmt.Sprintf("%s %s is older than the minimum %s", o.GetName(), o.GetVersion(), min), fmt.Sprintf("upgrade %s to %s or later", o.GetName(), min))
}

func checkFirewall(_ Check, r *posturev1.PostureReport, _ *Measured) outcome {
	f := r.GetFirewall()
	const fix = "turn on the host firewall"
	if o, unknown := unknownUnlessOK(f.GetMeta(), "firewall", fix); unknown {
		return o
	}
	if f.GetEnabled() {
		return pass(f.GetMeta(), "firewall is on ("+f.GetProduct()+")")
	}
	return fail(f.GetMeta(), withDetail("firewall is off", f.GetDetail()), fix)
}

func withDetail(s, detail string) string {
	if detail == "" {
		return s
	}
	return s + ": " + detail
}

func checkScreenLock(c Check, r *posturev1.PostureReport, _ *Measured) outcome {
	s := r.GetScreenLock()
	const fix = "turn on the screen lock"
	if o, unknown := unknownUnlessOK(s.GetMeta(), "screen lock", fix); unknown {
		return o
	}
	if !s.GetEnabled() {
		return fail(s.GetMeta(), withDetail("screen lock is off", s.GetDetail()), fix)
	}
	timeout := time.Duration(s.GetTimeoutSeconds()) * time.Second
	if c.MaxScreenLockTimeout > 0 && (timeout == 0 || timeout > c.MaxScreenLockTimeout) {
		return fail(s.GetMeta(), fmt.Sprintf("screen locks after %s of inactivity, more than the %s allowed", timeout, c.MaxScreenLockTimeout),
			fmt.Sprintf("set the screen to lock after at most %s of inactivity", c.MaxScreenLockTimeout))
	}
	return pass(s.GetMeta(), fmt.Sprintf("screen locks after %s", timeout))
}

func checkEndpoint(_ Check, r *posturev1.PostureReport, _ *Measured) outcome {
	e := r.GetEndpointProtection()
	const fix = "turn on the platform's malware protection (Microsoft Defender real-time protection; SIP and Gatekeeper on macOS)"
	if o, unknown := unknownUnlessOK(e.GetMeta(), "endpoint protection", fix); unknown {
		return o
	}
	if e.GetEnabled() {
		return pass(e.GetMeta(), e.GetProduct()+" is on")
	}
	return fail(e.GetMeta(), withDetail(e.GetProduct()+" is off", e.GetDetail()), fix)
}

func checkAutoUpdate(_ Check, r *posturev1.PostureReport, _ *Measured) outcome {
	a := r.GetAutoUpdate()
	const fix = "turn on automatic installation of security updates"
	if o, unknown := unknownUnlessOK(a.GetMeta(), "automatic updates", fix); unknown {
		return o
	}
	if a.GetEnabled() {
		return pass(a.GetMeta(), "updates install automatically ("+a.GetMechanism()+")")
	}
	return fail(a.GetMeta(), withDetail("updates do not install automatically", a.GetDetail()), fix)
}
