package signals

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

const (
	nftLine       = "nft list ruleset"
	iptablesLine  = "iptables -S"
	ip6tablesLine = "ip6tables -S"
	busctlLine    = "busctl call org.fedoraproject.FirewallD1 /org/fedoraproject/FirewallD1 org.fedoraproject.FirewallD1 getDefaultZone"
	fwCmdLine     = "firewall-cmd --state"
	// ifInet6 is one /proc/net/if_inet6 line: IPv6 is active.
	ifInet6 = "00000000000000000000000000000001 01 80 10 80       lo\n"
)

func TestFirewall(t *testing.T) {
	ok := func(reason string) *posturev1.SignalMeta { return metaAt(testTime, posturev1.Status_STATUS_OK, reason) }
	on := func(product string) *posturev1.Firewall {
		return &posturev1.Firewall{Meta: ok(""), Enabled: true, Product: product}
	}
	nft := map[string]string{"usr/sbin/nft": "", "proc/net/if_inet6": ifInet6}
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
	firewalld := map[string]string{"usr/sbin/firewalld": "", "usr/bin/busctl": ""}

	tests := []struct {
		name       string
		files      map[string]string
		recordings map[string]recorded
		want       *posturev1.Firewall
	}{
		{
			name:  "ufw active",
			files: with(nft, ufwEnabled),
			recordings: map[string]recorded{
				nftLine: {stdout: "firewall/nft-ufw-active.stdout.txt", stderr: "firewall/nft-ufw-active.stderr.txt"},
			},
			want: on("ufw"),
		},
		{
			name:  "ufw installed but disabled",
			files: with(with(nft, ufwDisabled), iptables),
			recordings: map[string]recorded{
				nftLine:       {stdout: "firewall/nft-ufw-disabled.stdout.txt"},
				iptablesLine:  {stdout: "firewall/iptables-ufw-disabled.stdout.txt"},
				ip6tablesLine: {stdout: "firewall/ip6tables-empty.stdout.txt"},
			},
			want: &posturev1.Firewall{Meta: ok(""), Detail: "no nftables input chain drops inbound traffic by default; ufw is installed but disabled (ufw enable)"},
		},
		{
			name:  "ufw enabled in its configuration but not loaded",
			files: with(nft, ufwEnabled),
			recordings: map[string]recorded{
				nftLine: {stdout: "firewall/nft-empty.stdout.txt"},
			},
			want: &posturev1.Firewall{Meta: ok(""), Detail: "no nftables input chain drops inbound traffic by default; " +
				"ufw is enabled in /etc/ufw/ufw.conf but its rules are not loaded (ufw enable)"},
		},
		{
			name:       "nftables inet table with policy drop",
			files:      nft,
			recordings: map[string]recorded{nftLine: {stdout: "firewall/nft-inet-drop.stdout.txt"}},
			want:       on("nftables"),
		},
		{
			name:       "IPv4 table ending in reject, IPv6 off",
			files:      map[string]string{"usr/sbin/nft": ""},
			recordings: map[string]recorded{nftLine: {stdout: "firewall/nft-ip-reject-only.stdout.txt"}},
			want:       on("nftables"),
		},
		{
			name:       "IPv4 table ending in reject, IPv6 on",
			files:      nft,
			recordings: map[string]recorded{nftLine: {stdout: "firewall/nft-ip-reject-only.stdout.txt"}},
			want:       &posturev1.Firewall{Meta: ok(""), Detail: "nftables drops inbound IPv4 by default but accepts IPv6"},
		},
		{
			name:       "empty ruleset",
			files:      nft,
			recordings: map[string]recorded{nftLine: {stdout: "firewall/nft-empty.stdout.txt"}},
			want:       &posturev1.Firewall{Meta: ok(""), Detail: "no nftables input chain drops inbound traffic by default"},
		},
		{
			name:       "firewalld's ruleset without firewalld installed",
			files:      nft,
			recordings: map[string]recorded{nftLine: {stdout: "firewall/nft-firewalld.stdout.txt"}},
			want:       on("firewalld"),
		},
		{
			name:  "firewalld running",
			files: with(nft, firewalld),
			recordings: map[string]recorded{
				nftLine:    {stdout: "firewall/nft-firewalld.stdout.txt"},
				busctlLine: {stdout: "firewall/busctl-firewalld-default-zone-public.stdout.txt"},
			},
			want: on("firewalld"),
		},
		{
			name:  "firewalld running with the trusted zone",
			files: with(nft, firewalld),
			recordings: map[string]recorded{
				nftLine:    {stdout: "firewall/nft-firewalld.stdout.txt"},
				busctlLine: {stdout: "firewall/busctl-firewalld-default-zone-trusted.stdout.txt"},
			},
			want: &posturev1.Firewall{Product: "firewalld", Meta: ok(""), Detail: "firewalld runs with the default zone trusted, which accepts all inbound traffic (firewall-cmd --set-default-zone=public)"},
		},
		{
			name:       "firewalld stopped",
			files:      with(nft, firewalld),
			recordings: map[string]recorded{nftLine: {stdout: "firewall/nft-empty.stdout.txt"}},
			want: &posturev1.Firewall{Meta: ok(""), Detail: "firewalld is installed but its rules are not loaded (systemctl enable --now firewalld); " +
				"no nftables input chain drops inbound traffic by default"},
		},
		{
			name:  "not root, firewalld answers",
			files: with(nft, firewalld),
			recordings: map[string]recorded{
				nftLine:    {stderr: "firewall/nft-nonroot.stderr.txt", exitCode: 1},
				busctlLine: {stdout: "firewall/busctl-firewalld-default-zone-public.stdout.txt"},
			},
			want: on("firewalld"),
		},
		{
			name:  "not root, firewalld stopped",
			files: with(nft, firewalld),
			recordings: map[string]recorded{
				nftLine:    {stderr: "firewall/nft-nonroot.stderr.txt", exitCode: 1},
				busctlLine: {stderr: "firewall/busctl-firewalld-not-running.stderr.txt", exitCode: 1},
			},
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs root to read the nftables ruleset (nft list ruleset: Operation not permitted (you must be root))")},
		},
		{
			name:  "firewalld's rules without a system bus",
			files: with(nft, firewalld),
			recordings: map[string]recorded{
				busctlLine: {stderr: "firewall/busctl-nobus.stderr.txt", exitCode: 1},
				nftLine:    {stdout: "firewall/nft-firewalld.stdout.txt"},
			},
			want: on("firewalld"),
		},
		{
			name:  "firewalld without busctl",
			files: with(nft, map[string]string{"usr/sbin/firewalld": ""}),
			recordings: map[string]recorded{
				nftLine:   {stdout: "firewall/nft-firewalld.stdout.txt"},
				fwCmdLine: {stdout: "firewall/firewall-cmd-state-running.stdout.txt"},
			},
			want: on("firewalld"),
		},
		{
			name:  "firewalld without busctl, stopped",
			files: with(nft, map[string]string{"usr/sbin/firewalld": ""}),
			recordings: map[string]recorded{
				fwCmdLine: {stderr: "firewall/firewall-cmd-state-not-running.stderr.txt", exitCode: 252},
				nftLine:   {stdout: "firewall/nft-inet-drop.stdout.txt"},
			},
			want: on("nftables"),
		},
		{
			name:       "not root",
			files:      with(nft, ufwEnabled),
			recordings: map[string]recorded{nftLine: {stderr: "firewall/nft-nonroot.stderr.txt", exitCode: 1}},
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs root to read the nftables ruleset (nft list ruleset: Operation not permitted (you must be root)); "+
					"ufw is enabled in /etc/ufw/ufw.conf, but whether its rules are loaded cannot be checked without root")},
		},
		{
			name:  "nftables plus legacy iptables tables",
			files: with(with(nft, iptables), map[string]string{"proc/net/ip_tables_names": "filter\n"}),
			recordings: map[string]recorded{
				nftLine:       {stdout: "firewall/nft-empty.stdout.txt"},
				iptablesLine:  {stdout: "firewall/iptables-v4-drop.stdout.txt"},
				ip6tablesLine: {stdout: "firewall/ip6tables-accept.stdout.txt"},
			},
			want: &posturev1.Firewall{Meta: ok(""), Detail: "iptables drops inbound IPv4 by default but accepts IPv6"},
		},
		{
			name:  "iptables only, IPv4 drop",
			files: with(iptables, map[string]string{"proc/net/if_inet6": ifInet6}),
			recordings: map[string]recorded{
				iptablesLine:  {stdout: "firewall/iptables-v4-drop.stdout.txt"},
				ip6tablesLine: {stdout: "firewall/ip6tables-accept.stdout.txt"},
			},
			want: &posturev1.Firewall{Meta: ok(""), Detail: "iptables drops inbound IPv4 by default but accepts IPv6"},
		},
		{
			name:  "iptables with ufw active",
			files: with(iptables, with(ufwEnabled, map[string]string{"proc/net/if_inet6": ifInet6})),
			recordings: map[string]recorded{
				iptablesLine:  {stdout: "firewall/iptables-ufw-active.stdout.txt"},
				ip6tablesLine: {stdout: "firewall/ip6tables-ufw-active.stdout.txt"},
			},
			want: on("ufw"),
		},
		{
			name:       "iptables, not root",
			files:      iptables,
			recordings: map[string]recorded{iptablesLine: {stderr: "firewall/iptables-nonroot.stderr.txt", exitCode: 4}},
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"needs root to read the nftables ruleset (iptables -S: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root))")},
		},
		{
			name: "no packet filter tools",
			want: &posturev1.Firewall{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"neither nft nor iptables is installed, so the kernel's packet filter cannot be read (install nftables)")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Options{Root: fakeRoot(t, tt.files), Runner: newFakeRunner(t, tt.recordings), Now: fixedNow})
			got := c.firewall(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("firewall (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseNftRuleset(t *testing.T) {
	tests := []struct {
		file           string
		v4Drop, v6Drop bool
		chain, table   string // one chain and table that must be seen
	}{
		{"nft-ufw-active.stdout.txt", true, true, "ufw-user-input", "ip6 filter"},
		{"nft-ufw-disabled.stdout.txt", false, false, "ufw-before-input", "ip filter"},
		{"nft-inet-drop.stdout.txt", true, true, "input", "inet filter"},
		{"nft-ip-reject-only.stdout.txt", true, false, "input", "ip filter"},
		{"nft-firewalld.stdout.txt", true, true, "filter_INPUT", "inet firewalld"},
		{"nft-empty.stdout.txt", false, false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "firewall", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			rs := ruleset{chains: map[string]bool{}, tables: map[string]bool{}}
			parseNftRuleset(b, &rs)
			if rs.v4Drop != tt.v4Drop || rs.v6Drop != tt.v6Drop {
				t.Errorf("v4Drop, v6Drop = %v, %v; want %v, %v", rs.v4Drop, rs.v6Drop, tt.v4Drop, tt.v6Drop)
			}
			if tt.chain != "" && !rs.chains[tt.chain] {
				t.Errorf("chain %q not seen in %v", tt.chain, rs.chains)
			}
			if tt.table != "" && !rs.tables[tt.table] {
				t.Errorf("table %q not seen in %v", tt.table, rs.tables)
			}
		})
	}
}

func TestUnconditionalDrop(t *testing.T) {
	tests := map[string]bool{
		"drop":                                  true,
		"reject":                                true,
		"counter packets 0 bytes 0 reject":      true,
		"reject with icmpx admin-prohibited":    true,
		`log prefix "denied: " level info drop`: true,
		"tcp dport 22 drop":                     false,
		"jump filter_INPUT_ZONES":               false,
		"ct state invalid drop":                 false,
		"":                                      false,
	}
	for rule, want := range tests {
		if got := unconditionalDrop.MatchString(rule); got != want {
			t.Errorf("unconditionalDrop(%q) = %v, want %v", rule, got, want)
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
