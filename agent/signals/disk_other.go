//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) diskEncryption(_ context.Context) (*posturev1.DiskEncryption, otherVolumes) {
	return &posturev1.DiskEncryption{Meta: c.unsupported("disk encryption is")},
		otherVolumes{meta: c.unsupported("disk encryption is")}
}
