//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) measureUpdates(_ context.Context) *posturev1.Updates {
	return &posturev1.Updates{Meta: c.unsupported("pending updates are")}
}
