package signals

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/proto"
)

// macSecureBoot reports the boot security policy that system_profiler
// SPiBridgeDataType shows, which needs no root. On Apple silicon it prints
// the policy of the running system under "Boot Policy:" ("Secure Boot: Full
// Security"); bputil -d shows the same but needs root. On Intel Macs with a
// T2 chip it names the controller, and the captured outputs show no level;
// Intel Macs without a T2 print nothing and have no secure boot. A measured
// result is kept until the agent restarts: the policy changes only in
// recoveryOS.
func (c *Collector) macSecureBoot(ctx context.Context, appleSilicon bool) *posturev1.SecureBoot {
	c.macBoot.mu.Lock()
	defer c.macBoot.mu.Unlock()
	if last := c.macBoot.last; last != nil {
		return renewed(last, c.now())
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
	sb := parseIBridge(stdout, appleSilicon, c.now())
	if sb.GetMeta().GetStatus() == posturev1.Status_STATUS_OK {
		c.macBoot.last = proto.Clone(sb).(*posturev1.SecureBoot)
	}
	return sb
}

const setFullSecurity = "set Full Security in Startup Security Utility in recoveryOS"

// bootPolicy is what one Startup Security Utility level means.
type bootPolicy struct {
	enabled bool   // Apple's signature on the boot software is verified
	why     string // what the level allows, for a level short of Full
}

// bootPolicies are the Startup Security Utility levels as system_profiler
// names them: Full, Reduced and Permissive Security on Apple silicon, Full,
// Medium and No Security on a T2. Every level but Permissive and No
// Security still verifies Apple's signature on the boot software.
var bootPolicies = map[string]bootPolicy{
	"Full Security": {enabled: true},
	"Reduced Security": {enabled: true,
		why: "the boot policy is Reduced Security: older signed macOS versions and, if allowed, kernel extensions may load (" + setFullSecurity + ")"},
	"Permissive Security": {
		why: "the boot policy is Permissive Security: macOS does not require Apple-signed boot software (" + setFullSecurity + ")"},
	"Medium Security": {enabled: true,
		why: "the boot policy is Medium Security: any signed macOS version Apple ever trusted may boot (" + setFullSecurity + ")"},
	"No Security": {
		why: "Startup Security Utility is set to No Security (set Full Security in recoveryOS)"},
}

// parseIBridge reads system_profiler SPiBridgeDataType text, printed at t.
// The level is display text (its -json form carries the same name,
// "ibridge_secure_boot": "Full Security"), which macOS may translate and
// which Apple does not document as an interface, so a level this agent does
// not know is reported as unreadable, never guessed. SecureBoot has no
// detail field, so what a level short of Full allows is said in the reason
// of its OK status.
func parseIBridge(b []byte, appleSilicon bool, t time.Time) *posturev1.SecureBoot {
	unavailable := func(reason string) *posturev1.SecureBoot {
		return &posturev1.SecureBoot{Meta: metaAt(t, posturev1.Status_STATUS_UNAVAILABLE, reason)}
	}
	if len(bytes.TrimSpace(b)) == 0 {
		if appleSilicon {
			return unavailable("system_profiler SPiBridgeDataType printed nothing on an Apple silicon Mac, so the boot policy could not be read")
		}
		return &posturev1.SecureBoot{Meta: metaAt(t, posturev1.Status_STATUS_OK,
			"this Intel Mac has no T2 security chip, so it has no secure boot")}
	}
	var model string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		v = strings.TrimSpace(v)
		switch {
		case !ok:
		case k == "Model Name" || k == "Model Identifier":
			model = v
		case k == "Secure Boot":
			if p, known := bootPolicies[v]; known {
				return &posturev1.SecureBoot{Meta: metaAt(t, posturev1.Status_STATUS_OK, p.why), Enabled: p.enabled}
			}
			return unavailable(fmt.Sprintf("system_profiler SPiBridgeDataType shows the boot policy %q, which is not a level this agent knows "+
				"(system_profiler may show it translated on a Mac set to another language)", v))
		}
	}
	if !appleSilicon {
		return unavailable(fmt.Sprintf("system_profiler SPiBridgeDataType shows this T2 Mac's controller (%s) but no \"Secure Boot:\" level, "+
			"so the level set in Startup Security Utility is not measured; check it in recoveryOS", model))
	}
	return unavailable(fmt.Sprintf("system_profiler SPiBridgeDataType shows no \"Secure Boot:\" line (output starts %q); its labels may be "+
		"translated on a Mac set to another language, so the boot policy could not be read", firstLine(b)))
}
