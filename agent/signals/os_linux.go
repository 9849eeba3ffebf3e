package signals

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"github.com/shirou/gopsutil/v4/host"
)

// osInfo reports the distribution from os-release and the running kernel.
// The kernel release is the build on Linux, so build stays empty.
func (c *Collector) osInfo(ctx context.Context) *posturev1.OSInfo {
	info := &posturev1.OSInfo{Platform: runtime.GOOS, Arch: runtime.GOARCH}
	var missing []string

	rel, err := c.osRelease()
	switch {
	case err == nil:
		// os-release(5): ID defaults to "linux"; rolling releases have no
		// VERSION_ID but may carry a BUILD_ID.
		info.Name = cmp.Or(rel["ID"], "linux")
		info.Version = cmp.Or(rel["VERSION_ID"], rel["BUILD_ID"])
	case c.root == "/":
		// Old distributions without os-release: gopsutil knows their
		// release files.
		platform, _, version, perr := host.PlatformInformationWithContext(ctx)
		if perr != nil || platform == "" {
			missing = append(missing, fmt.Sprintf("cannot tell the distribution: %v", err))
			break
		}
		info.Name, info.Version = platform, version
	default:
		missing = append(missing, fmt.Sprintf("cannot tell the distribution: %v", err))
	}

	kernel, err := c.kernelVersion(ctx)
	if err != nil {
		missing = append(missing, fmt.Sprintf("cannot tell the kernel version: %v", err))
	}
	info.KernelVersion = kernel
	info.Hostname = c.hostname()

	if len(missing) > 0 {
		info.Meta = c.meta(posturev1.Status_STATUS_UNAVAILABLE, strings.Join(missing, "; "))
		return info
	}
	info.Meta = c.meta(posturev1.Status_STATUS_OK, "")
	return info
}

// osRelease reads os-release(5) from its two standard places.
func (c *Collector) osRelease() (map[string]string, error) {
	var firstErr error
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		b, err := os.ReadFile(c.path(p))
		if err == nil {
			return parseOSRelease(b), nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, fmt.Errorf("read os-release: %w", firstErr)
}

// parseOSRelease parses the shell-like KEY=value lines of os-release(5).
func parseOSRelease(b []byte) map[string]string {
	out := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		out[strings.TrimSpace(key)] = unquoteShell(strings.TrimSpace(val))
	}
	return out
}

// unquoteShell undoes the quoting os-release allows: single quotes, or
// double quotes with backslash escapes.
func unquoteShell(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return v[1 : len(v)-1]
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		inner := v[1 : len(v)-1]
		var b strings.Builder
		for i := 0; i < len(inner); i++ {
			if inner[i] == '\\' && i+1 < len(inner) {
				i++
			}
			b.WriteByte(inner[i])
		}
		return b.String()
	}
	return v
}

// kernelVersion returns the running kernel release ("6.1.0-18-amd64").
func (c *Collector) kernelVersion(ctx context.Context) (string, error) {
	if c.root == "/" {
		if v, err := host.KernelVersionWithContext(ctx); err == nil && v != "" {
			return v, nil
		}
	}
	return c.readTrimmed("/proc/sys/kernel/osrelease")
}

// hostname is informational: a failure leaves it empty.
func (c *Collector) hostname() string {
	if c.root == "/" {
		h, _ := os.Hostname()
		return h
	}
	h, _ := c.readTrimmed("/proc/sys/kernel/hostname")
	return h
}

// readTrimmed reads a one-value file under Root.
func (c *Collector) readTrimmed(p string) (string, error) {
	b, err := os.ReadFile(c.path(p))
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s is empty: %w", c.path(p), errEmpty)
	}
	return v, nil
}

var errEmpty = errors.New("empty file")
