//go:build !windows

package signals

import "context"

// platformSources returns no registry and no WMI: they exist on Windows
// only.
func platformSources() (registryReader, wmiQuerier) { return nil, nil }

// measureLastInstalled is measured on Windows only: elsewhere the newest
// installed package says little about the OS patch level.
func (c *Collector) measureLastInstalled(_ context.Context) lastInstalledUpdate {
	return lastInstalledUpdate{}
}
