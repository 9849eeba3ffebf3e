package signals

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/testing/protocmp"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const (
	iptablesLine  = "iptables -S"
	ip6tablesLine = "ip6tables -S"
	// ifInet6 is one /proc/net/if_inet6 line: IPv6 is active.
	ifInet6 = "00000000000000000000000000000001 01 80 10 80       lo\n"
)

// Rulesets as the kernel sends them over netlink, built by hand with what
// the firewall decision reads of the captures in testdata/firewall (tables,
// chain names, input hooks, policies, last rules). TestNftablesKernel loads
// each capture into a kernel and checks that it reads the same.
func nftBase(family nftables.TableFamily, table, name string, policy nftables.ChainPolicy, last ...expr.Any) nftChain {
	return nftChain{Chain: &nftables.Chain{Name: name, Table: &nftables.Table{Name: table, Family: family},
		Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Policy: &policy}, lastRule: last}
}

func nftRegular(family nftables.TableFamily, table, name string) nftChain {
	return nftChain{Chain: &nftables.Chain{Name: name, Table: &nftables.Table{Name: table, Family: family}}}
}

var (
	ipv4, ipv6, inet = nftables.TableFamilyIPv4, nftables.TableFamilyIPv6, nftables.TableFamilyINet
	drop, accept     = nftables.ChainPolicyDrop, nftables.ChainPolicyAccept
	jump             = func(to string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: to} }
	counter          = &expr.Counter{}
)

// nftRulesets are the captures, by file name.
var nftRulesets = map[string][]nftChain{
	"nft-ufw-active.stdout.txt": {
		nftBase(ipv4, "filter", "INPUT", drop), nftRegular(ipv4, "filter", "ufw-user-input"),
		nftBase(ipv6, "filter", "INPUT", drop), nftRegular(ipv6, "filter", "ufw6-user-input"),
	},
	"nft-ufw-disabled.stdout.txt": {
		nftBase(ipv4, "filter", "INPUT", accept, counter, jump("ufw-track-input")), nftRegular(ipv4, "filter", "ufw-before-input"),
		nftBase(ipv6, "filter", "INPUT", accept, counter, jump("ufw6-track-input")), nftRegular(ipv6, "filter", "ufw6-before-input"),
	},
	"nft-inet-drop.stdout.txt": {nftBase(inet, "filter", "input", drop)},
	"nft-ip-reject-only.stdout.txt": {
		nftBase(ipv4, "filter", "input", accept, counter, &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}),
	},
	"nft-firewalld.stdout.txt": {
		nftBase(inet, "firewalld", "filter_INPUT", accept, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: 3}),
		nftRegular(inet, "firewalld", "filter_INPUT_ZONES"),
	},
	"nft-empty.stdout.txt": nil,
}

