package collector

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/policy"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// ReloadPolicy reads the policy file again and puts it in force: every
// device is assessed under it and watchers hear of changed decisions. A
// file that does not validate changes nothing.
func (c *Collector) ReloadPolicy() (*policy.Policy, error) {
	if c.cfg.PolicyPath == "" {
		return nil, errors.New("the collector runs the built-in policy; start it with --policy FILE to reload one")
	}
	p, err := policy.Load(c.cfg.PolicyPath)
	if err != nil {
		return nil, fmt.Errorf("policy not reloaded, the old one stays in force: %w", err)
	}
	c.fleet.reassess(p, func() { c.policy.Store(p) })
	for _, id := range c.fleet.ids() {
		c.publish(id, "policy", false)
	}
	c.log.Info("policy reloaded", "file", c.cfg.PolicyPath, "levels", p.LevelNames(), "checks", len(p.Checks))
	return p, nil
}

func (a *adminService) ReloadPolicy(context.Context, *posturev1.ReloadPolicyRequest) (*posturev1.ReloadPolicyResponse, error) {
	p, err := a.c.ReloadPolicy()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &posturev1.ReloadPolicyResponse{Levels: p.LevelNames(), Checks: uint32(len(p.Checks))}, nil
}

func (a *adminService) DiffPolicy(_ context.Context, req *posturev1.DiffPolicyRequest) (*posturev1.DiffPolicyResponse, error) {
	c := a.c
	cand, err := policy.Parse(req.GetPolicyYaml())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "candidate policy: %v", err)
	}
	cur, now := c.policy.Load(), c.cfg.Now()
	levels := slices.Clone(cur.LevelNames())
	for _, l := range cand.LevelNames() {
		if !slices.Contains(levels, l) {
			levels = append(levels, l)
		}
	}
	ids := c.fleet.ids()
	slices.Sort(ids)
	out := &posturev1.DiffPolicyResponse{Devices: uint32(len(ids))}
	for _, id := range ids {
		subj, report, boot, host, ok := c.fleet.evidence(id)
		if !ok {
			continue
		}
		candSubj := subj
		if report != nil {
			candSubj.Assessment = cand.AssessWith(report, measuredOf(boot))
		}
		for _, l := range levels {
			nowOK := false
			if _, defined := cur.Level(l); defined {
				nowOK, _, _ = cur.Decide(&subj, l, now)
			}
			candOK, reasons := false, []string{"the candidate policy does not define this level"}
			if _, defined := cand.Level(l); defined {
				candOK, _, reasons = cand.Decide(&candSubj, l, now)
			}
			if nowOK != candOK {
				out.Changes = append(out.Changes, &posturev1.LevelChange{DeviceId: id, Hostname: host, Level: l,
					AllowedNow: nowOK, AllowedCandidate: candOK, Reasons: reasons})
			}
		}
	}
	return out, nil
}
