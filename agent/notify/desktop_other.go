//go:build !linux && !darwin && !windows

package notify

import (
	"errors"
	"fmt"
)

type otherDesktop struct{}

// New is this machine's desktop: none this agent can use.
func New() Desktop { return otherDesktop{} }

func (otherDesktop) Notify(string, string) error {
	return fmt.Errorf("desktop notifications on this operating system: %w", errors.ErrUnsupported)
}
