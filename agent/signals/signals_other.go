//go:build !linux && !darwin && !windows

package signals

import (
	"fmt"
	"runtime"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// unsupported is the SignalMeta of a signal this build does not measure on
// this OS: the report-level form of errors.ErrUnsupported. what carries its
// verb ("disk encryption is").
func (c *Collector) unsupported(what string) *posturev1.SignalMeta {
	return c.meta(posturev1.Status_STATUS_UNAVAILABLE,
		fmt.Sprintf("%s not measured on %s by this agent version", what, runtime.GOOS))
}
