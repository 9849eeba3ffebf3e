//go:build !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// platformSources returns no registry and no WMI: they exist on Windows
// only.
func platformSources() (registryReader, wmiQuerier) { return nil, nil }

// measureLastInstalled is measured on Windows only: elsewhere the newest
// installed package says little about the OS patch level, which the OS
// version and the pending updates tell.
func (c *Collector) measureLastInstalled(_ context.Context) *posturev1.InstalledUpdate {
	return &posturev1.InstalledUpdate{Meta: c.meta(posturev1.Status_STATUS_NOT_APPLICABLE,
		"the newest installed update is measured on Windows only; here the OS version and the pending updates give the patch level")}
}
