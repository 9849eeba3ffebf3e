package signals

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/godbus/dbus/v5"
)

// systemd, logind and firewalld are asked over the D-Bus system bus with
// github.com/godbus/dbus/v5 rather than through systemctl, loginctl and
// busctl: each of those costs a process (10–25 ms of CPU), and their text
// is not an interface. One connection is kept for the agent's life and
// dialed again after it breaks.

// systemBusSocket is where the system bus listens (D-Bus specification,
// "Well-known Message Bus Instances").
const systemBusSocket = "/run/dbus/system_bus_socket"

// errNoSystemBus marks a machine where the system bus cannot be reached:
// no dbus-daemon or dbus-broker runs, as in containers and on machines
// without systemd.
var errNoSystemBus = errors.New("no D-Bus system bus")

// systemBus is the agent's connection to the system bus.
type systemBus struct {
	addr string
	mu   sync.Mutex
	conn *dbus.Conn
}

// busAddress is Options.SystemBus, else $DBUS_SYSTEM_BUS_ADDRESS for the
// running system, else the standard socket under Root.
func busAddress(opts Options, root string) string {
	if opts.SystemBus != "" {
		return opts.SystemBus
	}
	if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" && root == "/" {
		return a
	}
	return "unix:path=" + filepath.Join(root, systemBusSocket)
}

// get returns the connection, dialing it when there is none or it broke.
func (b *systemBus) get(ctx context.Context) (*dbus.Conn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil && b.conn.Connected() {
		return b.conn, nil
	}
	// The connection outlives this call: only the dial is bounded by ctx.
	conn, err := dbus.Dial(b.addr)
	if err == nil {
		done := make(chan error, 1)
		go func() {
			if err := conn.Auth(nil); err != nil {
				done <- err
				return
			}
			done <- conn.Hello()
		}()
		select {
		case err = <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			conn.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w at %s (%v)", errNoSystemBus, b.addr, err)
	}
	b.conn = conn
	return conn, nil
}

// call calls method on the object at path of the service dest and stores
// the reply in out.
func (c *Collector) busCall(ctx context.Context, dest string, path dbus.ObjectPath, method string, out []any, args ...any) error {
	conn, err := c.sys.bus.get(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.commandTimeout)
	defer cancel()
	call := conn.Object(dest, path).CallWithContext(ctx, method, 0, args...)
	if call.Err != nil {
		return fmt.Errorf("%s: %w", method, call.Err)
	}
	return call.Store(out...)
}

// busErrorName is the D-Bus error name of err, "" when it is none.
func busErrorName(err error) string {
	var de dbus.Error
	if errors.As(err, &de) {
		return de.Name
	}
	var dp *dbus.Error
	if errors.As(err, &dp) {
		return dp.Name
	}
	return ""
}

// serviceMissing reports an answer saying no program owns the service's
// name and none can be started for it.
func serviceMissing(err error) bool {
	switch busErrorName(err) {
	case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
		return true
	}
	return false
}
