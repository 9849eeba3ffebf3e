package signals

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// zfsVolume examines a mounted ZFS dataset. ZFS native encryption is a
// dataset property; without it, the pool's devices may still sit on
// dm-crypt (ZFS on LUKS), which the block-device walk decides.
func (c *Collector) zfsVolume(ctx context.Context, m mountEntry) (*posturev1.Volume, string) {
	dataset := m.source
	args := []string{"get", "-H", "-p", "-o", "property,value", "encryption,keystatus,encryptionroot", dataset}
	stdout, stderr, code, err := c.run(ctx, "zfs", args...)
	if err != nil {
		return nil, fmt.Sprintf("%s is on zfs (%s): %v", m.mountPoint, dataset, err)
	}
	if code != 0 {
		return nil, fmt.Sprintf("%s is on zfs (%s): %v", m.mountPoint, dataset, commandError("zfs", args, code, stderr, stdout))
	}
	props := parseZFSGet(stdout)
	if enc := props["encryption"]; enc != "" && enc != "off" {
		v := &posturev1.Volume{MountPoint: m.mountPoint, Device: dataset, Method: "ZFS " + enc,
			Detail: fmt.Sprintf("zfs dataset %s: native encryption %s, encryption root %s, key %s",
				dataset, enc, props["encryptionroot"], props["keystatus"])}
		// A mounted dataset whose key is not loaded cannot happen; anything
		// but "available" is not understood and so not trusted.
		v.Encrypted = props["keystatus"] == "available"
		return v, ""
	}

	pool, _, _ := strings.Cut(dataset, "/")
	args = []string{"status", "-P", "-L", pool}
	stdout, stderr, code, err = c.run(ctx, "zpool", args...)
	if err != nil {
		return nil, fmt.Sprintf("%s is on zfs dataset %s without native encryption, and its pool's devices cannot be listed: %v",
			m.mountPoint, dataset, err)
	}
	if code != 0 {
		return nil, fmt.Sprintf("%s is on zfs dataset %s without native encryption, and its pool's devices cannot be listed: %v",
			m.mountPoint, dataset, commandError("zpool", args, code, stderr, stdout))
	}
	paths := parseZpoolStatus(stdout)
	if len(paths) == 0 {
		return nil, fmt.Sprintf("%s is on zfs dataset %s without native encryption, and zpool status lists no devices for pool %s",
			m.mountPoint, dataset, pool)
	}
	tree := &blockNode{name: pool, layer: "zpool"}
	for _, p := range paths {
		name, err := c.blockName(p)
		if err != nil {
			tree.children = append(tree.children, &blockNode{name: p, note: "not found in sysfs"})
			continue
		}
		tree.children = append(tree.children, c.walk(c.path("/sys/class/block/"+name), 1))
	}
	v := newVolume(m.mountPoint, dataset, tree)
	v.Detail = fmt.Sprintf("zfs dataset %s (native encryption off) on %s", dataset, v.Detail)
	return v, ""
}

// parseZFSGet reads "zfs get -H -o property,value" output: one
// tab-separated property and value per line.
func parseZFSGet(b []byte) map[string]string {
	out := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "\t")
		if ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// parseZpoolStatus lists the device paths of a pool from "zpool status -P
// -L": the config table names every vdev, leaves by absolute path. Hot
// spares hold no data until they replace a device, so they are skipped;
// log and cache devices hold data and count.
func parseZpoolStatus(b []byte) []string {
	var paths []string
	inTable, spares := false, false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
			if inTable && len(paths) > 0 {
				return paths
			}
			continue
		case f[0] == "NAME" && len(f) > 1 && f[1] == "STATE":
			inTable = true
			continue
		case !inTable:
			continue
		case f[0] == "errors:":
			return paths
		case len(f) == 1 && (f[0] == "logs" || f[0] == "cache" || f[0] == "special" || f[0] == "dedup"):
			spares = false
			continue
		case len(f) == 1 && f[0] == "spares":
			spares = true
			continue
		}
		if strings.HasPrefix(f[0], "/") && !spares {
			paths = append(paths, f[0])
		}
	}
	return paths
}
