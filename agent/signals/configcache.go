package signals

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/proto"
)

// configMaxAge bounds how long a configuration-derived measurement is
// reused even when its files look unchanged: package upgrades can change
// defaults in places the stamp does not cover.
const configMaxAge = time.Hour

// configCache reuses a measurement that depends only on configuration files
// until one of them changes, so that tools costing tens of milliseconds of
// CPU (apt-config, systemctl) do not run every cycle.
type configCache struct {
	mu      sync.Mutex
	entries map[string]configEntry
}

type configEntry struct {
	stamp string
	at    time.Time
	value any
}

// get returns the value stored under key when its stamp is unchanged and it
// is younger than configMaxAge.
func (cc *configCache) get(key, stamp string, now time.Time) (any, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	e, ok := cc.entries[key]
	if !ok || e.stamp != stamp || now.Sub(e.at) >= configMaxAge {
		return nil, false
	}
	return e.value, true
}

func (cc *configCache) put(key, stamp string, now time.Time, v any) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.entries == nil {
		cc.entries = make(map[string]configEntry)
	}
	cc.entries[key] = configEntry{stamp: stamp, at: now, value: v}
}

// cachedConfig reuses the measurement stored under key while stamp is
// unchanged, renewing its observation time: the agent has checked now that
// nothing it depends on changed. Only a measurement that succeeded (OK or
// not applicable) is kept; a failure is measured again next time.
func cachedConfig[T section](c *Collector, key, stamp string, measure func() T) T {
	now := c.now()
	if v, ok := c.config.get(key, stamp, now); ok {
		return renewed(v.(T), now)
	}
	s := measure()
	if st := s.GetMeta().GetStatus(); st == posturev1.Status_STATUS_OK || st == posturev1.Status_STATUS_NOT_APPLICABLE {
		c.config.put(key, stamp, now, proto.Clone(s))
	}
	return s
}

// fileStamp summarizes the modification times and sizes of paths, and of
// the entries of those that are directories (symlinks are not followed:
// systemd enables and masks units with symlinks). A missing path stamps
// as "-", so creating it changes the stamp.
func fileStamp(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			fmt.Fprintf(&b, "%s:-;", p)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d;", p, st.ModTime().UnixNano(), st.Size())
		if !st.IsDir() {
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if info, err := e.Info(); err == nil {
				fmt.Fprintf(&b, "%s:%d:%d;", filepath.Join(p, e.Name()), info.ModTime().UnixNano(), info.Size())
			}
		}
	}
	return b.String()
}
