package e2e

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/envelope"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// A device's report with a field or a body over the limits is rejected as
// malformed, with what is over and by how much, counted, and nothing of it
// stored: the device's chain head stays, and its next report within the
// limits is stored. A message over the gRPC limit ends the stream, and the
// device goes on with a new one.
func TestReportLimits(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	cert, key := deviceCreds(t, dir)
	c := openReports(t, e, cert, key, id)
	if m := c.send(c.next()); m.GetAck().GetSeq() != 1 {
		t.Fatalf("first report: %v", m)
	}
	tests := []struct {
		name string
		mod  func(*posturev1.PostureReport)
		want string
	}{
		{"OS name of 1 MiB", func(r *posturev1.PostureReport) { r.Os.Name = strings.Repeat("x", 1<<20) }, "bytes; at most 65536"},
		{"OS name of 300 bytes", func(r *posturev1.PostureReport) { r.Os.Name = strings.Repeat("x", 300) }, "os.name is 300 bytes; at most 256"},
		{"reason of 2000 bytes", func(r *posturev1.PostureReport) { r.Firewall.Meta.Reason = strings.Repeat("y", 2000) }, "firewall.meta.reason is 2000 bytes; at most 1024"},
		{"volume detail of 1500 bytes", func(r *posturev1.PostureReport) { r.Disk.Volumes[0].Detail = strings.Repeat("z", 1500) }, "disk.volumes[0].detail is 1500 bytes; at most 1024"},
		{"300 volumes", func(r *posturev1.PostureReport) {
			for i := range 299 {
				r.Disk.Volumes = append(r.Disk.Volumes, &posturev1.Volume{MountPoint: fmt.Sprintf("/srv/%d", i)})
			}
		}, "disk.volumes is 300 entries; at most 256"},
		{"body over 64 KiB in fields within their limits", func(r *posturev1.PostureReport) {
			for i := range 100 {
				r.Disk.Volumes = append(r.Disk.Volumes, &posturev1.Volume{MountPoint: fmt.Sprintf("/srv/%d", i), Detail: strings.Repeat("d", 1000)})
			}
		}, "bytes; at most 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.stats()
			m := c.send(c.nextWith(time.Now(), tt.mod))
			rej := m.GetRejected()
			if rej.GetReason() != posturev1.RejectReason_REJECT_REASON_MALFORMED || !strings.Contains(rej.GetMessage(), tt.want) {
				t.Fatalf("answer %v; want rejected as malformed: %s", m, tt.want)
			}
			if rej.GetSeq() != 2 {
				t.Errorf("rejection for seq %d, want 2", rej.GetSeq())
			}
			after := e.stats()
			if got, was := after.GetReportsRejected()["malformed"], before.GetReportsRejected()["malformed"]; got != was+1 {
				t.Errorf("malformed rejections went from %d to %d, want one more", was, got)
			}
			if after.GetReportsAccepted() != before.GetReportsAccepted() {
				t.Errorf("accepted count moved from %d to %d", before.GetReportsAccepted(), after.GetReportsAccepted())
			}
			d, err := e.device(id)
			if err != nil || d.GetDevice().GetLastSeq() != 1 || d.GetDevice().GetOs() != "debian 12" {
				t.Errorf("device after the rejection: head %d, OS %q (%v); want 1, debian 12", d.GetDevice().GetLastSeq(), d.GetDevice().GetOs(), err)
			}
		})
	}
	// The device goes on with a report within the limits.
	if m := c.send(c.next()); m.GetAck().GetSeq() != 2 {
		t.Fatalf("report within the limits after the rejections: %v", m)
	}

	// A message over the gRPC limit is not read: the stream ends.
	huge := c.nextWith(time.Now(), func(r *posturev1.PostureReport) { r.Os.Name = strings.Repeat("x", 2<<20) })
	if err := c.st.Send(&posturev1.AgentMessage{Msg: &posturev1.AgentMessage_Report{Report: huge}}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if m, err := c.st.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a 2 MiB message: %v, %v; want the stream ended (ResourceExhausted)", m, err)
	}
	c = openReports(t, e, cert, key, id)
	if m := c.send(c.next()); m.GetAck().GetSeq() != 3 {
		t.Fatalf("report on a new stream: %v", m)
	}

	e.stop()
	st, err := sqlite.Open(filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n, err := st.CountReports(context.Background(), id); err != nil || n != 3 {
		t.Errorf("%d reports stored (%v), want the 3 within the limits", n, err)
	}
}

// clippingMeasurer measures a device whose firewall check failed with a
// long line of output, and which has more data volumes than a report
// holds.
type clippingMeasurer struct{}

func (clippingMeasurer) Collect(context.Context) *posturev1.PostureReport {
	r := healthyReport(true, "clip")
	r.Firewall = &posturev1.Firewall{Meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_ERROR, ObservedAt: timestamppb.Now(),
		Reason: "nft list ruleset exited with status 1: " + strings.Repeat("é", 3000)}}
	r.Disk.OtherVolumes = &posturev1.OtherVolumes{Meta: &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now()}}
	for i := range 300 {
		r.Disk.OtherVolumes.Volumes = append(r.Disk.OtherVolumes.Volumes, &posturev1.Volume{MountPoint: fmt.Sprintf("/srv/%d", i), Encrypted: true})
	}
	return r
}

// The agent clips a measurement to the limits before signing it, so a
// long text or a long list costs its tail rather than the report.
func TestAgentClipsToLimits(t *testing.T) {
	e := startCollector(t)
	dir, id := e.enroll()
	runAgent(t, dir, clippingMeasurer{}, time.Hour)
	eventually(t, "a report", func() bool { d, err := e.device(id); return err == nil && d.GetDevice().GetLastSeq() >= 1 })
	p, err := e.admin.GetDevice(context.Background(), &posturev1.GetDeviceRequest{DeviceId: id})
	if err != nil {
		t.Fatal(err)
	}
	reason := p.GetReport().GetFirewall().GetMeta().GetReason()
	if !strings.HasPrefix(reason, "nft list ruleset exited with status 1: é") || !strings.HasSuffix(reason, "…") || len(reason) > envelope.MaxTextLen {
		t.Errorf("firewall reason of %d bytes, ending %q; want clipped to at most %d, ending in …", len(reason), reason[max(0, len(reason)-10):], envelope.MaxTextLen)
	}
	if n := len(p.GetReport().GetDisk().GetOtherVolumes().GetVolumes()); n != envelope.MaxListLen {
		t.Errorf("%d other volumes, want the first %d", n, envelope.MaxListLen)
	}
	if r := e.stats().GetReportsRejected(); len(r) != 0 {
		t.Errorf("rejections: %v", r)
	}
}
