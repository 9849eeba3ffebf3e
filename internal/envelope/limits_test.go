package envelope

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// realReport is what posture-agent collect measured on a Debian 12 VM
// without root, as a report carries it.
func realReport() *posturev1.PostureReport {
	meta := func(s posturev1.Status, reason string) *posturev1.SignalMeta {
		return &posturev1.SignalMeta{Status: s, Reason: reason, ObservedAt: timestamppb.Now(), Source: posturev1.Source_SOURCE_OS}
	}
	ok := posturev1.Status_STATUS_OK
	return &posturev1.PostureReport{
		DeviceId: "3f0c8a52-6f1e-4c55-9a51-0d8f2b6b7a11", Seq: 1234, PrevDigest: make([]byte, 32), CreatedAt: timestamppb.Now(),
		Agent: &posturev1.AgentInfo{Version: "0.9.0", Identity: "software"},
		Os:    &posturev1.OSInfo{Meta: meta(ok, ""), Platform: "linux", Name: "debian", Version: "12", KernelVersion: "6.18.44-fc-v782", Arch: "amd64", Hostname: "vm"},
		Disk: &posturev1.DiskEncryption{Meta: meta(ok, ""), Volumes: []*posturev1.Volume{{MountPoint: "/", Device: "/dev/vda", Detail: "vda: no encryption layer"}},
			OtherVolumes: &posturev1.OtherVolumes{Meta: meta(ok, "")}},
		SecureBoot: &posturev1.SecureBoot{Meta: meta(ok, ""), LegacyBios: true},
		Updates:    &posturev1.Updates{Meta: meta(ok, ""), Manager: "apt", Pending: 120, SecurityPending: 73},
		Firewall: &posturev1.Firewall{Meta: meta(ok, ""), Detail: "firewalld is installed but its rules are not loaded (systemctl enable --now firewalld); " +
			"no nftables input chain drops inbound traffic by default; ufw is installed but disabled (ufw enable)"},
		ScreenLock:         &posturev1.ScreenLock{Meta: meta(posturev1.Status_STATUS_NOT_APPLICABLE, "no graphical session")},
		EndpointProtection: &posturev1.EndpointProtection{Meta: meta(posturev1.Status_STATUS_NOT_APPLICABLE, "Linux has no built-in endpoint protection; third-party products are not examined")},
		AutoUpdate:         &posturev1.AutoUpdate{Meta: meta(ok, ""), Mechanism: "unattended-upgrades", Detail: "unattended-upgrades is not installed (apt install unattended-upgrades)"},
	}
}

// leaf is a string, bytes or repeated field somewhere in a report, with
// the limit the documentation gives it.
type leaf struct {
	path []protoreflect.FieldDescriptor
	max  int
}

func (l leaf) String() string {
	var parts []string
	for _, fd := range l.path {
		parts = append(parts, string(fd.Name()))
	}
	return strings.Join(parts, ".")
}

// leaves lists every field of md, and of the messages in it, that a device
// fills with a length: found from the descriptors, so that a field added
// to the proto is tested without being named here.
func leaves(md protoreflect.MessageDescriptor, prefix []protoreflect.FieldDescriptor) []leaf {
	var out []leaf
	for i := range md.Fields().Len() {
		fd := md.Fields().Get(i)
		path := append(append([]protoreflect.FieldDescriptor{}, prefix...), fd)
		if fd.IsList() {
			out = append(out, leaf{path, MaxListLen})
		}
		switch fd.Kind() {
		case protoreflect.StringKind:
			max := MaxNameLen
			switch fd.Name() {
			case "reason", "detail", "mount_point", "device":
				max = MaxTextLen
			}
			out = append(out, leaf{path, max})
		case protoreflect.BytesKind:
			out = append(out, leaf{path, 64})
		case protoreflect.MessageKind:
			out = append(out, leaves(fd.Message(), path)...)
		}
	}
	return out
}

