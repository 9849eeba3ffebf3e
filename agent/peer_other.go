//go:build !linux && !darwin && !windows

package agent

import (
	"errors"
	"net"
)

// peerUser is unsupported here: the local socket answers nobody.
func peerUser(net.Conn) (string, error) {
	return "", errors.Join(errNoPeerCred, errors.ErrUnsupported)
}
