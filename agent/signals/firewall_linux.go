package signals

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Linux has several firewall front ends (ufw, firewalld) over one kernel
// packet filter. The kernel's ruleset decides: inbound traffic is filtered
// when an input hook drops by default, for IPv4 and (where it is enabled)
// IPv6. The front ends only name the product, and firewalld's trusted zone,
// which accepts everything through a ruleset that looks filtering, has to be
// asked for. The front ends' own status commands are Python programs costing
// 100–200 ms of CPU, so they are not run every cycle: ufw is read from its
// configuration and the ruleset, firewalld over D-Bus with busctl.

// firewalldDBus addresses firewalld's D-Bus API (firewalld.dbus(5)).
var firewalldDBus = []string{"org.fedoraproject.FirewallD1", "/org/fedoraproject/FirewallD1", "org.fedoraproject.FirewallD1"}

func (c *Collector) firewall(ctx context.Context) *posturev1.Firewall {
	var notes []string
	rs := c.readRuleset(ctx)

	// firewalld is asked only when its rules are loaded (its table, or its
	// iptables chains) or the ruleset is unreadable: a stopped firewalld
	// removes its rules, and busctl costs a process per cycle.
	if c.hasCommand("firewalld") {
		if rs.tables["inet firewalld"] || rs.chains["INPUT_ZONES"] || rs.needsRoot != "" || rs.err != "" {
			fwd := c.firewalldState(ctx)
			if fwd.running && fwd.zone == "trusted" {
				return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Product: "firewalld",
					Detail: "firewalld runs with the default zone trusted, which accepts all inbound traffic (firewall-cmd --set-default-zone=public)"}
			}
			if fwd.running {
				return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, Product: "firewalld"}
			}
			if fwd.note != "" {
				notes = append(notes, fwd.note)
			}
		} else {
			notes = append(notes, "firewalld is installed but its rules are not loaded (systemctl enable --now firewalld)")
		}
	}

	ufwEnabled, ufwInstalled := c.ufwConfig()
	switch {
	case rs.needsRoot != "":
		reason := "needs root to read the nftables ruleset (" + rs.needsRoot + ")"
		if ufwEnabled {
			reason += "; ufw is enabled in /etc/ufw/ufw.conf, but whether its rules are loaded cannot be checked without root"
		}
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, reason)}
	case rs.err != "":
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_ERROR, rs.err)}
	case rs.source == "":
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"neither nft nor iptables is installed, so the kernel's packet filter cannot be read (install nftables)")}
	}

	ipv6 := c.ipv6Active()
	if rs.v4Drop && (rs.v6Drop || !ipv6) {
		product := rs.source
		switch {
		case ufwEnabled && rs.chains["ufw-user-input"]:
			product = "ufw"
		case rs.tables["inet firewalld"] || rs.chains["INPUT_ZONES"]:
			product = "firewalld"
		}
		return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, Product: product}
	}

	switch {
	case rs.v4Drop:
		notes = append(notes, fmt.Sprintf("%s drops inbound IPv4 by default but accepts IPv6", rs.source))
	case rs.v6Drop:
		notes = append(notes, fmt.Sprintf("%s drops inbound IPv6 by default but accepts IPv4", rs.source))
	default:
		notes = append(notes, fmt.Sprintf("no %s input chain drops inbound traffic by default", rs.source))
	}
	switch {
	case ufwEnabled:
		notes = append(notes, "ufw is enabled in /etc/ufw/ufw.conf but its rules are not loaded (ufw enable)")
	case ufwInstalled:
		notes = append(notes, "ufw is installed but disabled (ufw enable)")
	}
	return &posturev1.Firewall{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Detail: strings.Join(notes, "; ")}
}

// firewalldStatus is what firewalld says about itself.
type firewalldStatus struct {
	running bool
	zone    string // default zone, when running and readable
	note    string // why it is not running, for the reason of a disabled firewall
}

