package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/console"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// consoleUsage lists the console's flags of run and its commands.
const consoleUsage = `
The admin console (docs/console.md):
  posture-collector run … --console-listen ADDR [--console-url https://HOST:PORT] [--console-serving-name NAME,…] [--console-tls-cert FILE --console-tls-key FILE]
                        [--console-oidc-issuer URL --console-oidc-client-id ID --console-oidc-client-secret-file FILE [--console-oidc-scopes email,profile]
                         [--console-role-claim groups] --console-admin-values V,… [--console-viewer-values V,…]] [--console-session-ttl 8h]
  posture-collector console login [--ttl 15m] [--name NAME]   a one-time admin sign-in link for the console (the first admin)
  posture-collector audit [--since 24h] [--actor WHO] [--target ID] [--limit 100] [-o table|json]   who did what, when, from where
`

// consoleFlags adds the console's flags to run's, and returns what makes
// the console's configuration from them once parsed: nil without
// --console-listen.
func consoleFlags(fs *flag.FlagSet) func() (*collector.ConsoleConfig, error) {
	listen := fs.String("console-listen", "", "serve the admin console at https://ADDR (off when empty)")
	url := fs.String("console-url", "", "where browsers reach the console, https://HOST:PORT (default: the first --console-serving-name, or the listen address)")
	names := fs.String("console-serving-name", "", "host names, comma-separated, that the console's certificate from the collector CA carries")
	certFile := fs.String("console-tls-cert", "", "serve the console with this certificate (PEM) instead of one from the collector CA")
	keyFile := fs.String("console-tls-key", "", "the key of --console-tls-cert (PEM)")
	issuer := fs.String("console-oidc-issuer", "", "OpenID Connect issuer URL of the identity provider people sign in with")
	clientID := fs.String("console-oidc-client-id", "", "the console's client ID at the identity provider")
	secretFile := fs.String("console-oidc-client-secret-file", "", "file holding the console's client secret (mode 0600)")
	scopes := fs.String("console-oidc-scopes", "email,profile", "scopes asked for besides openid, comma-separated (Okta needs groups for a groups claim)")
	roleClaim := fs.String("console-role-claim", "groups", "the ID token claim holding a person's groups or roles (a dotted path: realm_access.roles)")
	adminValues := fs.String("console-admin-values", "", "values of the role claim that make an admin, comma-separated")
	viewerValues := fs.String("console-viewer-values", "", "values of the role claim that make a viewer, comma-separated (default: every person the provider signs in who is not an admin)")
	ttl := fs.Duration("console-session-ttl", console.DefaultSessionTTL, "how long a console session lasts from sign-in (5m to 7 days)")
	return func() (*collector.ConsoleConfig, error) {
		if *listen == "" {
			if *issuer != "" || *certFile != "" || *url != "" {
				return nil, errors.New("the console's flags need --console-listen ADDR")
			}
			return nil, nil
		}
		if *ttl < 5*time.Minute || *ttl > 7*24*time.Hour {
			return nil, fmt.Errorf("--console-session-ttl %v: give 5m to 168h", *ttl)
		}
		servingNames, err := parseServingNames(*names)
		if err != nil {
			return nil, fmt.Errorf("--console-serving-name: %w", err)
		}
		cc := &collector.ConsoleConfig{Listen: *listen, URL: *url, ServingNames: servingNames, CertFile: *certFile, KeyFile: *keyFile, SessionTTL: *ttl}
		if *issuer == "" {
			if *clientID != "" || *secretFile != "" || *adminValues != "" {
				return nil, errors.New("the identity provider's flags need --console-oidc-issuer URL")
			}
			return cc, nil
		}
		secret := ""
		if *secretFile != "" {
			b, err := readSecretFile(*secretFile)
			if err != nil {
				return nil, fmt.Errorf("--console-oidc-client-secret-file: %w", err)
			}
			if len(b) == 0 {
				return nil, fmt.Errorf("--console-oidc-client-secret-file: %s is empty", *secretFile)
			}
			secret = string(b)
		}
		cc.OIDC = &console.OIDC{Issuer: *issuer, ClientID: *clientID, ClientSecret: secret, Scopes: commaList(*scopes), RoleClaim: *roleClaim,
			AdminValues: commaList(*adminValues), ViewerValues: commaList(*viewerValues)}
		return cc, nil
	}
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

func consoleLogin(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("console login", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	ttl := fs.Duration("ttl", 15*time.Minute, "how long the link may be used (1m to 24h); it opens one session, once")
	name := fs.String("name", "first admin", "who the session is for, as the console and the audit log show it")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: posture-collector console login [--ttl 15m] [--name NAME]")
	}
	cl, ctx, done, err := consoleClient(*dataDir)
	if err != nil {
		return err
	}
	defer done()
	resp, err := cl.CreateSignInLink(ctx, &posturev1.CreateSignInLinkRequest{Ttl: durationpb.New(*ttl), Name: *name})
	if err != nil {
		return rpcErr(err)
	}
	fmt.Fprintln(out, resp.GetUrl())
	fmt.Fprintf(os.Stderr, "Open this link in a browser before %s: it signs in one admin session, once. Treat it as a password.\n",
		resp.GetExpiresAt().AsTime().Local().Format(time.DateTime))
	return nil
}

func audit(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	since := fs.Duration("since", 24*time.Hour, "how far back to list (0: everything kept)")
	actor := fs.String("actor", "", "only this actor's records (as listed)")
	target := fs.String("target", "", "only records about this device ID or gateway")
	limit := fs.Uint("limit", 100, "at most this many records, newest first (1 to 10000)")
	format := outputFlag(fs, "table", "json")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: posture-collector audit [--since 24h] [--actor WHO] [--target ID] [--limit 100] [-o table|json]")
	}
	if *limit < 1 || *limit > 10000 {
		return fmt.Errorf("--limit %d: give 1 to 10000", *limit)
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
