//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) secureBoot(_ context.Context) *posturev1.SecureBoot {
	return &posturev1.SecureBoot{Meta: c.unsupported("secure boot is")}
}
