package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// replicas lists the collectors sharing the database of the collector
// running with --data-dir.
func replicas(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("replicas", flag.ContinueOnError)
	dataDir := dataDirFlag(fs)
	format := outputFlag(fs, "table", "json")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: posture-collector replicas [-o table|json]")
	}
	a, err := dialAdmin(*dataDir)
	if err != nil {
		return err
	}
	defer a.close()
	resp, err := a.adm.ListReplicas(a.ctx, &posturev1.ListReplicasRequest{})
	if err != nil {
		return rpcErr(err)
	}
	if *format == "json" {
		return printJSON(out, resp)
	}
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
