//go:build !linux && !darwin && !windows

package signals

import "context"

func (c *Collector) endpointProtection(_ context.Context) endpointProtection {
	return endpointProtection{meta: c.unsupported("endpoint protection is")}
}
