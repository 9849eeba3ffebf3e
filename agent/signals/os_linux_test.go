package signals

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestOSInfo(t *testing.T) {
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	tests := []struct {
		fixture string
		want    *posturev1.OSInfo
	}{
		{"debian12", &posturev1.OSInfo{Meta: ok, Name: "debian", Version: "12", KernelVersion: "6.1.0-18-amd64", Hostname: "laptop-17"}},
		{"ubuntu2404", &posturev1.OSInfo{Meta: ok, Name: "ubuntu", Version: "24.04", KernelVersion: "6.8.0-45-generic", Hostname: "build-agent"}},
		{"arch", &posturev1.OSInfo{Meta: ok, Name: "arch", Version: "rolling", KernelVersion: "6.10.10-arch1-1"}},
		{"no-os-release", &posturev1.OSInfo{
			Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"cannot tell the distribution: read os-release: open "+
					filepath.Join("testdata", "os", "no-os-release", "etc", "os-release")+": no such file or directory"),
			KernelVersion: "6.1.0-18-amd64",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			tt.want.Platform, tt.want.Arch = "linux", runtime.GOARCH
			c := New(Options{Root: filepath.Join("testdata", "os", tt.fixture), Now: fixedNow})
			got := c.osInfo(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("osInfo (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseOSRelease(t *testing.T) {
	in := "# comment\nID=fedora\nNAME='Fedora Linux'\nPRETTY_NAME=\"Fedora Linux 40 (Workstation \\\"Edition\\\")\"\n\nVERSION_ID=40\nbroken line\n"
	want := map[string]string{
		"ID":          "fedora",
		"NAME":        "Fedora Linux",
		"PRETTY_NAME": `Fedora Linux 40 (Workstation "Edition")`,
		"VERSION_ID":  "40",
	}
	if diff := cmp.Diff(want, parseOSRelease([]byte(in))); diff != "" {
		t.Errorf("parseOSRelease (-want +got):\n%s", diff)
	}
}
