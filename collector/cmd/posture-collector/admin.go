package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/internal/cliflag"
	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// adminConn is a connection to the running collector's admin socket with a
// deadline for one command.
type adminConn struct {
	adm   posturev1.AdminServiceClient
	gw    posturev1.GatewayServiceClient
	ctx   context.Context
	close func()
}

// dialAdmin dials the collector running with dataDir.
func dialAdmin(dataDir string) (*adminConn, error) {
	conn, err := collector.DialAdmin(dataDir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	return &adminConn{
		adm: posturev1.NewAdminServiceClient(conn), gw: posturev1.NewGatewayServiceClient(conn), ctx: ctx,
		close: func() { cancel(); conn.Close() },
	}, nil
}

// rpcErr is the collector's answer to a failed call, shown inert: it may
// quote the device ID or level asked about.
func rpcErr(err error) error {
	if st, ok := status.FromError(err); ok {
		return errors.New(inert.String(st.Message()))
	}
	return err
}

// minPrefix is the shortest device ID prefix looked up, as git asks for
// at least four characters of a commit.
var minPrefix = 4

// maxCandidates is how many devices an ambiguous prefix error names.
const maxCandidates = 10

// errAmbiguous is a prefix more than one device ID starts with.
var errAmbiguous = errors.New("ambiguous device ID prefix")

// resolveDevice returns the device whose ID is id or, when no device has
// that ID, the one device whose ID starts with id (like an abbreviated git
// commit). found is false when no device matches; several matches are an
// error naming them.
func (a *adminConn) resolveDevice(id string) (p *posturev1.DevicePosture, found bool, err error) {
	p, err = a.adm.GetDevice(a.ctx, &posturev1.GetDeviceRequest{DeviceId: id})
	if err == nil {
		return p, true, nil
	}
	if status.Code(err) != codes.NotFound {
		return nil, false, rpcErr(err)
	}
	notFound := rpcErr(err)
	if len(id) < minPrefix {
		return nil, false, notFound
	}
	// ListDevices lists in ID order from after its page token (the last ID
	// of the page before, collector/api): the IDs that start with id are
	// the first ones after it.
	page, err := a.adm.ListDevices(a.ctx, &posturev1.ListDevicesRequest{PageToken: id, PageSize: maxCandidates + 1})
	if err != nil {
		return nil, false, rpcErr(err)
	}
	var matches []*posturev1.DevicePosture
	for _, d := range page.GetDevices() {
		if strings.HasPrefix(d.GetDevice().GetId(), id) {
			matches = append(matches, d)
		}
	}
	switch len(matches) {
	case 0:
		return nil, false, notFound
	case 1:
		// The full record, with the latest report (ListDevices leaves it out).
		p, err := a.adm.GetDevice(a.ctx, &posturev1.GetDeviceRequest{DeviceId: matches[0].GetDevice().GetId()})
		if err != nil {
			return nil, false, rpcErr(err)
		}
		return p, true, nil
	}
	var b strings.Builder
	for i, d := range matches {
		if i == maxCandidates {
			b.WriteString("\n  … and more")
			break
		}
		fmt.Fprintf(&b, "\n  %s  %s", d.GetDevice().GetId(), d.GetDevice().GetHostname())
	}
	return nil, false, fmt.Errorf("%w %q: it starts the IDs of several devices; give more of it:%s", errAmbiguous, id, b.String())
}

// deviceID is the full ID of the device an argument names: an ID or a
// unique prefix of one. An argument no device matches is returned as it
// is, for commands that answer about IDs not enrolled (check, decisions).
func (a *adminConn) deviceID(arg string) (string, error) {
	p, found, err := a.resolveDevice(arg)
	if errors.Is(err, errAmbiguous) {
		return "", err
	}
	if !found {
		return arg, nil
	}
	return p.GetDevice().GetId(), nil
}

// withAdmin runs f with a connection to the collector of dataDir.
func withAdmin(dataDir string, f func(*adminConn) error) error {
	a, err := dialAdmin(dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	return f(a)
}

func newTokenCommand() *cobra.Command {
	create := &cobra.Command{
		Use:   "create",
		Short: "Print a join token: collector address + CA fingerprint + secret",
		Args:  noArgs,
	}
	fs := create.Flags()
	dataDir := dataDirFlag(fs)
	ttl := cliflag.Duration(fs, "ttl", time.Hour, "how long the token is valid (a duration as 1h, or days as 7d)")
	uses := fs.Uint("uses", 1, "how many devices may enroll with it")
	desc := fs.String("description", "", "note kept with the token")
	create.RunE = func(cmd *cobra.Command, _ []string) error {
		if *uses == 0 {
			return usagef("--uses must be at least 1")
		}
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.CreateEnrollmentToken(a.ctx, &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(*ttl), Uses: uint32(*uses), Description: *desc})
			if err != nil {
				return rpcErr(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
			fmt.Fprintf(cmd.ErrOrStderr(), "valid until %s for %d enrollment(s); on the device run: posture-agent enroll --token TOKEN\n", resp.GetExpiresAt().AsTime().Local().Format(time.RFC3339), resp.GetUses())
			return nil
		})
	}
	return group("token", "Create enrollment tokens", create)
}

func newDevicesCommand() *cobra.Command {
	return group("devices", "List, show, revoke, approve, preregister devices and bind them to their users",
		devicesListCommand(), devicesShowCommand(), devicesRevokeCommand(), devicesApproveCommand(), devicesPreregisterCommand(),
		devicesBindCommand(), devicesUnbindCommand())
}

func devicesListCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every device: id, hostname, OS, state, score, levels met, identity, last seen",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp := &posturev1.ListDevicesResponse{}
			for token := ""; ; {
				page, err := a.adm.ListDevices(a.ctx, &posturev1.ListDevicesRequest{PageToken: token})
				if err != nil {
					return rpcErr(err)
				}
				resp.Devices = append(resp.Devices, page.GetDevices()...)
				if token = page.GetNextPageToken(); token == "" {
					break
				}
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, resp)
			}
			t := newTable(out, "ID", "HOSTNAME", "OS", "STATE", "SCORE", "LEVELS", "IDENTITY", "LAST SEEN")
			for _, d := range resp.GetDevices() {
				dev := d.GetDevice()
				var levels []string
				for _, l := range d.GetLevels() {
					if l.GetAllowed() {
						levels = append(levels, l.GetName())
					}
				}
				t.row(dev.GetId(), dev.GetHostname(), orDash(dev.GetOs()), stateName(dev.GetState()),
					d.GetScore(), orDash(strings.Join(levels, ",")), policy.AssuranceName(dev.GetAssurance()), ago(dev.GetLastSeen().AsTime(), dev.GetLastSeen() != nil))
			}
			return t.flush()
		})
	}
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func stateName(s posturev1.DeviceState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "DEVICE_STATE_"))
}

