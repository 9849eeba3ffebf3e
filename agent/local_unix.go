//go:build !windows

package agent

import "os"

// restrictLocalDir has nothing to do: the socket's own mode says who may
// connect.
func restrictLocalDir(string) error { return nil }

// openLocalSocket lets every local user connect to the socket; the peer
// credentials say who it is.
func openLocalSocket(path string) error {
	return os.Chmod(path, 0o666)
}
