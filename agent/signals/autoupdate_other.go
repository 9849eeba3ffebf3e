//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) autoUpdate(_ context.Context) *posturev1.AutoUpdate {
	return &posturev1.AutoUpdate{Meta: c.unsupported("automatic updates are")}
}
