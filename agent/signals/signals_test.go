package signals

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// testTime is the clock of fixture tests.
var testTime = time.Date(2025, 5, 20, 9, 30, 0, 0, time.UTC)

func fixedNow() time.Time { return testTime }

// sectionPath is where a section sits in the report: the fields from the
// report down to it ("disk", "other_volumes").
type sectionPath []protoreflect.FieldDescriptor

func (p sectionPath) String() string {
	var names []string
	for _, fd := range p {
		names = append(names, string(fd.Name()))
	}
	return strings.Join(names, ".")
}

// get returns the section at p in m, or nil when a message on the way is
// not set.
func (p sectionPath) get(m protoreflect.Message) protoreflect.Message {
	for _, fd := range p {
		if !m.Has(fd) {
			return nil
		}
		m = m.Get(fd).Message()
	}
	return m
}

// reportSections lists every section of a report, found from the
// descriptors so that a section added to the proto is tested without being
// named here: a message field whose message carries a SignalMeta named
// meta, at any depth (disk.other_volumes).
func reportSections() []sectionPath {
	var walk func(md protoreflect.MessageDescriptor, prefix sectionPath) []sectionPath
	walk = func(md protoreflect.MessageDescriptor, prefix sectionPath) []sectionPath {
		var out []sectionPath
		for i := range md.Fields().Len() {
			fd := md.Fields().Get(i)
			if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
				continue
			}
			path := append(slices.Clone(prefix), fd)
			if meta := fd.Message().Fields().ByName("meta"); meta != nil && meta.Message() != nil &&
				meta.Message().FullName() == (&posturev1.SignalMeta{}).ProtoReflect().Descriptor().FullName() {
				out = append(out, path)
			}
			out = append(out, walk(fd.Message(), path)...)
		}
		return out
	}
	return walk((&posturev1.PostureReport{}).ProtoReflect().Descriptor(), nil)
}

// checkSection checks that a section says how it was obtained.
func checkSection(t *testing.T, r *posturev1.PostureReport, p sectionPath, notBefore time.Time) {
	t.Helper()
	s := p.get(r.ProtoReflect())
	if s == nil {
		t.Fatalf("Collect leaves %s unset: add its measurement to Collect (docs/contributing/signals.md)", p)
	}
	meta, _ := s.Get(s.Descriptor().Fields().ByName("meta")).Message().Interface().(*posturev1.SignalMeta)
	switch {
	case meta == nil || !s.Has(s.Descriptor().Fields().ByName("meta")):
		t.Fatalf("%s has no meta", p)
	case meta.GetStatus() == posturev1.Status_STATUS_UNSPECIFIED:
		t.Errorf("%s: status is STATUS_UNSPECIFIED", p)
	case meta.GetStatus() != posturev1.Status_STATUS_OK && meta.GetReason() == "":
		t.Errorf("%s: status %v without a reason", p, meta.GetStatus())
	}
	if meta.GetSource() == posturev1.Source_SOURCE_UNSPECIFIED {
		t.Errorf("%s: source is SOURCE_UNSPECIFIED", p)
	}
	if meta.GetObservedAt() == nil || meta.GetObservedAt().AsTime().Before(notBefore) {
		t.Errorf("%s: observed_at = %v, want a time not before %v", p, meta.GetObservedAt(), notBefore)
	}
	t.Logf("%s: %v %q", p, meta.GetStatus(), meta.GetReason())
}

// Every section of the report is filled by Collect and says how it was
// obtained, even where nothing can be measured: a fixture root without
// files and a runner without commands. A section added to the proto fails
// here until Collect fills it.
func TestCollectFillsEverySection(t *testing.T) {
	sections := reportSections()
	if len(sections) < 10 {
		t.Fatalf("found %d sections; the walk of the report's descriptors is broken", len(sections))
	}
	c := New(Options{Root: t.TempDir(), Runner: newFakeRunner(t, nil), Now: fixedNow})
	r := c.Collect(context.Background())
	for _, p := range sections {
		t.Run(p.String(), func(t *testing.T) { checkSection(t, r, p, testTime) })
	}
}