// firewalldState asks firewalld, when it is installed, for its default
// zone: an answer means it runs. getDefaultZone needs no privilege.
func (c *Collector) firewalldState(ctx context.Context) firewalldStatus {
	if !c.hasCommand("firewalld") {
		return firewalldStatus{}
	}
	if !c.hasCommand("busctl") {
		// Without busctl only the Python client is left.
		stdout, _, code, err := c.run(ctx, "firewall-cmd", "--state")
		if err == nil && code == 0 && strings.TrimSpace(string(stdout)) == "running" {
			return firewalldStatus{running: true}
		}
		return firewalldStatus{note: "firewalld is installed but not running (systemctl enable --now firewalld)"}
	}
	args := append([]string{"call"}, firewalldDBus...)
	args = append(args, "getDefaultZone")
	stdout, stderr, code, err := c.run(ctx, "busctl", args...)
	if err != nil {
		return firewalldStatus{note: fmt.Sprintf("cannot ask firewalld for its state: %v", err)}
	}
	if code != 0 {
		if msg := firstLine(stderr); !strings.Contains(msg, "not provided by any .service files") &&
			!strings.Contains(msg, "Failed to connect to bus") {
			return firewalldStatus{note: fmt.Sprintf("cannot ask firewalld for its state: %s", msg)}
		}
		return firewalldStatus{note: "firewalld is installed but not running (systemctl enable --now firewalld)"}
	}
	return firewalldStatus{running: true, zone: parseBusctlString(stdout)}
}

// parseBusctlString reads a busctl reply holding one string: `s "public"`.
func parseBusctlString(b []byte) string {
	v, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "s ")
	if !ok {
		return ""
	}
	return strings.Trim(v, `"`)
}

// ufwConfig reads whether ufw is installed and set to start
// (/etc/ufw/ufw.conf ENABLED=yes, which "ufw enable" writes).
func (c *Collector) ufwConfig() (enabled, installed bool) {
	b, err := os.ReadFile(c.path("/etc/ufw/ufw.conf"))
	if err != nil {
		return false, false
	}
	conf := parseOSRelease(b) // the same shell-style KEY=value lines
	return strings.EqualFold(conf["ENABLED"], "yes"), true
}

// ipv6Active reports whether any interface has an IPv6 address; without
// one, an IPv4-only firewall filters everything that can arrive.
func (c *Collector) ipv6Active() bool {
	b, err := os.ReadFile(c.path("/proc/net/if_inet6"))
	return err == nil && len(bytes.TrimSpace(b)) > 0
}

// ruleset is what the kernel's packet filter does with inbound traffic.
type ruleset struct {
	source         string // "nftables" or "iptables": what was read
	v4Drop, v6Drop bool   // an input hook drops IPv4 / IPv6 by default
	chains         map[string]bool
	tables         map[string]bool // "inet firewalld"
	needsRoot      string          // the permission error, when reading needs root
	err            string
}

// readRuleset reads the ruleset with nft, and with iptables when nft is
// missing or the kernel has tables of the legacy iptables backend loaded,
// whose rules nft does not show (iptables-nft rules are part of the nft
// ruleset).
func (c *Collector) readRuleset(ctx context.Context) ruleset {
	rs := ruleset{chains: map[string]bool{}, tables: map[string]bool{}}
	if c.hasCommand("nft") {
		stdout, stderr, code, err := c.run(ctx, "nft", "list", "ruleset")
		switch {
		case err != nil:
			rs.err = err.Error()
			return rs
		case code != 0 && permissionDenied(stderr):
			rs.needsRoot = "nft list ruleset: " + firstLine(stderr)
			return rs
		case code != 0:
			rs.err = commandError("nft", []string{"list", "ruleset"}, code, stderr, stdout).Error()
			return rs
		}
		rs.source = "nftables"
		parseNftRuleset(stdout, &rs)
		if (rs.v4Drop && rs.v6Drop) || !c.legacyTablesLoaded() {
			return rs
		}
	}
	if !c.hasCommand("iptables") {
		return rs
	}
	nftDrop := rs.v4Drop || rs.v6Drop
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if cmd == "ip6tables" && !c.hasCommand(cmd) {
			break
		}
		stdout, stderr, code, err := c.run(ctx, cmd, "-S")
		switch {
		case err != nil:
			rs.err = err.Error()
			return rs
		case code != 0 && permissionDenied(stderr):
			rs.needsRoot = cmd + " -S: " + firstLine(stderr)
			return rs
		case code != 0:
			rs.err = commandError(cmd, []string{"-S"}, code, stderr, stdout).Error()
			return rs
		}
		drop := parseIptablesS(stdout, rs.chains)
		if cmd == "iptables" {
			rs.v4Drop = rs.v4Drop || drop
		} else {
			rs.v6Drop = rs.v6Drop || drop
		}
	}
	if rs.source == "" || (!nftDrop && (rs.v4Drop || rs.v6Drop)) {
		rs.source = "iptables"
	}
	return rs
}

