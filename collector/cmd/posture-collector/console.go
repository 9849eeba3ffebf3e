package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/console"
	"github.com/posture-project/posture/internal/cliflag"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// consoleFlags are run's flags for the admin console (docs/console.md);
// config turns them into the collector's ConsoleConfig.
type consoleFlags struct {
	listen, url, certFile, keyFile          string
	servingNames                            []string
	issuer, clientID, secretFile, roleClaim string
	scopes, adminValues, viewerValues       string
	ttl                                     *time.Duration
}

// addConsoleFlags declares the console's flags on run's flag set.
func addConsoleFlags(fs *pflag.FlagSet) *consoleFlags {
	f := &consoleFlags{}
	fs.StringVar(&f.listen, "console-listen", "", "serve the admin console at https://ADDR (off when empty)")
	fs.StringVar(&f.url, "console-url", "", "where browsers reach the console, https://HOST:PORT (default: the first --console-serving-name, or the listen address)")
	cliflag.Func(fs, "console-serving-name", "names", "", "host names, comma-separated, that the console's certificate from the collector CA carries", func(s string) error {
		names, err := parseServingNames(s)
		f.servingNames = names
		return err
	})
	fs.StringVar(&f.certFile, "console-tls-cert", "", "serve the console with this certificate (PEM) instead of one from the collector CA")
	fs.StringVar(&f.keyFile, "console-tls-key", "", "the key of --console-tls-cert (PEM)")
	fs.StringVar(&f.issuer, "console-oidc-issuer", "", "OpenID Connect issuer URL of the identity provider people sign in with")
	fs.StringVar(&f.clientID, "console-oidc-client-id", "", "the console's client ID at the identity provider")
	fs.StringVar(&f.secretFile, "console-oidc-client-secret-file", "", "file holding the console's client secret (mode 0600)")
	fs.StringVar(&f.scopes, "console-oidc-scopes", "email,profile", "scopes asked for besides openid, comma-separated (Okta needs groups for a groups claim)")
	fs.StringVar(&f.roleClaim, "console-role-claim", "groups", "the ID token claim holding a person's groups or roles (a dotted path: realm_access.roles)")
	fs.StringVar(&f.adminValues, "console-admin-values", "", "values of the role claim that make an admin, comma-separated")
	fs.StringVar(&f.viewerValues, "console-viewer-values", "", "values of the role claim that make a viewer, comma-separated (default: every person the provider signs in who is not an admin)")
	f.ttl = cliflag.Duration(fs, "console-session-ttl", console.DefaultSessionTTL, "how long a console session lasts from sign-in (5m to 7d)")
	return f
}

// config is the console's configuration the flags give: nil without
// --console-listen.
func (f *consoleFlags) config() (*collector.ConsoleConfig, error) {
	if f.listen == "" {
		if f.issuer != "" || f.certFile != "" || f.url != "" {
			return nil, errors.New("the console's flags need --console-listen ADDR")
		}
		return nil, nil
	}
	if *f.ttl < 5*time.Minute || *f.ttl > 7*24*time.Hour {
		return nil, fmt.Errorf("--console-session-ttl %v: give 5m to 168h", *f.ttl)
	}
	cc := &collector.ConsoleConfig{Listen: f.listen, URL: f.url, ServingNames: f.servingNames, CertFile: f.certFile, KeyFile: f.keyFile, SessionTTL: *f.ttl}
	if f.issuer == "" {
		if f.clientID != "" || f.secretFile != "" || f.adminValues != "" {
			return nil, errors.New("the identity provider's flags need --console-oidc-issuer URL")
		}
		return cc, nil
	}
	secret := ""
	if f.secretFile != "" {
		b, err := readSecretFile(f.secretFile)
		if err != nil {
			return nil, fmt.Errorf("--console-oidc-client-secret-file: %w", err)
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("--console-oidc-client-secret-file: %s is empty", f.secretFile)
		}
		secret = string(b)
	}
	cc.OIDC = &console.OIDC{Issuer: f.issuer, ClientID: f.clientID, ClientSecret: secret, Scopes: commaList(f.scopes), RoleClaim: f.roleClaim,
		AdminValues: commaList(f.adminValues), ViewerValues: commaList(f.viewerValues)}
	return cc, nil
}