// set fills the field at path in m, making the messages on the way: a
// list gets n entries (an element of n bytes when it holds strings), a
// string or bytes field n bytes of 'x'. Lists on the way get one entry.
func set(m protoreflect.Message, path []protoreflect.FieldDescriptor, n int, asList bool) {
	fd := path[0]
	if len(path) == 1 {
		switch {
		case asList:
			m.Clear(fd)
			l := m.Mutable(fd).List()
			for range n {
				l.Append(l.NewElement())
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			l.Append(protoreflect.ValueOfString(strings.Repeat("x", n)))
		case fd.Kind() == protoreflect.BytesKind:
			m.Set(fd, protoreflect.ValueOfBytes(make([]byte, n)))
		default:
			m.Set(fd, protoreflect.ValueOfString(strings.Repeat("x", n)))
		}
		return
	}
	if fd.IsList() {
		l := m.Mutable(fd).List()
		e := l.NewElement()
		l.Append(e)
		set(e.Message(), path[1:], n, asList)
		return
	}
	set(m.Mutable(fd).Message(), path[1:], n, asList)
}

// Every field a device fills is held to its limit: at the limit the report
// passes, one over it is refused with the field's path, its size and the
// limit.
func TestCheckReportLimits(t *testing.T) {
	all := leaves((&posturev1.PostureReport{}).ProtoReflect().Descriptor(), nil)
	if len(all) < 30 {
		t.Fatalf("found %d fields to limit; the walk of the report's descriptors is broken", len(all))
	}
	for _, l := range all {
		asList := l.path[len(l.path)-1].IsList() && l.max == MaxListLen && l.path[len(l.path)-1].Kind() == protoreflect.MessageKind
		name := l.String()
		if asList {
			name += " (entries)"
		}
		t.Run(name, func(t *testing.T) {
			at := realReport()
			set(at.ProtoReflect(), l.path, l.max, asList)
			if err := CheckReport(at); err != nil {
				t.Errorf("%s at its limit of %d: %v", l, l.max, err)
			}
			over := realReport()
			set(over.ProtoReflect(), l.path, l.max+1, asList)
			err := CheckReport(over)
			if err == nil {
				t.Fatalf("%s of %d accepted; the limit is %d", l, l.max+1, l.max)
			}
			// The path names the field; lists on the way are indexed.
			for _, fd := range l.path {
				if !strings.Contains(err.Error(), string(fd.Name())) {
					t.Errorf("error %q does not name %s", err, fd.Name())
				}
			}
			if want := fmt.Sprintf("is %d ", l.max+1); !strings.Contains(err.Error(), want) || !strings.HasSuffix(err.Error(), fmt.Sprintf("; at most %d", l.max)) {
				t.Errorf("error %q does not say the size %d and the limit %d", err, l.max+1, l.max)
			}
			// The agent clips texts and lists to the limits (a digest
			// is its own size).
			if l.path[len(l.path)-1].Kind() == protoreflect.BytesKind {
				return
			}
			ClipReport(over)
			if err := CheckReport(over); err != nil {
				t.Errorf("after ClipReport: %v", err)
			}
		})
	}
}

func TestCheckReportMessages(t *testing.T) {
	if err := CheckReport(realReport()); err != nil {
		t.Fatalf("a real report: %v", err)
	}
	r := realReport()
	r.Os.Name = strings.Repeat("x", 1<<20)
	if err := CheckReport(r); err == nil || err.Error() != "os.name is 1048576 bytes; at most 256" {
		t.Errorf("CheckReport = %v, want os.name is 1048576 bytes; at most 256", err)
	}
	r = realReport()
	r.Disk.Volumes = append(r.Disk.Volumes, &posturev1.Volume{MountPoint: "/data", Detail: strings.Repeat("y", 2000)})
	if err := CheckReport(r); err == nil || err.Error() != "disk.volumes[1].detail is 2000 bytes; at most 1024" {
		t.Errorf("CheckReport = %v, want disk.volumes[1].detail is 2000 bytes; at most 1024", err)
	}
}

// ClipReport cuts what is over a limit, at a character boundary and marked,
// and leaves everything else alone.
func TestClipReport(t *testing.T) {
	real := realReport()
	r := proto.Clone(real).(*posturev1.PostureReport)
	ClipReport(r)
	if diff := cmp.Diff(real, r, protocmp.Transform()); diff != "" {
		t.Errorf("ClipReport changed a report within the limits (-want +got):\n%s", diff)
	}

	long := strings.Repeat("é", MaxTextLen) // two bytes each: a cut can land inside one
	r.Firewall.Detail = long
	r.Os.Hostname = strings.Repeat("h", 300)
	r.Disk.OtherVolumes.Volumes = make([]*posturev1.Volume, MaxListLen+10)
	for i := range r.Disk.OtherVolumes.Volumes {
		r.Disk.OtherVolumes.Volumes[i] = &posturev1.Volume{MountPoint: fmt.Sprintf("/srv/%d", i), Detail: long}
	}
	ClipReport(r)
	if err := CheckReport(r); err != nil {
		t.Fatalf("clipped report: %v", err)
	}
	for _, s := range []string{r.Firewall.Detail, r.Os.Hostname, r.Disk.OtherVolumes.Volumes[0].Detail} {
		if !utf8.ValidString(s) || !strings.HasSuffix(s, "…") {
			t.Errorf("clipped %q…: want valid UTF-8 ending in …", s[:20])
		}
	}
	if len(r.Firewall.Detail) < MaxTextLen-4 || len(r.Os.Hostname) != MaxNameLen {
		t.Errorf("clipped to %d and %d bytes, want as much as fits in %d and %d", len(r.Firewall.Detail), len(r.Os.Hostname), MaxTextLen, MaxNameLen)
	}
	if n := len(r.Disk.OtherVolumes.Volumes); n != MaxListLen || r.Disk.OtherVolumes.Volumes[n-1].MountPoint != fmt.Sprintf("/srv/%d", n-1) {
		t.Errorf("clipped to %d volumes, want the first %d", n, MaxListLen)
	}
	if diff := cmp.Diff(real.Os.Name, r.Os.Name); diff != "" {
		t.Errorf("os.name changed: %s", diff)
	}
}

// A signed report over a limit is refused as malformed with what is over,
// and one within them verifies.
func TestVerifyLimits(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sign := func(r *posturev1.PostureReport) *posturev1.SignedReport {
		body, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		sr, err := SignSoftware(key, []byte("nonce"), body)
		if err != nil {
			t.Fatal(err)
		}
		return sr
	}
	longName, bigName := realReport(), realReport()
	longName.Os.Name = strings.Repeat("x", 300)
	bigName.Os.Name = strings.Repeat("x", 1<<20)
	bigBody := realReport()
	for i := range 200 { // each within the limits, together too much
		bigBody.Disk.Volumes = append(bigBody.Disk.Volumes, &posturev1.Volume{MountPoint: fmt.Sprintf("/srv/%d", i), Detail: strings.Repeat("d", 500)})
	}
	unknownInProof := sign(realReport())
	unknownInProof.GetSoftware().ProtoReflect().SetUnknown(protowireBytes(99, 8<<10))
	bigLog := sign(realReport())
	bigLog.Proof = &posturev1.SignedReport_Tpm{Tpm: &posturev1.TPMQuote{EventLog: make([]byte, MaxEventLogSize+1)}}
	if _, _, err := VerifyTPM(nil, bigLog); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "the TPM event log is 1048577 bytes; at most 1048576") {
		t.Errorf("VerifyTPM with an event log over the limit = %v, want malformed", err)
	}
	tests := []struct {
		name string
		sr   *posturev1.SignedReport
		want string // "" for verified
	}{
		{"a real report", sign(realReport()), ""},
		{"a 300-byte OS name", sign(longName), "os.name is 300 bytes; at most 256"},
		{"a 1 MiB OS name", sign(bigName), "bytes; at most 65536"},
		{"a body over 64 KiB", sign(bigBody), "the report is"},
		{"8 KiB of unknown fields in the proof", unknownInProof, "the proof is"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := VerifySoftware(&key.PublicKey, tt.sr)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("VerifySoftware: %v", err)
			case tt.want == "":
				if err := CheckReport(v.Report); err != nil {
					t.Error(err)
				}
			case !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want):
				t.Errorf("VerifySoftware = %v, want malformed: %s", err, tt.want)
			}
		})
	}
}

// protowireBytes is an unknown bytes field numbered num of n bytes.
func protowireBytes(num protowire.Number, n int) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), make([]byte, n))
}

func BenchmarkCheckReport(b *testing.B) {
	r := realReport()
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckReport(r); err != nil {
			b.Fatal(err)
		}
	}
}
