package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Count is how many entries the spool in dir holds, read without opening
// it (which would repair it): for a status display while the agent runs.
// A missing directory holds none.
func Count(dir string) (int, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("spool: read directory: %w", err)
	}
	n := 0
	for _, de := range des {
		if _, ok := parseName(de.Name()); ok && de.Type().IsRegular() {
			n++
		}
	}
	return n, nil
}
