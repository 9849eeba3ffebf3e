package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// screenLock reports the screen lock. It is not measured yet on any OS, so
// policy sees it as unknown rather than as disabled.
func (c *Collector) screenLock(_ context.Context) *posturev1.ScreenLock {
	return &posturev1.ScreenLock{
		Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, "screen lock is not measured by this agent version"),
	}
}
