//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) screenLock(_ context.Context) *posturev1.ScreenLock {
	return &posturev1.ScreenLock{Meta: c.unsupported("the screen lock is")}
}