// legacyTablesLoaded reports whether the legacy iptables backend has
// tables in the kernel (/proc/net/ip_tables_names and ip6_tables_names list
// them). When that cannot be read, it answers yes, so that iptables is
// asked.
func (c *Collector) legacyTablesLoaded() bool {
	for _, p := range []string{"/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"} {
		b, err := os.ReadFile(c.path(p))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil || len(bytes.TrimSpace(b)) > 0 {
			return true
		}
	}
	return false
}

// permissionDenied recognizes the errors nft and iptables print without
// CAP_NET_ADMIN: "Operation not permitted (you must be root)",
// "Permission denied (you must be root)".
func permissionDenied(stderr []byte) bool {
	s := string(stderr)
	return strings.Contains(s, "you must be root") || strings.Contains(s, "Operation not permitted") ||
		strings.Contains(s, "Permission denied")
}

// unconditionalDrop matches a rule that drops or rejects everything that
// reaches it, as the last rule of an input chain whose policy is accept
// (firewalld ends filter_INPUT that way).
var unconditionalDrop = regexp.MustCompile(`^(?:counter(?: packets \d+ bytes \d+)? )?` +
	`(?:log(?: prefix "(?:[^"\\]|\\.)*")?(?: level \w+)? )?(?:counter(?: packets \d+ bytes \d+)? )?` +
	`(?:drop|reject(?: with .+)?)$`)

// parseNftRuleset reads "nft list ruleset" output: which base chains hook
// input, their policy, and their last rule. A packet must pass every base
// chain on a hook, so one that drops by default is enough; an inet table
// covers IPv4 and IPv6.
func parseNftRuleset(b []byte, rs *ruleset) {
	var family, table, chain, lastRule string
	depth, chainDepth := 0, 0
	hookInput, policyDrop := false, false
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		f := strings.Fields(line)
		switch {
		case depth == 0 && len(f) == 4 && f[0] == "table" && f[3] == "{":
			family, table = f[1], f[2]
			rs.tables[family+" "+table] = true
		case depth == 1 && len(f) == 3 && f[0] == "chain" && f[2] == "{":
			chain, chainDepth = f[1], 2
			hookInput, policyDrop, lastRule = false, false, ""
			rs.chains[chain] = true
		case chain != "" && depth == chainDepth && strings.HasPrefix(line, "type "):
			hookInput = strings.Contains(line, " hook input ")
			policyDrop = strings.Contains(line, "policy drop;")
		case chain != "" && depth == chainDepth && line != "" && line != "}":
			lastRule = line
		}
		depth += strings.Count(line, "{") - strings.Count(line, "}")
		if chain != "" && depth < chainDepth {
			if hookInput && (policyDrop || unconditionalDrop.MatchString(lastRule)) {
				switch family {
				case "ip":
					rs.v4Drop = true
				case "ip6":
					rs.v6Drop = true
				case "inet":
					rs.v4Drop, rs.v6Drop = true, true
				}
			}
			chain = ""
		}
	}
}

// parseIptablesS reads "iptables -S" output ("-P INPUT DROP", "-N chain",
// "-A INPUT …"), adds the chain names to chains, and reports whether INPUT
// drops by default: by policy, or by an unconditional last rule.
func parseIptablesS(b []byte, chains map[string]bool) bool {
	policyDrop := false
	lastRule := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[0] == "-P" && f[1] == "INPUT":
			policyDrop = f[2] == "DROP"
		case len(f) >= 2 && f[0] == "-N":
			chains[f[1]] = true
		case len(f) >= 2 && f[0] == "-A" && f[1] == "INPUT":
			lastRule = strings.Join(f[2:], " ")
		}
	}
	return policyDrop || lastRule == "-j DROP" || lastRule == "-j REJECT" || strings.HasPrefix(lastRule, "-j REJECT --reject-with ")
}
