package signals

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// winFirewallProduct is Windows' built-in firewall.
const winFirewallProduct = "Windows Defender Firewall"

// firewallProfile names a profile in the local store (Standard is what the
// UI calls Private) and in Group Policy.
type firewallProfile struct{ name, local, policy string }

var firewallProfiles = []firewallProfile{
	{"Domain", "DomainProfile", "DomainProfile"},
	{"Private", "StandardProfile", "PrivateProfile"},
	{"Public", "PublicProfile", "PublicProfile"},
}

const (
	firewallLocal  = `HKLM\SYSTEM\CurrentControlSet\Services\SharedAccess\Parameters\FirewallPolicy\`
	firewallPolicy = `HKLM\SOFTWARE\Policies\Microsoft\WindowsFirewall\`
	mpssvcKey      = `HKLM\SYSTEM\CurrentControlSet\Services\mpssvc`
)

// winFirewall reads EnableFirewall for each profile, Group Policy winning
// over the local setting, and the firewall service's start type. The
// firewall counts as on when every profile is on: which one applies
// changes with the network.
func (c *Collector) winFirewall() *posturev1.Firewall {
	var off []string
	svc, err := c.regValues(mpssvcKey, "Start")
	if err != nil {
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
	}
	if start, _ := svc["Start"].(uint64); start == 4 {
		off = append(off, "the Windows Defender Firewall service (mpssvc) is disabled")
	}
	for _, p := range firewallProfiles {
		pol, err := c.regValues(firewallPolicy+p.policy, "EnableFirewall")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
		}
		on, set := pol["EnableFirewall"].(uint64)
		where := "Group Policy"
		if !set {
			local, err := c.regValues(firewallLocal+p.local, "EnableFirewall")
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
			}
			if on, set = local["EnableFirewall"].(uint64); !set {
				return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_ERROR,
					fmt.Sprintf("the %s profile has no EnableFirewall value in %s or %s", p.name, firewallPolicy+p.policy, firewallLocal+p.local))}
			}
			where = "local setting"
		}
		if on != 1 {
			off = append(off, fmt.Sprintf("the %s profile is off (%s)", p.name, where))
		}
	}
	if len(off) > 0 {
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Product: winFirewallProduct, Detail: strings.Join(off, "; ")}
	}
	return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, Product: winFirewallProduct}
}
