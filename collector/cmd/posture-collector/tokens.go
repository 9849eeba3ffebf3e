package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/posture-project/posture/internal/cliflag"
	"github.com/posture-project/posture/internal/inert"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// tokenStateName is a token's state as the table and -o json word it.
func tokenStateName(s posturev1.EnrollmentTokenState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ENROLLMENT_TOKEN_STATE_"))
}

func tokenListCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List enrollment tokens, newest first: id, description, dates, enrollments made of those allowed, state",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.ListEnrollmentTokens(a.ctx, &posturev1.ListEnrollmentTokensRequest{})
			if err != nil {
				return rpcErr(err)
			}
			out := cmd.OutOrStdout()
			if *format == "json" {
				return printJSON(out, resp)
			}
			t := newTable(out, "ID", "DESCRIPTION", "CREATED", "EXPIRES", "USED", "STATE")
			for _, tok := range resp.GetTokens() {
				state := strings.ReplaceAll(tokenStateName(tok.GetState()), "_", " ")
				if tok.GetRevokedAt() != nil {
					state += " " + tok.GetRevokedAt().AsTime().Local().Format(time.DateTime)
				}
				t.row(tok.GetId(), orDash(tok.GetDescription()), tok.GetCreatedAt().AsTime().Local().Format(time.DateTime),
					tok.GetExpiresAt().AsTime().Local().Format(time.DateTime), fmt.Sprintf("%d/%d", tok.GetUsed(), tok.GetUses()), state)
			}
			return t.flush()
		})
	}
	return cmd
}

func tokenRevokeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an enrollment token: no device enrolls with it any more",
		Long: `Revoke an enrollment token: no device enrolls with it any more. Devices it
enrolled stay enrolled (posture-collector devices revoke revokes a device).
ID is a token's id as token list shows it, or a unique prefix of one.`,
		Args: exactArgs(1, "posture-collector token revoke ID"),
	}
	dataDir := dataDirFlag(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			// The full id, when the prefix names one token, so that the
			// audit log names the token; otherwise the collector says
			// what is wrong with the prefix.
			id := strings.ToLower(args[0])
			if list, err := a.adm.ListEnrollmentTokens(a.ctx, &posturev1.ListEnrollmentTokensRequest{}); err == nil {
				var match []string
				for _, t := range list.GetTokens() {
					if strings.HasPrefix(t.GetId(), id) {
						match = append(match, t.GetId())
					}
				}
				if len(match) == 1 && len(id) >= 4 {
					id = match[0]
				}
			}
			resp, err := a.adm.RevokeEnrollmentToken(a.ctx, &posturev1.RevokeEnrollmentTokenRequest{Id: id})
			if err != nil {
				return rpcErr(err)
			}
			t := resp.GetToken()
			inert.Fprintf(cmd.OutOrStdout(), "enrollment token %s (%s) revoked; it had enrolled %d of %d device(s), which stay enrolled\n",
				t.GetId(), orDash(t.GetDescription()), t.GetUsed(), t.GetUses())
			return nil
		})
	}
	return cmd
}
