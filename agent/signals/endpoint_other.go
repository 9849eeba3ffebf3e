//go:build !linux && !darwin && !windows

package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func (c *Collector) endpointProtection(_ context.Context) *posturev1.EndpointProtection {
	return &posturev1.EndpointProtection{Meta: c.unsupported("endpoint protection is")}
}
