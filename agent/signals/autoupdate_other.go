//go:build !linux && !darwin && !windows

package signals

import "context"

func (c *Collector) autoUpdate(_ context.Context) autoUpdate {
	return autoUpdate{meta: c.unsupported("automatic updates are")}
}
