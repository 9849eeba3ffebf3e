package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/posture-project/posture/internal/cliflag"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// newReplicasCommand lists the collectors sharing the database of the
// collector running with --data-dir.
func newReplicasCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replicas",
		Short: "The collectors sharing this one's database, and how far each is behind",
		Args:  noArgs,
	}
	dataDir := dataDirFlag(cmd.Flags())
	format := cliflag.Output(cmd.Flags(), "table", "json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return withAdmin(*dataDir, func(a *adminConn) error {
			resp, err := a.adm.ListReplicas(a.ctx, &posturev1.ListReplicasRequest{})
			if err != nil {
				return rpcErr(err)
			}
			if *format == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			return printReplicas(cmd.OutOrStdout(), resp)
		})
	}
	return cmd
}

func printReplicas(out io.Writer, resp *posturev1.ListReplicasResponse) error {
	t := newTable(out, "NAME", "ADDRESS", "VERSION", "STARTED", "LAST SEEN", "APPLIED", "BEHIND", "ID")
	for _, r := range resp.GetReplicas() {
		name := r.GetName()
		if r.GetSelf() {
			name += " (this one)"
		}
		seen := time.Since(r.GetSeenAt().AsTime()).Round(time.Second)
		last := seen.String() + " ago"
		if seen > 60*time.Second {
			last += ", not running?"
		}
		t.row(name, orDash(r.GetAdvertise()), r.GetVersion(), r.GetStartedAt().AsTime().Local().Format(time.DateTime), last,
			fmt.Sprint(r.GetApplied()), fmt.Sprint(r.GetBehind()), r.GetId())
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "newest change: %d\n", resp.GetNewestEvent())
	return nil
}