func TestFirewall(t *testing.T) {
	ok := func(reason string) *posturev1.SignalMeta { return metaAt(testTime, posturev1.Status_STATUS_OK, reason) }
	on := func(product string) *posturev1.Firewall {
		return &posturev1.Firewall{Meta: ok(""), Enabled: true, Product: product}
	}
	ipv6Up := map[string]string{"proc/net/if_inet6": ifInet6}
	with := func(base map[string]string, extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	ufwEnabled := map[string]string{"usr/sbin/ufw": "", "etc/ufw/ufw.conf": "@testdata/firewall/ufw.conf-enabled"}
	ufwDisabled := map[string]string{"usr/sbin/ufw": "", "etc/ufw/ufw.conf": "@testdata/firewall/ufw.conf-disabled"}
	iptables := map[string]string{"usr/sbin/iptables": "", "usr/sbin/ip6tables": ""}
	firewalld := map[string]string{"usr/sbin/firewalld": ""}
	const (
		publicZone  = "firewall/busctl-firewalld-default-zone-public.stdout.txt"
		trustedZone = "firewall/busctl-firewalld-default-zone-trusted.stdout.txt"
	)
	// The errors the kernel answers over netlink without CAP_NET_ADMIN,
	// and without nf_tables, as the netlink package reports them
	// (TestNftablesNeedsRoot reads the first from a kernel).
	notRoot := fmt.Errorf("netlink receive: %w", unix.EPERM)
	noNftables := fmt.Errorf("netlink receive: %w", unix.EOPNOTSUPP)

	tests := []struct {
		name       string
		files      map[string]string
		nft        string // the capture in nftRulesets the kernel holds
		nftErr     error  // or what the kernel answers
		firewalld  string // the capture of firewalld's default zone it answers on the bus; "" for none
		bus        bool   // a system bus runs (always when firewalld is set)
		recordings map[string]recorded
		want       *posturev1.Firewall
	}{
		{
			name:  "ufw active",
			files: with(ipv6Up, ufwEnabled),
			nft:   "nft-ufw-active.stdout.txt",
			want:  on("ufw"),
		},
		{
			name:  "ufw installed but disabled",
			files: with(with(ipv6Up, ufwDisabled), iptables),
			nft:   "nft-ufw-disabled.stdout.txt",
			want:  &posturev1.Firewall{Meta: ok(""), Detail: "no nftables input chain drops inbound traffic by default; ufw is installed but disabled (ufw enable)"},
		},
		{
			name:  "ufw enabled in its configuration but not loaded",
			files: with(ipv6Up, ufwEnabled),
			nft:   "nft-empty.stdout.txt",
			want: &posturev1.Firewall{Meta: ok(""), Detail: "no nftables input chain drops inbound traffic by default; " +
				"ufw is enabled in /etc/ufw/ufw.conf but its rules are not loaded (ufw enable)"},
		},
		{
			name:  "nftables inet table with policy drop",
			files: ipv6Up,
			nft:   "nft-inet-drop.stdout.txt",
			want:  on("nftables"),
		},
		{
			name: "IPv4 table ending in reject, IPv6 off",
			nft:  "nft-ip-reject-only.stdout.txt",
			want: on("nftables"),
		},
		{
			name:  "IPv4 table ending in reject, IPv6 on",
			files: ipv6Up,
			nft:   "nft-ip-reject-only.stdout.txt",
			want:  &posturev1.Firewall{Meta: ok(""), Detail: "nftables drops inbound IPv4 by default but accepts IPv6"},
		},
		{
			name:  "empty ruleset",
			files: ipv6Up,
			nft:   "nft-empty.stdout.txt",
			want:  &posturev1.Firewall{Meta: ok(""), Detail: "no nftables input chain drops inbound traffic by default"},
		},
		{
			name:  "firewalld's ruleset without firewalld installed",
			files: ipv6Up,
			nft:   "nft-firewalld.stdout.txt",
			want:  on("firewalld"),
		},
		{
			name:      "firewalld running",
			files:     with(ipv6Up, firewalld),
			nft:       "nft-firewalld.stdout.txt",
			firewalld: publicZone,
			want:      on("firewalld"),
		},
		{
			name:      "firewalld running with the trusted zone",
			files:     with(ipv6Up, firewalld),
			nft:       "nft-firewalld.stdout.txt",
			firewalld: trustedZone,
			want: &posturev1.Firewall{Product: "firewalld", Meta: ok(""),
				Detail: "firewalld runs with the default zone trusted, which accepts all inbound traffic (firewall-cmd --set-default-zone=public)"},
		},
		{
			name:  "firewalld stopped",
			files: with(ipv6Up, firewalld),
			nft:   "nft-empty.stdout.txt",
			want: &posturev1.Firewall{Meta: ok(""), Detail: "firewalld is installed but its rules are not loaded (systemctl enable --now firewalld); " +
				"no nftables input chain drops inbound traffic by default"},
		},
		{
			name:      "not root, firewalld answers",
			files:     with(ipv6Up, firewalld),
			nftErr:    notRoot,
			firewalld: publicZone,
			want:      on("firewalld"),
		},
		{
			name:   "not root, firewalld stopped",
			files:  with(ipv6Up, firewalld),
			nftErr: notRoot,
			bus:    true,
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs root to read the nftables ruleset (netlink: operation not permitted)")},
		},
		{
			name:  "firewalld's rules without a system bus",
			files: with(ipv6Up, firewalld),
			nft:   "nft-firewalld.stdout.txt",
			want:  on("firewalld"),
		},
		{
			name:   "not root",
			files:  with(ipv6Up, ufwEnabled),
			nftErr: notRoot,
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs root to read the nftables ruleset (netlink: operation not permitted); "+
					"ufw is enabled in /etc/ufw/ufw.conf, but whether its rules are loaded cannot be checked without root")},
		},
		{
			name:  "nftables plus legacy iptables tables",
			files: with(with(ipv6Up, iptables), map[string]string{"proc/net/ip_tables_names": "filter\n"}),
			nft:   "nft-empty.stdout.txt",
			recordings: map[string]recorded{
				iptablesLine:  {stdout: "firewall/iptables-v4-drop.stdout.txt"},
				ip6tablesLine: {stdout: "firewall/ip6tables-accept.stdout.txt"},
			},
			want: &posturev1.Firewall{Meta: ok(""), Detail: "iptables drops inbound IPv4 by default but accepts IPv6"},
		},
		{
			name:   "iptables only, IPv4 drop",
			files:  with(iptables, ipv6Up),
			nftErr: noNftables,
			recordings: map[string]recorded{
				iptablesLine:  {stdout: "firewall/iptables-v4-drop.stdout.txt"},
				ip6tablesLine: {stdout: "firewall/ip6tables-accept.stdout.txt"},
			},
			want: &posturev1.Firewall{Meta: ok(""), Detail: "iptables drops inbound IPv4 by default but accepts IPv6"},
		},
		{
			name:   "iptables with ufw active",
			files:  with(iptables, with(ufwEnabled, ipv6Up)),
			nftErr: noNftables,
			recordings: map[string]recorded{
				iptablesLine:  {stdout: "firewall/iptables-ufw-active.stdout.txt"},
				ip6tablesLine: {stdout: "firewall/ip6tables-ufw-active.stdout.txt"},
			},
			want: on("ufw"),
		},
		{
			name:       "iptables, not root",
			files:      iptables,
			nftErr:     noNftables,
			recordings: map[string]recorded{iptablesLine: {stderr: "firewall/iptables-nonroot.stderr.txt", exitCode: 4}},
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs root to read the nftables ruleset (iptables -S: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root))")},
		},
		{
			name:   "no packet filter to read",
			nftErr: noNftables,
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"the kernel has no nftables (netlink receive: operation not supported) and iptables is not installed, so the packet filter cannot be read")},
		},
		{
			name:   "netlink fails otherwise",
			nftErr: fmt.Errorf("netlink receive: %w", unix.ENOBUFS),
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_ERROR,
				"read the nftables ruleset over netlink: netlink receive: no buffer space available")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			busAddr := "unix:path=/nonexistent/system_bus_socket"
			if tt.bus || tt.firewalld != "" {
				bus := startTestBus(t)
				if tt.firewalld != "" {
					bus.serveFirewalld(tt.firewalld)
				}
				busAddr = bus.addr
			}
			c := New(Options{Root: fakeRoot(t, tt.files), Runner: newFakeRunner(t, tt.recordings), Now: fixedNow, SystemBus: busAddr})
			chains, err := nftRulesets[tt.nft], tt.nftErr
			c.sys.nftables = func() ([]nftChain, error) { return chains, err }
			got := c.firewall(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("firewall (-want +got):\n%s", diff)
			}
		})
	}
}

