//go:build !linux && !darwin && !windows

package signals

import (
	"context"
	"os"
	"runtime"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// osInfo reports what the Go runtime knows; the product name and version
// need per-OS code this build does not have.
func (c *Collector) osInfo(_ context.Context) *posturev1.OSInfo {
	info := &posturev1.OSInfo{
		Meta:     c.unsupported("the operating system name and version are"),
		Platform: runtime.GOOS,
		Arch:     runtime.GOARCH,
	}
	if h, err := os.Hostname(); err == nil {
		info.Hostname = h
	}
	return info
}
