//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) firewall(_ context.Context) *posturev1.Firewall {
	return &posturev1.Firewall{Meta: c.unsupported("the firewall is")}
}