// firewalld that is not running is told apart by the bus's answer, which
// the test bus gives in the words busctl printed for a real one.
func TestFirewalldNotRunning(t *testing.T) {
	bus := startTestBus(t)
	c := New(Options{Root: t.TempDir(), Now: fixedNow, SystemBus: bus.addr})
	var zone string
	err := c.busCall(context.Background(), firewalldService, firewalldPath, firewalldService+".getDefaultZone", []any{&zone})
	captured := strings.TrimPrefix(strings.TrimSpace(fixtureText(t, "firewall/busctl-firewalld-not-running.stderr.txt")), "Call failed: ")
	if !serviceMissing(err) || !strings.Contains(err.Error(), captured) {
		t.Errorf("getDefaultZone without firewalld: %v; want ServiceUnknown saying %q", err, captured)
	}
	if got := c.firewalldState(context.Background()); got.running || !strings.Contains(got.note, "not running") {
		t.Errorf("firewalldState = %+v, want not running", got)
	}
}

// judgeNftables reads the captures, as built by hand in nftRulesets.
func TestJudgeNftables(t *testing.T) {
	for _, tt := range nftVerdicts {
		t.Run(tt.file, func(t *testing.T) { checkVerdict(t, nftRulesets[tt.file], tt) })
	}
}

// nftVerdict is what the firewall must read from a capture.
type nftVerdict struct {
	file           string
	v4Drop, v6Drop bool
	chain, table   string // one chain and table that must be seen
}

