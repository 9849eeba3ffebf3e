//go:build !linux

package main

import (
	"errors"
	"fmt"
)

func notifyBus(string, string, string) error {
	return fmt.Errorf("notify through a session bus: %w", errors.ErrUnsupported)
}
