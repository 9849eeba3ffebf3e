package signals

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestSecureBoot(t *testing.T) {
	ok := posturev1.Status_STATUS_OK
	tests := []struct {
		fixture string
		want    *posturev1.SecureBoot
	}{
		{"enabled", &posturev1.SecureBoot{Meta: metaAt(testTime, ok, ""), Enabled: true}},
		{"disabled", &posturev1.SecureBoot{Meta: metaAt(testTime, ok, "")}},
		{"setup-mode", &posturev1.SecureBoot{Meta: metaAt(testTime, ok, ""), SetupMode: true}},
		{"legacy-bios", &posturev1.SecureBoot{Meta: metaAt(testTime, ok, ""), LegacyBios: true}},
		{"efivarfs-not-mounted", &posturev1.SecureBoot{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
			"booted through UEFI, but the EFI variables are not readable (mount efivarfs on /sys/firmware/efi/efivars): open "+
				filepath.Join("testdata", "secureboot", "efivarfs-not-mounted", "sys", "firmware", "efi", "efivars")+
				": no such file or directory")}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			c := New(Options{Root: filepath.Join("testdata", "secureboot", tt.fixture), Now: fixedNow})
			got := c.secureBoot(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("secureBoot (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSecureBootBadVariable(t *testing.T) {
	tests := []struct {
		name    string
		content []byte
		reason  string
	}{
		{"truncated", []byte{6, 0, 0}, "SecureBoot is 3 bytes"},
		{"odd value", []byte{6, 0, 0, 0, 7}, "SecureBoot holds 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "sys", "firmware", "efi", "efivars")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "SecureBoot-"+efiGlobalVariable), tt.content, 0o644); err != nil {
				t.Fatal(err)
			}
			got := New(Options{Root: root, Now: fixedNow}).secureBoot(context.Background())
			if got.GetMeta().GetStatus() != posturev1.Status_STATUS_ERROR || got.GetEnabled() {
				t.Errorf("got %v, want STATUS_ERROR and not enabled", got)
			}
			if !strings.Contains(got.GetMeta().GetReason(), tt.reason) {
				t.Errorf("reason %q does not contain %q", got.GetMeta().GetReason(), tt.reason)
			}
		})
	}
}