// TestCollectThisMachine measures the machine the tests run on: whatever it
// is, every section must be present and say how it was obtained.
func TestCollectThisMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now().Add(-time.Second)
	r := New(Options{}).Collect(ctx)
	for _, p := range reportSections() {
		t.Run(p.String(), func(t *testing.T) {
			// The slow caches keep the time of their real measurement,
			// which on this first call is now.
			checkSection(t, r, p, start)
		})
	}

	if r.GetOs().GetPlatform() == "" || r.GetOs().GetArch() == "" {
		t.Errorf("os platform/arch not set: %v", r.GetOs())
	}
	if d := r.GetDisk(); d.GetMeta().GetStatus() == posturev1.Status_STATUS_OK && len(d.GetVolumes()) == 0 {
		t.Error("disk status OK without any volume examined")
	}
	for _, v := range append(r.GetDisk().GetVolumes(), r.GetDisk().GetOtherVolumes().GetVolumes()...) {
		t.Logf("volume %s %s encrypted=%v %s", v.GetMountPoint(), v.GetDevice(), v.GetEncrypted(), v.GetDetail())
	}
	t.Logf("os %s %s kernel %s; secure boot %v; updates %s pending=%d security=%d reboot=%v",
		r.GetOs().GetName(), r.GetOs().GetVersion(), r.GetOs().GetKernelVersion(), r.GetSecureBoot(),
		r.GetUpdates().GetManager(), r.GetUpdates().GetPending(), r.GetUpdates().GetSecurityPending(), r.GetUpdates().GetRebootRequired())
}

// sectionDocs names, for every section, the heading of docs/signals.md
// that says where it comes from on each OS and what it needs.
var sectionDocs = map[string]string{
	"os":                    "OS and patch level",
	"disk":                  "Disk encryption",
	"disk.other_volumes":    "Disk encryption",
	"secure_boot":           "Secure boot",
	"updates":               "Pending updates",
	"last_installed_update": "Pending updates",
	"firewall":              "Firewall",
	"screen_lock":           "Screen lock",
	"endpoint_protection":   "Endpoint protection",
	"auto_update":           "Automatic updates",
}

// Every section is documented: a section added to the proto fails here
// until docs/signals.md has a part for it and sectionDocs names it.
func TestEverySectionDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "signals.md"))
	if err != nil {
		t.Fatal(err)
	}
	headings := map[string]bool{}
	for line := range strings.Lines(string(b)) {
		if h, ok := strings.CutPrefix(strings.TrimSpace(line), "## "); ok {
			headings[h] = true
		}
	}
	for _, p := range reportSections() {
		h, ok := sectionDocs[p.String()]
		switch {
		case !ok:
			t.Errorf("%s has no documentation: describe its sources, privileges and captures in docs/signals.md and name the heading in sectionDocs", p)
		case !headings[h]:
			t.Errorf("%s: docs/signals.md has no heading %q", p, h)
		}
	}
}

// Every OS builds the measurements Collect calls: Linux, macOS and Windows
// with their bindings, and, for the OSes the agent does not measure, the
// _other.go stubs (FreeBSD stands for them; make cross builds only the
// shipped platforms). A signal added without its stub or binding for one
// of them fails here. go vet compiles the tests too, so the *_anyos_test.go
// files are held to every OS as well.
func TestEveryOSBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go vet for three other platforms; skipped with -short")
	}
	goTool := requireTool(t, "go")
	for _, platform := range []string{"linux/arm64", "darwin/arm64", "windows/amd64", "freebsd/amd64"} {
		t.Run(platform, func(t *testing.T) {
			goos, goarch, _ := strings.Cut(platform, "/")
			cmd := exec.Command(goTool, "vet", ".")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("GOOS=%s GOARCH=%s go vet: %v\n%s", goos, goarch, err, out)
			}
		})
	}
}