// commaList splits a comma-separated flag, dropping empty entries.
func commaList(v string) []string {
	out := []string{}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// consoleClient dials the admin socket's console service.
func consoleClient(dataDir string) (posturev1.ConsoleServiceClient, context.Context, func(), error) {
	conn, err := collector.DialAdmin(dataDir)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	return posturev1.NewConsoleServiceClient(conn), ctx, func() { cancel(); conn.Close() }, nil
}

func newConsoleCommand() *cobra.Command {
	login := &cobra.Command{
		Use:   "login",
		Short: "Print a one-time admin sign-in link for the console (the first admin)",
		Long: `Print a one-time admin sign-in link for the console: the way in for the
first admin, before the identity provider is set up. The link opens one
session, once; treat it as a password.`,
		Args: noArgs,
	}
	fs := login.Flags()
	dataDir := dataDirFlag(fs)
	ttl := cliflag.Duration(fs, "ttl", 15*time.Minute, "how long the link may be used (1m to 24h); it opens one session, once")
	name := fs.String("name", "first admin", "who the session is for, as the console and the audit log show it")
	login.RunE = func(cmd *cobra.Command, _ []string) error {
		cl, ctx, done, err := consoleClient(*dataDir)
		if err != nil {
			return err
		}
		defer done()
		resp, err := cl.CreateSignInLink(ctx, &posturev1.CreateSignInLinkRequest{Ttl: durationpb.New(*ttl), Name: *name})
		if err != nil {
			return rpcErr(err)
		}
		fmt.Fprintln(cmd.OutOrStdout(), resp.GetUrl())
		fmt.Fprintf(cmd.ErrOrStderr(), "Open this link in a browser before %s: it signs in one admin session, once. Treat it as a password.\n",
			resp.GetExpiresAt().AsTime().Local().Format(time.DateTime))
		return nil
	}
	c := group("console", "The admin console: a one-time sign-in link (docs/console.md)", login)
	c.Long = `The admin console. It is served by run's --console-listen, and people sign
in with the identity provider of --console-oidc-issuer (docs/console.md).`
	return c
}

func newAuditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "The audit log: who did what, when, from where, and what was refused",
		Args:  noArgs,
	}
	fs := cmd.Flags()
	dataDir := dataDirFlag(fs)
	since := cliflag.Duration(fs, "since", 24*time.Hour, "how far back to list (a duration as 24h, or days as 7d; 0: everything kept)")
	actor := fs.String("actor", "", "only this actor's records (as listed)")
	target := fs.String("target", "", "only records about this device ID or gateway")
	limit := fs.Uint("limit", 100, "at most this many records, newest first (1 to 10000)")
	format := cliflag.Output(fs, "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *limit < 1 || *limit > 10000 {
			return usagef("--limit %d: give 1 to 10000", *limit)
		}
		req := &posturev1.ListAuditRequest{Limit: uint32(*limit), Actor: *actor, Target: *target}
		if *since > 0 {
			req.Since = timestamppb.New(time.Now().Add(-*since))
		}
		cl, ctx, done, err := consoleClient(*dataDir)
		if err != nil {
			return err
		}
		defer done()
		resp, err := cl.ListAudit(ctx, req)
		if err != nil {
			return rpcErr(err)
		}
		out := cmd.OutOrStdout()
		if *format == "json" {
			return printJSON(out, resp)
		}
		t := newTable(out, "TIME", "WHO", "ROLE", "VIA", "FROM", "ACTION", "TARGET", "DETAIL", "OUTCOME")
		for _, r := range resp.GetRecords() {
			outcome := "done"
			if r.GetOutcome() != "" {
				outcome = "refused: " + r.GetOutcome()
			}
			t.row(r.GetAt().AsTime().Local().Format(time.DateTime), r.GetActor(), orDash(r.GetRole()), r.GetVia(), orDash(r.GetFrom()), r.GetAction(),
				orDash(r.GetTarget()), orDash(r.GetDetail()), outcome)
		}
		return t.flush()
	}
	return cmd
}
