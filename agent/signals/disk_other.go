//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) diskEncryption(_ context.Context) *posturev1.DiskEncryption {
	return &posturev1.DiskEncryption{Meta: c.unsupported("disk encryption is"),
		OtherVolumes: &posturev1.OtherVolumes{Meta: c.unsupported("disk encryption is")}}
}
