package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	_ "github.com/mattn/go-sqlite3"

	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

const strictPolicy = `
freshness: {stale_after: 15m, expire_after: 24h}
checks:
  - {name: disk_encryption, weight: 1}
levels:
  - {name: basic, min_score: 100}
  - {name: gold, expr: 'device.identity.assurance == "tpm_ek_verified"'}
`

// A candidate policy is evaluated against every device before it is
// enforced; a reload puts it in force atomically, a bad file changes
// nothing; every decision is recorded and can be listed.
func TestPolicyDiffReloadAndDecisionLog(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	def, err := os.ReadFile("../collector/policy/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, def, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	e := startCollectorWith(t, func(c *collector.Config) { c.Policy, c.PolicyPath = p, file })
	encDir, enc := e.enroll()
	plainDir, plain := e.enroll()
	runAgent(t, encDir, &fixedMeasurer{encrypted: true}, time.Hour)
	runAgent(t, plainDir, &fixedMeasurer{encrypted: false}, time.Hour)
	for _, id := range []string{enc, plain} {
		eventually(t, "reports", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	}
	ctx := context.Background()

	diff, err := e.admin.DiffPolicy(ctx, &posturev1.DiffPolicyRequest{PolicyYaml: []byte(strictPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, ch := range diff.GetChanges() {
		got[ch.GetDeviceId()+"/"+ch.GetLevel()] = ch.GetAllowedCandidate()
	}
	// The unencrypted device loses basic; both lose trusted (undefined in
	// the candidate); nobody gains gold (software identities).
	want := map[string]bool{plain + "/basic": false, enc + "/trusted": false}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("diff lacks %s -> allowed %v: %v", k, v, diff.GetChanges())
		}
	}
	if len(got) != len(want) {
		t.Errorf("diff = %v, want exactly %v", got, want)
	}
	counts := func(d *posturev1.DiffPolicyResponse) string {
		var s []string
		for _, l := range d.GetLevels() {
			s = append(s, fmt.Sprintf("%s+%d-%d", l.GetLevel(), l.GetGained(), l.GetLost()))
		}
		return fmt.Sprintf("%d %s", d.GetTotalChanges(), strings.Join(s, " "))
	}
	if c := counts(diff); c != "2 basic+0-1 trusted+0-1" {
		t.Errorf("diff counts %q, want 2 changes: basic and trusted each lost once", c)
	}
	// A limit shortens the list, not the counts.
	short, err := e.admin.DiffPolicy(ctx, &posturev1.DiffPolicyRequest{PolicyYaml: []byte(strictPolicy), Limit: 1})
	if err != nil || len(short.GetChanges()) != 1 || counts(short) != counts(diff) {
		t.Errorf("diff with limit 1: %d listed, counts %q, err %v; want 1 listed and the same counts", len(short.GetChanges()), counts(short), err)
	}
	if _, err := e.admin.DiffPolicy(ctx, &posturev1.DiffPolicyRequest{PolicyYaml: []byte(strictPolicy), Limit: 10001}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("diff with limit 10001: %v, want InvalidArgument", err)
	}
	if r, _ := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: plain, AccessLevel: "basic"}); !r.GetAllowed() {
		t.Fatal("a diff changed the policy in force")
	}
	if _, err := e.admin.DiffPolicy(ctx, &posturev1.DiffPolicyRequest{PolicyYaml: []byte("levels: [")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("diff of a broken file: %v, want InvalidArgument", err)
	}

	// A bad file is refused and the old policy stays.
	os.WriteFile(file, []byte("checks: [{name: nope, weight: 1}]"), 0o600)
	if _, err := e.admin.ReloadPolicy(ctx, &posturev1.ReloadPolicyRequest{}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "old one stays in force") {
		t.Errorf("reload of a bad file: %v", err)
	}
	if r, _ := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: plain, AccessLevel: "basic"}); !r.GetAllowed() {
		t.Error("a refused reload changed decisions")
	}
	// A good file takes effect at once.
	os.WriteFile(file, []byte(strictPolicy), 0o600)
	resp, err := e.admin.ReloadPolicy(ctx, &posturev1.ReloadPolicyRequest{})
	if err != nil || strings.Join(resp.GetLevels(), ",") != "basic,gold" {
		t.Fatalf("reload: %v %v", resp, err)
	}
	r, _ := e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: plain, AccessLevel: "basic"})
	if r.GetAllowed() {
		t.Error("after reload the unencrypted device still meets basic")
	}

	// The decision log answers "why was it denied".
	log, err := e.admin.ListDecisions(ctx, &posturev1.ListDecisionsRequest{DeviceId: plain, Since: timestamppb.New(time.Now().Add(-time.Minute))})
	if err != nil {
		t.Fatal(err)
	}
	// Two identical allows in a row are one record of two.
	if d := log.GetDecisions(); len(d) != 2 || d[1].GetCount() != 2 || !d[1].GetAllowed() || d[0].GetCount() != 1 {
		t.Fatalf("decisions logged for the device: %v; want a denial, then two allows as one record", d)
	}
	if _, err := e.admin.ListDecisions(ctx, &posturev1.ListDecisionsRequest{Limit: 10001}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("decisions with limit 10001: %v, want InvalidArgument", err)
	}
	newest := log.GetDecisions()[0]
	if newest.GetAllowed() || !strings.Contains(strings.Join(newest.GetReasons(), " "), "score 0 is below 100") || newest.GetCaller() != "admin local" {
		t.Errorf("newest decision = %v, want the denial with its reason, asked by the local admin", newest)
	}
	if f := newest.GetFailedChecks(); len(f) == 0 || f[0].GetRemediation() == "" {
		t.Errorf("newest decision's failed checks %v, want them with their fixes", f)
	}

	// The log is saved while the collector runs (a crash loses at most a
	// second of new records)...
	e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: "ghost", AccessLevel: "basic"})
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(e.dataDir, "posture.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	eventually(t, "decisions saved", func() bool {
		var n int
		err := db.QueryRow(`SELECT count(*) FROM decisions WHERE device IN (?, 'ghost')`, plain).Scan(&n)
		return err == nil && n == 3
	})
	// ...and answers the same after a restart, runs continuing.
	e.stop()
	e.start()
	after, err := e.admin.ListDecisions(ctx, &posturev1.ListDecisionsRequest{DeviceId: plain, Since: timestamppb.New(time.Now().Add(-time.Minute))})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.GetDecisions()) != len(log.GetDecisions()) {
		t.Fatalf("after a restart %d decisions, want %d: %v", len(after.GetDecisions()), len(log.GetDecisions()), after.GetDecisions())
	}
	for i, d := range after.GetDecisions() {
		if !proto.Equal(d, log.GetDecisions()[i]) {
			t.Errorf("decision %d after a restart:\n%v\nwant\n%v", i, d, log.GetDecisions()[i])
		}
	}
	e.gwLocal.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: "ghost", AccessLevel: "basic"})
	if d, err := e.admin.ListDecisions(ctx, &posturev1.ListDecisionsRequest{DeviceId: "ghost"}); err != nil || len(d.GetDecisions()) != 1 || d.GetDecisions()[0].GetCount() != 2 {
		t.Errorf("an unknown device asked about again after the restart: %v, %v; want one record, its run continued to 2", d.GetDecisions(), err)
	}
}
