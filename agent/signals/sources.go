package signals

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

// errAccessDenied marks a source the agent lacks the privilege to read.
// Measurements that meet it report STATUS_UNAVAILABLE and name the
// privilege instead of guessing.
var errAccessDenied = errors.New("access denied")

// registryReader reads the Windows registry.
type registryReader interface {
	// Values returns the named values of key, a path that starts with its
	// hive ("HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion",
	// "HKU\S-1-5-21-…\Control Panel\Desktop"). REG_SZ and REG_EXPAND_SZ
	// values are strings, REG_DWORD and REG_QWORD values uint64. A value that
	// does not exist is absent from the map; a key that does not exist is an
	// error wrapping fs.ErrNotExist, one the agent may not open an error
	// wrapping errAccessDenied.
	Values(key string, names ...string) (map[string]any, error)
	// SubKeys lists the names of the subkeys of key.
	SubKeys(key string) ([]string, error)
}

// wmiQuerier runs Windows Management Instrumentation queries.
type wmiQuerier interface {
	// Query runs the WQL query in namespace ("ROOT\CIMV2") and appends the
	// rows to dst, a pointer to a slice of structs whose field names are
	// the selected properties. A property the class lacks leaves its field
	// zero. Access denied errors wrap errAccessDenied.
	Query(namespace, query string, dst any) error
	// EncryptableVolumes lists BitLocker's Win32_EncryptableVolume
	// instances with the results of their GetProtectionStatus,
	// GetConversionStatus, GetEncryptionMethod and GetKeyProtectors
	// methods.
	EncryptableVolumes() ([]encryptableVolume, error)
}

// encryptableVolume is one Win32_EncryptableVolume instance, with the
// outputs of the methods that report its live state (the cached
// ProtectionStatus property can be stale).
type encryptableVolume struct {
	DeviceID    string
	DriveLetter string // "C:", "" for a volume without a letter
	// VolumeType: 0 operating system volume, 1 fixed data volume, 2 portable
	// (removable) data volume.
	VolumeType uint32
	// ProtectionStatus from GetProtectionStatus: 0 protection off, 1 on,
	// 2 unknown (the volume is locked).
	ProtectionStatus uint32
	// ConversionStatus from GetConversionStatus: 0 fully decrypted, 1 fully
	// encrypted, 2 encryption in progress, 3 decryption in progress,
	// 4 encryption paused, 5 decryption paused.
	ConversionStatus     uint32
	EncryptionPercentage uint32
	// EncryptionFlags from GetConversionStatus: bit 0x1 means the volume
	// was (or is being) encrypted in data-only ("used space only") mode.
	EncryptionFlags uint32
	// WipingStatus from GetConversionStatus: 0 free space not wiped,
	// 1 wiped, 2 wiping, 3 wiping paused.
	WipingStatus uint32
	// EncryptionMethod from GetEncryptionMethod: 0 none, 1 AES-128 with
	// diffuser, 2 AES-256 with diffuser, 3 AES-128, 4 AES-256, 5 hardware,
	// 6 XTS-AES-128, 7 XTS-AES-256.
	EncryptionMethod uint32
	// KeyProtectorIDs from GetKeyProtectors: nil when they could not be
	// listed, empty when the volume has none (its key is then stored in
	// the clear).
	KeyProtectorIDs []string
	// MethodError is set when a method call on this volume failed.
	MethodError string
}

// errNoWindowsSource is returned where the registry or WMI is asked for on
// an OS that has none.
var errNoWindowsSource = fmt.Errorf("no Windows registry or WMI on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// regValues reads registry values, or fails on an OS without a registry.
func (c *Collector) regValues(key string, names ...string) (map[string]any, error) {
	if c.registry == nil {
		return nil, errNoWindowsSource
	}
	v, err := c.registry.Values(key, names...)
	if err != nil {
		return nil, fmt.Errorf("read registry %s: %w", key, err)
	}
	return v, nil
}

// wmiRows runs one WQL query under CommandTimeout.
func wmiRows[T any](ctx context.Context, c *Collector, namespace, query string) ([]T, error) {
	if c.wmi == nil {
		return nil, errNoWindowsSource
	}
	return withTimeout(ctx, c, fmt.Sprintf("WMI query %q in %s", query, namespace), func() ([]T, error) {
		var rows []T
		err := c.wmi.Query(namespace, query, &rows)
		return rows, err
	})
}

// withTimeout runs f under CommandTimeout. WMI calls cannot be cancelled,
// so one that hangs (a stuck WMI service) is abandoned, to finish in the
// background, rather than allowed to stall the report.
func withTimeout[T any](ctx context.Context, c *Collector, what string, f func() (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, c.commandTimeout)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return r.v, fmt.Errorf("%s: %w", what, r.err)
		}
		return r.v, nil
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("%s did not finish within %s: %w", what, c.commandTimeout, ctx.Err())
	}
}