var nftVerdicts = []nftVerdict{
	{"nft-ufw-active.stdout.txt", true, true, "ufw-user-input", "ip6 filter"},
	{"nft-ufw-disabled.stdout.txt", false, false, "ufw-before-input", "ip filter"},
	{"nft-inet-drop.stdout.txt", true, true, "input", "inet filter"},
	{"nft-ip-reject-only.stdout.txt", true, false, "input", "ip filter"},
	{"nft-firewalld.stdout.txt", true, true, "filter_INPUT", "inet firewalld"},
	{"nft-empty.stdout.txt", false, false, "", ""},
}

func checkVerdict(t *testing.T, chains []nftChain, want nftVerdict) {
	t.Helper()
	rs := ruleset{chains: map[string]bool{}, tables: map[string]bool{}}
	judgeNftables(chains, &rs)
	if rs.v4Drop != want.v4Drop || rs.v6Drop != want.v6Drop {
		t.Errorf("v4Drop, v6Drop = %v, %v; want %v, %v", rs.v4Drop, rs.v6Drop, want.v4Drop, want.v6Drop)
	}
	if want.chain != "" && !rs.chains[want.chain] {
		t.Errorf("chain %q not seen in %v", want.chain, rs.chains)
	}
	if want.table != "" && !rs.tables[want.table] {
		t.Errorf("table %q not seen in %v", want.table, rs.tables)
	}
}

func TestDropsEverything(t *testing.T) {
	tests := []struct {
		name string
		rule []expr.Any
		want bool
	}{
		{"drop", []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}, true},
		{"counter reject", []expr.Any{counter, &expr.Reject{}}, true},
		{"log then drop", []expr.Any{&expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte("denied: ")}, &expr.Verdict{Kind: expr.VerdictDrop}}, true},
		{"accept", []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}, false},
		{"jump", []expr.Any{counter, jump("filter_INPUT_ZONES")}, false},
		{"a match before drop", []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Register: 1, Data: []byte{6}}, &expr.Verdict{Kind: expr.VerdictDrop}}, false},
		{"no rule", nil, false},
	}
	for _, tt := range tests {
		if got := dropsEverything(tt.rule); got != tt.want {
			t.Errorf("dropsEverything(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseIptablesS(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"-P INPUT DROP\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n", true},
		{"-P INPUT ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -j REJECT --reject-with icmp-host-prohibited\n", true},
		{"-P INPUT ACCEPT\n-A INPUT -j DROP\n-A INPUT -p tcp --dport 22 -j ACCEPT\n", false},
		{"-P INPUT ACCEPT\n-A INPUT -p tcp -j DROP\n", false},
	}
	for _, tt := range tests {
		if got := parseIptablesS([]byte(tt.in), map[string]bool{}); got != tt.want {
			t.Errorf("parseIptablesS(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
