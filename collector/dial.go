package collector

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// DialAdmin connects to the admin socket of the collector running with
// dataDir. The socket's file mode is the credential, so no TLS is needed.
func DialAdmin(dataDir string) (*grpc.ClientConn, error) {
	sock := filepath.Join(dataDir, AdminSocket)
	if _, err := os.Stat(sock); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no collector is running with data directory %s (no %s); start one with: posture-collector run --data-dir %s", dataDir, AdminSocket, dataDir)
		}
		return nil, fmt.Errorf("admin socket: %w (admin commands need the same user as the collector, usually root)", err)
	}
	abs, err := filepath.Abs(sock)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
}
