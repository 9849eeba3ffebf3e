package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// firewall reports the host firewall. It is not measured yet on any OS, so
// policy sees it as unknown rather than as disabled.
func (c *Collector) firewall(_ context.Context) *posturev1.Firewall {
	return &posturev1.Firewall{
		Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, "firewall state is not measured by this agent version"),
	}
}
