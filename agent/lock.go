package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// lockFileName is the file in the state directory a running agent holds
// locked: two agents on one state directory would end each other's report
// streams and race for its chain head, spool and certificate renewal.
const lockFileName = "agent.lock"

var errLocked = errors.New("locked")

// lockStateDir locks dir for this process until release is called. The
// lock goes with the process, so one that died leaves none behind.
func lockStateDir(dir string) (release func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state directory: %w", err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("another posture-agent is running with state directory %s (the service, or posture-agent run); stop it first", dir)
		}
		return nil, fmt.Errorf("lock state directory: %w", err)
	}
	return func() { f.Close() }, nil
}
