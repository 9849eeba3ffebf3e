package api

import (
	"context"
	"runtime"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/decisions"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (a *adminService) ReloadPolicy(context.Context, *posturev1.ReloadPolicyRequest) (*posturev1.ReloadPolicyResponse, error) {
	p, err := a.s.cfg.ReloadPolicy()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &posturev1.ReloadPolicyResponse{Levels: p.LevelNames(), Checks: uint32(len(p.Checks))}, nil
}

func (a *adminService) DiffPolicy(ctx context.Context, req *posturev1.DiffPolicyRequest) (*posturev1.DiffPolicyResponse, error) {
	c := a.s
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = 1000
	case limit > decisions.MaxListed:
		return nil, status.Errorf(codes.InvalidArgument, "limit %d is above %d; the per-level counts cover every change", limit, decisions.MaxListed)
	}
	cand, err := policy.Parse(req.GetPolicyYaml())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "candidate policy: %v", err)
	}
	now := c.cfg.Now()
	levels := slices.Clone(c.cfg.Fleet.Policy().LevelNames())
	for _, l := range cand.LevelNames() {
		if !slices.Contains(levels, l) {
			levels = append(levels, l)
		}
	}
	workers := runtime.GOMAXPROCS(0)
	changes := make([][]*posturev1.LevelChange, workers)
	devices := make([]uint32, workers)
	err = c.cfg.Store.ScanFleet(ctx, workers, func(part int, row *store.FleetRow) error {
		subj, cur, ok := c.cfg.Fleet.Judged(row.ID)
		if !ok {
			return nil // enrolled after the scan began
		}
		devices[part]++
		candSubj := subj
		candSubj.Assessment = nil // no report in this scan: nothing to assess under the candidate
		if row.Report != nil {
			rep, boot, err := fleet.DecodeLatest(row)
			if err != nil {
				return err
			}
			candSubj.Assessment = cand.AssessWith(rep, row.Report.ReceivedAt, fleet.MeasuredOf(boot.Reading()))
		}
		for _, l := range levels {
			// A grace under the candidate counts from the failing-since
			// times recorded now: the candidate judges the same history.
			was, will := cur.Judge(&subj, l, now), cand.Judge(&candSubj, l, now)
			if !will.Defined {
				will.Reasons = []string{"the candidate policy does not define this level"}
			}
			if was.Allowed != will.Allowed || was.Met != will.Met {
				ch := &posturev1.LevelChange{DeviceId: row.ID, Hostname: row.Hostname, Level: l,
					AllowedNow: was.Allowed, AllowedCandidate: will.Allowed, MetNow: was.Met, MetCandidate: will.Met}
				if !will.Met {
					ch.Reasons = will.Reasons
				}
				if was.Defined {
					ch.EnforcementNow = was.Enforce.Proto()
				}
				if will.Defined {
					ch.EnforcementCandidate = will.Enforce.Proto()
				}
				if will.Warned() {
					ch.WarningsCandidate = will.Warnings()
				}
				changes[part] = append(changes[part], ch)
			}
		}
		return nil
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "evaluate the candidate: %v", err)
	}
	out := &posturev1.DiffPolicyResponse{}
	counts := make([]*posturev1.LevelCount, len(levels))
	for i, l := range levels {
		counts[i] = &posturev1.LevelCount{Level: l}
	}
	for i := range workers {
		out.Devices += devices[i]
		out.Changes = append(out.Changes, changes[i]...)
		for _, ch := range changes[i] {
			n := counts[slices.Index(levels, ch.GetLevel())]
			switch {
			case ch.GetAllowedCandidate() == ch.GetAllowedNow():
				// Met changed, allowed did not: a level in warn or off
				// mode.
			case ch.GetAllowedCandidate():
				n.Gained++
			default:
				n.Lost++
			}
		}
	}
	for _, n := range counts {
		if n.Gained+n.Lost > 0 {
			out.Levels = append(out.Levels, n)
		}
	}
	out.TotalChanges = uint32(len(out.Changes))
	// By device, then in the order of levels.
	slices.SortStableFunc(out.Changes, func(a, b *posturev1.LevelChange) int { return strings.Compare(a.GetDeviceId(), b.GetDeviceId()) })
	if len(out.Changes) > limit {
		out.Changes = out.Changes[:limit]
	}
	return out, nil
}
