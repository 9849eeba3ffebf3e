package signals

import (
	"context"
	"os"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"golang.org/x/sys/windows"
)

// On Windows every signal is measured by the functions in *_windows_anyos.go through
// the registry and WMI (sources_windows.go); this file only binds them and
// supplies the system drive.

func (c *Collector) osInfo(_ context.Context) *posturev1.OSInfo {
	host, _ := os.Hostname()
	return c.winOSInfo(host)
}

func (c *Collector) diskEncryption(ctx context.Context) *posturev1.DiskEncryption {
	return c.winDiskEncryption(ctx, systemDrive())
}

func (c *Collector) secureBoot(_ context.Context) *posturev1.SecureBoot { return c.winSecureBoot() }

func (c *Collector) measureUpdates(_ context.Context) *posturev1.Updates { return c.winUpdates() }

func (c *Collector) measureLastInstalled(ctx context.Context) *posturev1.InstalledUpdate {
	return c.winLastInstalled(ctx)
}

func (c *Collector) firewall(_ context.Context) *posturev1.Firewall { return c.winFirewall() }

func (c *Collector) screenLock(_ context.Context) *posturev1.ScreenLock { return c.winScreenLock() }

func (c *Collector) endpointProtection(ctx context.Context) *posturev1.EndpointProtection {
	return c.winEndpointProtection(ctx)
}

func (c *Collector) autoUpdate(_ context.Context) *posturev1.AutoUpdate { return c.winAutoUpdate() }

// systemDrive is the drive Windows runs from ("C:"): %SystemDrive%, or the
// drive of the Windows directory when a service starts without it.
func systemDrive() string {
	if d := os.Getenv("SystemDrive"); len(d) == 2 && d[1] == ':' {
		return d
	}
	if dir, err := windows.GetSystemWindowsDirectory(); err == nil && len(dir) >= 2 && dir[1] == ':' {
		return dir[:2]
	}
	return "C:"
}
