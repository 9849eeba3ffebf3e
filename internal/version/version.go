// Package version says which build of Posture this is. `make build` and
// `make package` set it from git describe and the commit:
//
//	go build -ldflags "-X github.com/posture-project/posture/internal/version.version=1.2.3 -X github.com/posture-project/posture/internal/version.commit=abc123…"
//
// A build without them (go build, go install module@version) falls back to
// what the Go toolchain recorded in the binary.
package version

import (
	"runtime/debug"
	"strings"
)

// Set by the linker (-X); empty in a plain go build.
var (
	version string
	commit  string
)

// Version is this build's version, such as 1.2.3 or 1.2.3-4-gabc1234
// (4 commits after v1.2.3), without a leading v; "devel" when unknown.
func Version() string {
	if version != "" {
		return strings.TrimPrefix(version, "v")
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return strings.TrimPrefix(bi.Main.Version, "v")
	}
	return "devel"
}

// Commit is the commit this build was made from, "" when unknown.
func Commit() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" && dirty {
			rev += "-dirty"
		}
		return rev
	}
	return ""
}

// String is the version and commit as --version prints them:
// "1.2.3 (commit 0123abc)".
func String() string {
	c := Commit()
	if c == "" {
		return Version()
	}
	if len(c) > 12 && !strings.HasSuffix(c, "-dirty") {
		c = c[:12]
	}
	return Version() + " (commit " + c + ")"
}
