package signals

import (
	"context"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// endpointProtection is not applicable on Linux: the OS ships no malware
// scanner comparable to Defender or XProtect, and third-party products
// are not examined.
func (c *Collector) endpointProtection(_ context.Context) *posturev1.EndpointProtection {
	return &posturev1.EndpointProtection{Meta: c.meta(posturev1.Status_STATUS_NOT_APPLICABLE,
		"Linux has no built-in endpoint protection; third-party products are not examined")}
}
