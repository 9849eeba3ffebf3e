package signals

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// macFirewallProduct is macOS's built-in firewall.
const macFirewallProduct = "Application Firewall"

// macFirewall reads the Application Firewall's global state: before macOS
// 15 from its preferences (globalstate 0 off, 1 on, 2 block all incoming),
// from macOS 15, which no longer keeps that file, from socketfilterfw.
func (c *Collector) macFirewall(ctx context.Context) *posturev1.Firewall {
	major, err := c.macMajor(ctx)
	if err != nil {
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, "cannot tell the macOS version: "+err.Error())}
	}
	var state int
	if major >= 15 {
		args := []string{"--getglobalstate"}
		stdout, stderr, code, err := c.run(ctx, socketfilterfw, args...)
		if err != nil {
			return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
		}
		if code != 0 {
			return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_ERROR, commandError(socketfilterfw, args, code, stderr, stdout).Error())}
		}
		if state, err = parseSocketfilterfwState(stdout); err != nil {
			return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
		}
	} else {
		args := []string{"read", "/Library/Preferences/com.apple.alf", "globalstate"}
		stdout, stderr, code, err := c.run(ctx, defaultsCmd, args...)
		if err != nil {
			return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error())}
		}
		if code != 0 {
			return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_ERROR, commandError(defaultsCmd, args, code, stderr, stdout).Error())}
		}
		if state, err = strconv.Atoi(strings.TrimSpace(string(stdout))); err != nil {
			return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_ERROR,
				fmt.Sprintf("com.apple.alf globalstate is %q, want 0, 1 or 2", firstLine(stdout)))}
		}
	}
	switch state {
	case 1, 2:
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, Product: macFirewallProduct}
	case 0:
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Product: macFirewallProduct,
			Detail: "the Application Firewall is off (System Settings › Network › Firewall)"}
	}
	return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_ERROR, fmt.Sprintf("unknown Application Firewall state %d", state))}
}

var socketfilterfwState = regexp.MustCompile(`\(State = (\d+)\)`)

// parseSocketfilterfwState reads "Firewall is enabled. (State = 1)" or
// "Firewall is disabled. (State = 0)"; without the number, the words
// decide.
func parseSocketfilterfwState(b []byte) (int, error) {
	s := string(b)
	if m := socketfilterfwState.FindStringSubmatch(s); m != nil {
		return strconv.Atoi(m[1])
	}
	switch {
	case strings.Contains(s, "is disabled"):
		return 0, nil
	case strings.Contains(s, "is enabled"), strings.Contains(s, "blocking all"):
		return 1, nil
	}
	return 0, fmt.Errorf("socketfilterfw --getglobalstate printed %q, want \"Firewall is enabled. (State = 1)\"", firstLine(b))
}
