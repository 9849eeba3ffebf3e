package signals

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Linux has several firewall front ends (ufw, firewalld) over one kernel
// packet filter. The kernel's ruleset decides: inbound traffic is filtered
// when an input hook drops by default, for IPv4 and (where it is enabled)
// IPv6. The ruleset is read over netlink with github.com/google/nftables,
// which needs CAP_NET_ADMIN, as nft does; running nft and reading its text
// cost most of a cycle's CPU. The front ends only name the product, and
// firewalld's trusted zone, which accepts everything through a ruleset that
// looks filtering, has to be asked for, over D-Bus. The front ends' own
// status commands are Python programs costing 100–200 ms of CPU, so they
// are not run: ufw is read from its configuration and the ruleset.

// firewalld's D-Bus API (firewalld.dbus(5)).
const (
	firewalldService = "org.fedoraproject.FirewallD1"
	firewalldPath    = "/org/fedoraproject/FirewallD1"
)

func (c *Collector) firewall(ctx context.Context) *posturev1.Firewall {
	var notes []string
	rs := c.readRuleset(ctx)

	// firewalld is asked only when its rules are loaded (its table, or its
	// iptables chains) or the ruleset is unreadable: a stopped firewalld
	// removes its rules.
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
			"the kernel has no nftables ("+rs.nftMissing+") and iptables is not installed, so the packet filter cannot be read")}
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
	note    string // why it is not running, for the detail of a disabled firewall
}

// firewalldState asks firewalld for its default zone: an answer means it
// runs. getDefaultZone needs no privilege. firewalld cannot run without
// the system bus, so a machine without one has it stopped.
func (c *Collector) firewalldState(ctx context.Context) firewalldStatus {
	var zone string
	err := c.busCall(ctx, firewalldService, firewalldPath, firewalldService+".getDefaultZone", []any{&zone})
	switch {
	case err == nil:
		return firewalldStatus{running: true, zone: zone}
	case errors.Is(err, errNoSystemBus), serviceMissing(err):
		return firewalldStatus{note: "firewalld is installed but not running (systemctl enable --now firewalld)"}
	}
	return firewalldStatus{note: fmt.Sprintf("cannot ask firewalld for its state: %v", err)}
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
	nftMissing     string          // why the kernel has no nftables to read
	err            string
}

// readRuleset reads the nftables ruleset, and with iptables the tables of
// the legacy iptables backend when the kernel has them loaded (their rules
// are not part of the nftables ruleset, while iptables-nft rules are), or
// when the kernel has no nftables.
func (c *Collector) readRuleset(ctx context.Context) ruleset {
	rs := ruleset{chains: map[string]bool{}, tables: map[string]bool{}}
	chains, err := c.sys.nftables()
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		rs.needsRoot = "netlink: " + unix.EPERM.Error()
		return rs
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.ENOENT):
		rs.nftMissing = err.Error()
	case err != nil:
		rs.err = fmt.Sprintf("read the nftables ruleset over netlink: %v", err)
		return rs
	default:
		rs.source = "nftables"
		judgeNftables(chains, &rs)
		if (rs.v4Drop && rs.v6Drop) || !c.legacyTablesLoaded() {
			return rs
		}
	}
	// iptables has no library to read legacy tables with (their binary
	// getsockopt format is private to iptables), so its text is read.
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

// nftChain is one chain of the kernel's nftables ruleset. For a base chain
// on the input hook whose policy accepts, lastRule holds the expressions of
// its last rule, which may drop whatever reaches it.
type nftChain struct {
	*nftables.Chain
	lastRule []expr.Any
}

// readNftables reads the chains of the running kernel's ruleset.
func readNftables() ([]nftChain, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, err
	}
	return readNftablesFrom(conn)
}

// readNftablesFrom reads every chain in one netlink dump, and the rules of
// the few base chains whose last rule matters.
func readNftablesFrom(conn *nftables.Conn) ([]nftChain, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, err
	}
	out := make([]nftChain, 0, len(chains))
	for _, ch := range chains {
		c := nftChain{Chain: ch}
		if filtersInput(ch) && (ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop) {
			rules, err := conn.GetRules(ch.Table, ch)
			if err != nil {
				return nil, err
			}
			if len(rules) > 0 {
				c.lastRule = rules[len(rules)-1].Exprs
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// filtersInput reports a base chain on the input hook of an IP family: a
// packet must pass every one of them.
func filtersInput(ch *nftables.Chain) bool {
	if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookInput || ch.Table == nil {
		return false
	}
	switch ch.Table.Family {
	case nftables.TableFamilyIPv4, nftables.TableFamilyIPv6, nftables.TableFamilyINet:
		return true
	}
	return false
}

// tableFamilies are the names nft gives the table families.
var tableFamilies = map[nftables.TableFamily]string{
	nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
	nftables.TableFamilyARP: "arp", nftables.TableFamilyBridge: "bridge", nftables.TableFamilyNetdev: "netdev",
}

// judgeNftables reads which tables and chains exist and whether the input
// hook drops IPv4 and IPv6 by default: one base chain that does, by its
// policy or by an unconditional last rule, is enough; an inet table covers
// both.
func judgeNftables(chains []nftChain, rs *ruleset) {
	for _, ch := range chains {
		rs.chains[ch.Name] = true
		if ch.Table != nil {
			rs.tables[tableFamilies[ch.Table.Family]+" "+ch.Table.Name] = true
		}
		if !filtersInput(ch.Chain) {
			continue
		}
		if !(ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop) && !dropsEverything(ch.lastRule) {
			continue
		}
		switch ch.Table.Family {
		case nftables.TableFamilyIPv4:
			rs.v4Drop = true
		case nftables.TableFamilyIPv6:
			rs.v6Drop = true
		case nftables.TableFamilyINet:
			rs.v4Drop, rs.v6Drop = true, true
		}
	}
}

// dropsEverything reports a rule that drops or rejects whatever reaches
// it: nothing but counting and logging before a drop or reject verdict
// (firewalld ends filter_INPUT that way, with a policy that accepts).
func dropsEverything(rule []expr.Any) bool {
	if len(rule) == 0 {
		return false
	}
	for _, e := range rule[:len(rule)-1] {
		switch e.(type) {
		case *expr.Counter, *expr.Log:
		default:
			return false
		}
	}
	switch v := rule[len(rule)-1].(type) {
	case *expr.Reject:
		return true
	case *expr.Verdict:
		return v.Kind == expr.VerdictDrop
	}
	return false
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

// permissionDenied recognizes the errors iptables prints without
// CAP_NET_ADMIN: "Operation not permitted (you must be root)",
// "Permission denied (you must be root)".
func permissionDenied(stderr []byte) bool {
	s := string(stderr)
	return strings.Contains(s, "you must be root") || strings.Contains(s, "Operation not permitted") ||
		strings.Contains(s, "Permission denied")
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