func outcomeName(o posturev1.Outcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_"))
}

func ago(t time.Time, set bool) string {
	if !set {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func devicesShowCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show every check with pass/fail/unknown, reason, evidence age and fix, and every level",
		Long:  "Show a device. ID is a device ID or a unique prefix of one.",
		Args:  exactArgs(1, "posture-collector devices show ID"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "text", "json")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			p, _, err := a.resolveDevice(args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, p)
			}
			return showDevice(out, p)
		})
	}
	return cmd
}

func showDevice(out io.Writer, p *posturev1.DevicePosture) error {
	d := p.GetDevice()
	inert.Fprintf(out, "Device     %s\nSPIFFE ID  %s\nHostname   %s\nOS         %s (%s)\nIdentity   %s\nState      %s", d.GetId(), d.GetSpiffeId(), d.GetHostname(), orDash(d.GetOs()), d.GetPlatform(), policy.AssuranceName(d.GetAssurance()), stateName(d.GetState()))
	if d.GetStateReason() != "" {
		inert.Fprintf(out, " (%s)", d.GetStateReason())
	}
	if u := d.GetUser(); u != nil {
		inert.Fprintf(out, "\nUser       %s", userText(u))
	}
	if d.GetEkSha256() != "" {
		inert.Fprintf(out, "\nTPM EK     sha256:%s (%d reboots seen)", d.GetEkSha256(), d.GetReboots())
		mb := p.GetMeasuredBoot()
		switch {
		case mb.GetSecureBootKnown():
			inert.Fprintf(out, "\nMeasured   secure boot %s (PCR 7, %d events replayed)", map[bool]string{true: "enabled", false: "disabled"}[mb.GetSecureBoot()], mb.GetEvents())
		case mb != nil:
			inert.Fprintf(out, "\nMeasured   unknown: %s", mb.GetReason())
		}
	}
	inert.Fprintf(out, "\nEnrolled   %s\nLast seen  %s (seq %d)\nScore      %d (raw %d)\n\n", d.GetEnrolledAt().AsTime().Local().Format(time.RFC3339), ago(d.GetLastSeen().AsTime(), d.GetLastSeen() != nil), d.GetLastSeq(), p.GetScore(), p.GetRawScore())
	checks := newTable(out, "CHECK", "RESULT", "WEIGHT", "AGE", "REASON", "FIX")
	for _, c := range p.GetChecks() {
		age := "-"
		if c.GetEvidenceAge() != nil {
			age = c.GetEvidenceAge().AsDuration().String()
		}
		checks.row(c.GetName(), outcomeName(c.GetOutcome()), c.GetWeight(), age, c.GetReason()+graceText(c), orDash(c.GetRemediation()))
	}
	checks.flush()
	fmt.Fprintln(out)
	levels := newTable(out, "LEVEL", "ALLOWED", "WHY NOT")
	for _, l := range p.GetLevels() {
		levels.row(l.GetName(), levelAllowed(l), orDash(strings.Join(append(l.GetReasons(), l.GetWarnings()...), "; ")))
	}
	return levels.flush()
}

func devicesRevokeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke ID --reason TEXT",
		Short: "Revoke a device: its streams close, its reports are refused, every level denies",
		Long:  "Revoke a device. ID is a device ID or a unique prefix of one.",
		Args:  exactArgs(1, "posture-collector devices revoke ID --reason TEXT"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	reason := cmd.Flags().String("reason", "", "why the device is revoked (required; shown in every later denial)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *reason == "" {
			return usagef("--reason is required: it is recorded and shown in every later denial")
		}
		return withAdmin(*dataDir, func(a *adminConn) error {
			p, _, err := a.resolveDevice(args[0])
			if err != nil {
				return err
			}
			resp, err := a.adm.RevokeDevice(a.ctx, &posturev1.RevokeDeviceRequest{DeviceId: p.GetDevice().GetId(), Reason: *reason})
			if err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "revoked %s (%s)\n", resp.GetDevice().GetId(), resp.GetDevice().GetStateReason())
			return nil
		})
	}
	return cmd
}

func devicesApproveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "approve ID",
		Short: "Approve a pending TPM device: pins its EK, makes it tpm_ek_pinned",
		Long:  "Approve a pending TPM device. ID is a device ID or a unique prefix of one.",
		Args:  exactArgs(1, "posture-collector devices approve ID"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			p, _, err := a.resolveDevice(args[0])
			if err != nil {
				return err
			}
			resp, err := a.adm.ApproveDevice(a.ctx, &posturev1.ApproveDeviceRequest{DeviceId: p.GetDevice().GetId()})
			if err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "approved %s: EK sha256:%s pinned, identity %s\n", resp.GetDevice().GetId(), resp.GetDevice().GetEkSha256(), policy.AssuranceName(resp.GetDevice().GetAssurance()))
			return nil
		})
	}
	return cmd
}

func devicesPreregisterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "preregister --ek-sha256 HEX[,HEX…]",
		Short: "Pin EK hashes in advance: those TPMs enroll as tpm_ek_pinned and active",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	hashes := cmd.Flags().String("ek-sha256", "", "comma-separated SHA-256 hashes (hex) of EK public keys in PKIX DER form (required)")
	desc := cmd.Flags().String("description", "", "note kept with the pins")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *hashes == "" {
			return usagef("--ek-sha256 is required")
		}
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.PreregisterEK(a.ctx, &posturev1.PreregisterEKRequest{EkSha256: strings.Split(*hashes, ","), Description: *desc})
			if err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "pinned %d new EK hash(es); devices enrolling with them are tpm_ek_pinned\n", resp.GetAdded())
			return nil
		})
	}
	return cmd
}

func newCheckCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check ID --level NAME",
		Short: "The decision a gateway gets; exit 0 allowed, 1 denied, 2 error",
		Long:  "Decide whether a device may have an access level, as a gateway asks. ID is a device ID or a unique prefix of one. Exit 0 allowed, 1 denied, 2 error.",
		Args:  exactArgs(1, "posture-collector check ID --level NAME"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	level := cmd.Flags().String("level", "", "access level to check (required)")
	format := cliflag.Output(cmd.Flags(), "text", "json")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *level == "" {
			return usagef("usage: posture-collector check ID --level NAME")
		}
		a, err := dialAdmin(*dataDir)
		if err != nil {
			return exitErr{exitUsage, err}
		}
		defer a.close()
		id, err := a.deviceID(args[0])
		if err != nil {
			return exitErr{exitUsage, err}
		}
		resp, err := a.gw.CheckAccess(a.ctx, &posturev1.CheckAccessRequest{DeviceId: id, AccessLevel: *level})
		if err != nil {
			return exitErr{exitUsage, rpcErr(err)}
		}
		out := cmd.OutOrStdout()
		if *format == "json" {
			if err := printJSON(out, resp); err != nil {
				return exitErr{exitUsage, err}
			}
		} else {
			verdict := "DENY"
			if resp.GetAllowed() {
				verdict = "ALLOW"
			}
			inert.Fprintf(out, "%s %s for level %s (score %d, identity %s, state %s%s)\n", verdict, resp.GetDeviceId(), resp.GetAccessLevel(), resp.GetScore(), policy.AssuranceName(resp.GetAssurance()), stateName(resp.GetState()), enforcementText(resp))
			for _, r := range resp.GetReasons() {
				inert.Fprintf(out, "  - %s\n", r)
			}
			for _, w := range resp.GetWarnings() {
				inert.Fprintf(out, "  ! %s\n", w)
			}
			for _, c := range resp.GetFailedChecks() {
				inert.Fprintf(out, "  * %s %s: %s%s; fix: %s\n", c.GetName(), outcomeName(c.GetOutcome()), c.GetReason(), graceText(c), orDash(c.GetRemediation()))
			}
		}
		if !resp.GetAllowed() {
			return exitErr{exitFailed, nil}
		}
		return nil
	}
	return cmd
}

func newGatewayCommand() *cobra.Command {
	return group("gateway", "Issue, list and revoke gateway certificates", gatewayAddCommand(), gatewayListCommand(), gatewayRevokeCommand())
}

func gatewayAddCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "add NAME --out DIR",
		Short: "Client certificate, key and CA bundle for a gateway (the key is made locally)",
		Args:  exactArgs(1, "posture-collector gateway add NAME --out DIR"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	outDir := cmd.Flags().String("out", "", "directory to write gateway.crt, gateway.key and ca.crt into (required)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *outDir == "" {
			return usagef("usage: posture-collector gateway add NAME --out DIR")
		}
		name := args[0]
		key, err := pki.NewKey()
		if err != nil {
			return err
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
		if err != nil {
			return err
		}
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.IssueGatewayCertificate(a.ctx, &posturev1.IssueGatewayCertificateRequest{Name: name, Csr: csr})
			if err != nil {
				return rpcErr(err)
			}
			cert, err := x509.ParseCertificate(resp.GetCertificate())
			if err != nil {
				return err
			}
			var cas []*x509.Certificate
			for _, der := range resp.GetCaCertificates() {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				cas = append(cas, c)
			}
			if err := os.MkdirAll(*outDir, 0o700); err != nil {
				return err
			}
			if err := pki.WritePrivateKey(filepath.Join(*outDir, "gateway.key"), key); err != nil {
				return err
			}
			if err := pki.WriteCertificates(filepath.Join(*outDir, "gateway.crt"), cert); err != nil {
				return err
			}
			if err := pki.WriteCertificates(filepath.Join(*outDir, "ca.crt"), cas...); err != nil {
				return err
			}
			inert.Fprintf(cmd.OutOrStdout(), "gateway %s: wrote gateway.crt, gateway.key and ca.crt to %s\n", resp.GetSpiffeId(), *outDir)
			return nil
		})
	}
	return cmd
}

func gatewayListCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "The gateway certificates issued: name, serial, issue and expiry dates, revocation and its reason",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.ListGateways(a.ctx, &posturev1.ListGatewaysRequest{})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, resp)
			}
			t := newTable(out, "NAME", "SERIAL", "ISSUED", "EXPIRES", "REVOKED")
			const day = "2006-01-02"
			for _, g := range resp.GetGateways() {
				issued, expires, revoked := "-", "-", "-"
				if g.GetIssuedAt() != nil {
					issued, expires = g.GetIssuedAt().AsTime().Local().Format(day), g.GetExpiresAt().AsTime().Local().Format(day)
				}
				if g.GetRevokedAt() != nil {
					revoked = g.GetRevokedAt().AsTime().Local().Format(day) + ": " + g.GetRevokeReason()
				}
				t.row(orDash(g.GetName()), g.GetSerial(), issued, expires, revoked)
			}
			return t.flush()
		})
	}
	return cmd
}

func gatewayRevokeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke NAME|--serial HEX --reason TEXT",
		Short: "Revoke every certificate of a gateway, or one by serial",
		Args:  cobra.ArbitraryArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	serial := cmd.Flags().String("serial", "", "revoke one certificate by its serial (hex), instead of every certificate of a name")
	reason := cmd.Flags().String("reason", "", "why (required; kept and told to the gateway)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if (len(args) == 1) == (*serial != "") || len(args) > 1 {
			return usagef("usage: posture-collector gateway revoke NAME --reason TEXT, or gateway revoke --serial HEX --reason TEXT")
		}
		if *reason == "" {
			return usagef("--reason is required: it is kept and told to the gateway")
		}
		req := &posturev1.RevokeGatewayRequest{Serial: *serial, Reason: *reason}
		if len(args) == 1 {
			req.Name = args[0]
		}
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.RevokeGateway(a.ctx, req)
			if err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "revoked %d gateway certificate(s)\n", resp.GetRevoked())
			return nil
		})
	}
	return cmd
}

func newStatsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Counters: reports accepted, rejections by reason, enrollments, renewals, refused RPCs",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			s, err := a.adm.GetStats(a.ctx, &posturev1.GetStatsRequest{})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, s)
			}
			t := newTable(out, "COUNTER", "REASON", "VALUE")
			t.row("devices", "-", s.GetDevices())
			t.row("streams_open", "-", s.GetStreamsOpen())
			t.row("reports_accepted", "-", s.GetReportsAccepted())
			byReason(t, "reports_rejected", s.GetReportsRejected())
			t.row("enrollments", "-", s.GetEnrollments())
			byReason(t, "enrollments_rejected", s.GetEnrollmentsRejected())
			t.row("certificates_renewed", "-", s.GetCertificatesRenewed())
			byReason(t, "renewals_rejected", s.GetRenewalsRejected())
			byReason(t, "rpc_denied", s.GetRpcDenied())
			return t.flush()
		})
	}
	return cmd
}

// byReason adds a counter kept by reason: one row per reason, or one row
// of 0 when nothing was counted.
func byReason(t *table, name string, m map[string]uint64) {
	if len(m) == 0 {
		t.row(name, "-", 0)
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.row(name, k, m[k])
	}
}

func newPolicyCommand() *cobra.Command {
	validate := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a policy file",
		Args:  exactArgs(1, "posture-collector policy validate FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			b, _ := json.Marshal(p.LevelNames())
			inert.Fprintf(cmd.OutOrStdout(), "%s: valid; %d checks, levels %s\n", args[0], len(p.Checks), string(b))
			return nil
		},
	}
	reload := &cobra.Command{
		Use:   "reload",
		Short: "Re-read --policy (also on SIGHUP), atomically; a bad file changes nothing",
		Args:  noArgs,
	}
	reloadDir := dataDirFlag(reload.Flags())
	reload.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*reloadDir, func(a *adminConn) error {
			resp, err := a.adm.ReloadPolicy(a.ctx, &posturev1.ReloadPolicyRequest{})
			if err != nil {
				return rpcErr(err)
			}
			inert.Fprintf(cmd.OutOrStdout(), "policy reloaded: %d checks, levels %s\n", resp.GetChecks(), strings.Join(resp.GetLevels(), ", "))
			return nil
		})
	}
	diff := &cobra.Command{
		Use:   "diff FILE",
		Short: "Dry run: which devices would gain or lose which level under FILE",
		Args:  exactArgs(1, "posture-collector policy diff FILE"),
	}
	diffDir := dataDirFlag(diff.Flags())
	limit := diff.Flags().Uint("limit", 1000, "list at most this many changes one by one (the counts per level cover all)")
	diff.RunE = func(cmd *cobra.Command, args []string) error {
		data, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		return withAdmin(*diffDir, func(a *adminConn) error {
			resp, err := a.adm.DiffPolicy(a.ctx, &posturev1.DiffPolicyRequest{PolicyYaml: data, Limit: uint32(*limit)})
			if err != nil {
				return rpcErr(err)
			}
			return printDiff(cmd.OutOrStdout(), resp)
		})
	}
	return group("policy", "Validate, compare and reload policy files", validate, diff, reload)
}

