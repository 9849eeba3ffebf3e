package signals

import (
	"context"
	"os"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"golang.org/x/sys/unix"
)

// On macOS every signal is measured by the functions in *_macos_anyos.go through
// the Runner; this file only binds them and supplies what needs a system
// call.

func (c *Collector) osInfo(ctx context.Context) *posturev1.OSInfo {
	kernel, _ := unix.Sysctl("kern.osrelease")
	host, _ := os.Hostname()
	return c.macOSInfo(ctx, kernel, host)
}

func (c *Collector) diskEncryption(ctx context.Context) *posturev1.DiskEncryption {
	mountPoint, device := dataVolume()
	return c.macDiskEncryption(ctx, mountPoint, device)
}

func (c *Collector) secureBoot(ctx context.Context) *posturev1.SecureBoot {
	return c.macSecureBoot(ctx, appleSilicon())
}

func (c *Collector) measureUpdates(ctx context.Context) *posturev1.Updates { return c.macUpdates(ctx) }

func (c *Collector) firewall(ctx context.Context) *posturev1.Firewall { return c.macFirewall(ctx) }

func (c *Collector) screenLock(ctx context.Context) *posturev1.ScreenLock {
	return c.macScreenLock(ctx)
}

func (c *Collector) endpointProtection(ctx context.Context) *posturev1.EndpointProtection {
	return c.macEndpointProtection(ctx)
}

func (c *Collector) autoUpdate(ctx context.Context) *posturev1.AutoUpdate {
	return c.macAutoUpdate(ctx)
}

// appleSilicon reports an Apple silicon Mac, also when an Intel build of
// the agent runs under Rosetta.
func appleSilicon() bool {
	v, err := unix.SysctlUint32("hw.optional.arm64")
	return err == nil && v == 1
}

// dataVolume finds the volume FileVault protects: the one mounted at
// /System/Volumes/Data since macOS 10.15, / before.
func dataVolume() (mountPoint, device string) {
	n, err := unix.Getfsstat(nil, unix.MNT_NOWAIT)
	if err != nil || n == 0 {
		return "/", ""
	}
	buf := make([]unix.Statfs_t, n)
	if n, err = unix.Getfsstat(buf, unix.MNT_NOWAIT); err != nil {
		return "/", ""
	}
	for _, want := range []string{"/System/Volumes/Data", "/"} {
		for _, fs := range buf[:n] {
			if unix.ByteSliceToString(fs.Mntonname[:]) == want {
				return want, unix.ByteSliceToString(fs.Mntfromname[:])
			}
		}
	}
	return "/", ""
}
