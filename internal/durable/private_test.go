package durable

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestIsPrivate(t *testing.T) {
	tests := []struct {
		mode os.FileMode
		want bool
	}{
		{0o600, true},
		{0o400, true},
		{0o700, true},
		{0o640, false},
		{0o604, false},
		{0o644, false},
	}
	for _, tt := range tests {
		if got := isPrivate(tt.mode); got != tt.want {
			t.Errorf("isPrivate(%v) = %v, want %v", tt.mode, got, tt.want)
		}
	}
}

// The Windows access lists are protected from inheritance and allow full
// control to SYSTEM and Administrators only; a directory's entries are
// inherited by what is created in it.
func TestPrivateSDDL(t *testing.T) {
	ace := regexp.MustCompile(`\(([^)]*)\)`)
	tests := []struct {
		name, sddl, flags string
	}{
		{"file", privateFileSDDL, ""},
		{"directory", privateDirSDDL, "OICI"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.HasPrefix(tt.sddl, "D:P(") {
				t.Errorf("%s: want a protected DACL (D:P) and nothing else", tt.sddl)
			}
			var sids []string
			for _, m := range ace.FindAllStringSubmatch(tt.sddl, -1) {
				f := strings.Split(m[1], ";")
				if len(f) != 6 || f[0] != "A" || f[1] != tt.flags || f[2] != "FA" || f[3] != "" || f[4] != "" {
					t.Errorf("entry %q: want (A;%s;FA;;;SID)", m[0], tt.flags)
					continue
				}
				sids = append(sids, f[5])
			}
			if slices.Sort(sids); !slices.Equal(sids, []string{"BA", "SY"}) {
				t.Errorf("%s grants %v, want BA and SY only", tt.sddl, sids)
			}
		})
	}
}

func TestMkdirPrivate(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Windows protection is an access list, not a mode")
	}
	tests := []struct {
		name     string
		existing os.FileMode // 0: the directory does not exist yet
	}{
		{name: "creates with parents"},
		{name: "tightens an open directory", existing: 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "Posture", "agent")
			if tt.existing != 0 {
				if err := os.MkdirAll(dir, tt.existing); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			if err := MkdirPrivate(dir); err != nil {
				t.Fatalf("MkdirPrivate: %v", err)
			}
			st, err := os.Stat(dir)
			if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
				t.Errorf("after MkdirPrivate: %v (%v), want a directory with mode 0700", st.Mode(), err)
			}
		})
	}
}