func printDiff(out io.Writer, resp *posturev1.DiffPolicyResponse) error {
	if resp.GetTotalChanges() == 0 {
		inert.Fprintf(out, "no change: all %d devices keep the same levels\n", resp.GetDevices())
		return nil
	}
	t := newTable(out, "DEVICE", "HOSTNAME", "LEVEL", "CHANGE", "WHY")
	for _, ch := range resp.GetChanges() {
		change, why := diffChange(ch)
		t.row(ch.GetDeviceId(), ch.GetHostname(), ch.GetLevel(), change, why)
	}
	t.flush()
	if n := resp.GetTotalChanges() - uint32(len(resp.GetChanges())); n > 0 {
		inert.Fprintf(out, "... and %d more change(s) not listed (--limit)\n", n)
	}
	for _, l := range resp.GetLevels() {
		inert.Fprintf(out, "level %s: %d device(s) gain it, %d lose it\n", l.GetLevel(), l.GetGained(), l.GetLost())
	}
	inert.Fprintf(out, "%d change(s) across %d devices; nothing is enforced until the policy is reloaded\n", resp.GetTotalChanges(), resp.GetDevices())
	return nil
}

func newDecisionsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "decisions [ID]",
		Short: "Access decisions with their reasons, failed checks and fixes, and who asked",
		Long:  "Access decisions with their reasons, the failed checks and their fixes, and who asked. ID is a device ID or a unique prefix of an enrolled one.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("usage: posture-collector decisions [ID] [--since 1h] [--at 10:42]")
			}
			return nil
		},
	}
	fs := cmd.Flags()
	dataDir := dataDirFlag(fs)
	since := cliflag.Duration(fs, "since", time.Hour, "how far back from --at (or now) to look (a duration as 1h, or days as 1d)")
	at := fs.String("at", "", "the decisions made up to this time: 10:42, 10:42:05 (today, local time), 2026-11-27 10:42 or RFC 3339")
	limit := fs.Uint("limit", 100, "at most this many decisions (1 to 10000)")
	format := cliflag.Output(fs, "table", "json")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *limit < 1 || *limit > 10000 {
			return usagef("--limit %d: give 1 to 10000", *limit)
		}
		end := time.Now()
		req := &posturev1.ListDecisionsRequest{Limit: uint32(*limit)}
		if *at != "" {
			var err error
			if end, err = parseAt(*at, time.Now()); err != nil {
				return usagef("--at: %w", err)
			}
			req.Until = timestamppb.New(end)
		}
		req.Since = timestamppb.New(end.Add(-*since))
		return withAdmin(*dataDir, func(a *adminConn) error {
			if len(args) == 1 {
				id, err := a.deviceID(args[0])
				if err != nil {
					return err
				}
				req.DeviceId = id
			}
			resp, err := a.adm.ListDecisions(a.ctx, req)
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, resp)
			}
			t := newTable(out, "TIME", "DEVICE", "LEVEL", "RESULT", "SCORE", "CALLER", "WHY")
			const stamp = "2006-01-02 15:04:05"
			for _, d := range resp.GetDecisions() {
				result := "deny"
				if d.GetAllowed() {
					result = "allow"
				}
				when := d.GetAt().AsTime().Local().Format(stamp)
				if d.GetCount() > 1 {
					when = fmt.Sprintf("%s (%d times since %s)", when, d.GetCount(), d.GetFirstAt().AsTime().Local().Format(stamp))
				}
				t.row(when, d.GetDeviceId(), d.GetAccessLevel(), result, d.GetScore(), d.GetCaller(), orDash(strings.Join(d.GetReasons(), "; ")))
				for _, c := range d.GetFailedChecks() {
					// Under WHY, in the table's columns, so its alignment holds.
					t.row("", "", "", "", "", "", fmt.Sprintf("* %s %s: %s; fix: %s", c.GetName(), outcomeName(c.GetOutcome()), c.GetReason(), orDash(c.GetRemediation())))
				}
			}
			return t.flush()
		})
	}
	return cmd
}

// parseAt reads --at: a time of day today (local), a local date and time,
// or RFC 3339.
func parseAt(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	for _, layout := range []string{"15:04:05", "15:04"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			y, m, d := now.In(time.Local).Date()
			return time.Date(y, m, d, t.Hour(), t.Minute(), t.Second(), 0, time.Local), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: give 10:42, 10:42:05, 2026-11-27 10:42 or RFC 3339", v)
}
