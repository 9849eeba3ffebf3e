package signals

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Linux disk encryption is read from sysfs, which needs no privilege: the
// device of / (and of every swap area) is walked down through the slaves/
// links of the block layer, and device-mapper nodes say through dm/uuid
// what they are. A volume is encrypted when every path from it to a disk
// crosses a dm-crypt layer.

// maxStackDepth bounds the walk; real stacks are a handful of layers deep,
// and the bound turns a malformed (cyclic) tree into "not encrypted".
const maxStackDepth = 16

func (c *Collector) diskEncryption(ctx context.Context) *posturev1.DiskEncryption {
	mounts, err := c.mounts()
	if err != nil {
		reason := fmt.Sprintf("cannot read the mount table: %v", err)
		return &posturev1.DiskEncryption{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, reason),
			OtherVolumes: &posturev1.OtherVolumes{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, reason)}}
	}
	root, ok := mountAt(mounts, "/")
	if !ok {
		reason := fmt.Sprintf("%s lists no mount of /", c.path("/proc/self/mountinfo"))
		return &posturev1.DiskEncryption{Meta: c.meta(posturev1.Status_STATUS_ERROR, reason),
			OtherVolumes: &posturev1.OtherVolumes{Meta: c.meta(posturev1.Status_STATUS_ERROR, reason)}}
	}
	others := c.fixedDataVolumes(ctx, mounts, root)
	rootVol, why := c.mountVolume(ctx, root)
	if rootVol == nil {
		return &posturev1.DiskEncryption{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, why), OtherVolumes: others}
	}
	volumes := []*posturev1.Volume{rootVol}
	systemEncrypted := rootVol.Encrypted

	swaps, err := c.swapVolumes(ctx, mounts)
	if err != nil {
		// Root was measured; unknown swap only means "not proven encrypted".
		swaps = []swapVolume{{vol: &posturev1.Volume{
			MountPoint: swapMountPoint,
			Detail:     fmt.Sprintf("cannot read the swap list (%v): swap counted as not encrypted", err),
		}, onDisk: true}}
	}
	for _, s := range swaps {
		volumes = append(volumes, s.vol)
		if s.onDisk && !s.vol.Encrypted {
			systemEncrypted = false
		}
	}
	return &posturev1.DiskEncryption{
		Meta:            c.meta(posturev1.Status_STATUS_OK, ""),
		SystemEncrypted: systemEncrypted,
		Volumes:         volumes,
		OtherVolumes:    others,
	}
}

// bootMountPoints hold the boot loader and kernels, which firmware must read
// before anything can be decrypted; they are not data volumes.
var bootMountPoints = map[string]bool{"/boot": true, "/boot/efi": true, "/efi": true}

// imageFSTypes are read-only images (snaps, ISO files, optical media)
// rather than data volumes.
var imageFSTypes = map[string]bool{"squashfs": true, "iso9660": true, "udf": true}

// fixedDataVolumes examines the fixed data volumes mounted besides /: every
// block-device filesystem once, skipping boot partitions, read-only images,
// loop devices, RAM disks and removable media. They do not decide
// system_encrypted.
func (c *Collector) fixedDataVolumes(ctx context.Context, mounts []mountEntry, root mountEntry) *posturev1.OtherVolumes {
	seen := map[string]bool{root.majMin: true}
	var vols []*posturev1.Volume
	for _, m := range mounts {
		if seen[m.majMin] || bootMountPoints[m.mountPoint] || imageFSTypes[m.fsType] {
			continue
		}
		seen[m.majMin] = true
		// ZFS datasets share their pool's devices and would be listed once
		// per dataset; they are not examined here.
		if m.fsType == "zfs" {
			continue
		}
		tree, device := c.blockTree(m)
		if tree == nil || tree.anyLeaf(func(n *blockNode) bool { return n.removable || n.layer == "loop" || n.inMemory }) {
			continue
		}
		vols = append(vols, newVolume(m.mountPoint, device, tree))
	}
	return &posturev1.OtherVolumes{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Volumes: vols}
}

// anyLeaf reports whether f holds for a device at the bottom of the stack.
func (n *blockNode) anyLeaf(f func(*blockNode) bool) bool {
	if len(n.children) == 0 {
		return f(n)
	}
	for _, ch := range n.children {
		if ch.anyLeaf(f) {
			return true
		}
	}
	return false
}

// mountEntry is the part of a /proc/self/mountinfo line the walk needs.
type mountEntry struct {
	majMin     string // st_dev of the filesystem, "253:1"
	mountPoint string
	fsType     string
	source     string // "/dev/mapper/vg-root", "overlay", "rpool/ROOT/ubuntu"
}

func (c *Collector) mounts() ([]mountEntry, error) {
	b, err := os.ReadFile(c.path("/proc/self/mountinfo"))
	if err != nil {
		return nil, err
	}
	mounts := parseMountinfo(b)
	if len(mounts) == 0 {
		return nil, fmt.Errorf("%s has no parsable lines: %w", c.path("/proc/self/mountinfo"), errEmpty)
	}
	return mounts, nil
}

// parseMountinfo parses proc(5) mountinfo lines:
// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue".
func parseMountinfo(b []byte) []mountEntry {
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// Optional fields end at a lone "-"; at least 6 fields precede it.
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+3 {
			continue
		}
		out = append(out, mountEntry{
			majMin:     f[2],
			mountPoint: unescapeOctal(f[4]),
			fsType:     f[sep+1],
			source:     unescapeOctal(f[sep+2]),
		})
	}
	return out
}

// mountAt returns the visible mount at mountPoint: the last one listed,
// since a later mount hides earlier ones on the same point.
func mountAt(mounts []mountEntry, mountPoint string) (mountEntry, bool) {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].mountPoint == mountPoint {
			return mounts[i], true
		}
	}
	return mountEntry{}, false
}

// mountContaining returns the mount that holds path (longest mount point).
func mountContaining(mounts []mountEntry, path string) (mountEntry, bool) {
	best, found := mountEntry{}, false
	for _, m := range mounts {
		inside := m.mountPoint == "/" || path == m.mountPoint || strings.HasPrefix(path, m.mountPoint+"/")
		if inside && (!found || len(m.mountPoint) >= len(best.mountPoint)) {
			best, found = m, true
		}
	}
	return best, found
}

// mountVolume examines the storage beneath a mount. It returns nil and a
// reason when it cannot tell whether that storage is encrypted.
func (c *Collector) mountVolume(ctx context.Context, m mountEntry) (*posturev1.Volume, string) {
	if m.fsType == "zfs" {
		return c.zfsVolume(ctx, m)
	}
	tree, device := c.blockTree(m)
	if tree == nil {
		return nil, fmt.Sprintf("%s is on %s (%s), not a block device: cannot tell whether the disk beneath is encrypted",
			m.mountPoint, m.fsType, m.majMin)
	}
	return newVolume(m.mountPoint, device, tree), ""
}

// blockTree walks the block devices beneath a mount, or returns nil when
// the filesystem does not sit on block devices it can see.
func (c *Collector) blockTree(m mountEntry) (tree *blockNode, device string) {
	devLink := "/sys/dev/block/" + m.majMin
	if exists(c.path(devLink)) {
		n := c.walk(c.path(devLink), 0)
		return n, "/dev/" + n.name
	}
	if m.fsType == "btrfs" {
		// btrfs reports an anonymous device number (0:xx) per filesystem; its
		// member devices are listed under /sys/fs/btrfs/<fsid>/devices.
		if n := c.btrfsTree(m.source); n != nil {
			return n, m.source
		}
	}
	return nil, ""
}

// btrfsTree returns a node whose children are all member devices of the
// btrfs filesystem that source belongs to, or nil when it cannot tell.
func (c *Collector) btrfsTree(source string) *blockNode {
	name, err := c.blockName(source)
	if err != nil {
		return nil
	}
	fsDirs, err := filepath.Glob(c.path("/sys/fs/btrfs/*/devices"))
	if err != nil {
		return nil
	}
	for _, dir := range fsDirs {
		if !exists(filepath.Join(dir, name)) {
			continue
		}
		members, err := os.ReadDir(dir)
		if err != nil || len(members) == 0 {
			return nil
		}
		n := &blockNode{name: "btrfs", layer: filepath.Base(filepath.Dir(dir))}
		for _, m := range members {
			n.children = append(n.children, c.walk(filepath.Join(dir, m.Name()), 1))
		}
		return n
	}
	return nil
}

// blockName finds the kernel name ("dm-2", "nvme0n1p3") of a device path as
// it appears in /proc/swaps or a mount source.
func (c *Collector) blockName(devPath string) (string, error) {
	base := filepath.Base(devPath)
	if exists(c.path("/sys/class/block/" + base)) {
		return base, nil
	}
	// /dev/mapper/NAME is usually a udev symlink to ../dm-N, but the name is
	// also published in sysfs, which works without /dev.
	if strings.HasPrefix(devPath, "/dev/mapper/") {
		nameFiles, _ := filepath.Glob(c.path("/sys/class/block/dm-*/dm/name"))
		for _, f := range nameFiles {
			if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == base {
				return filepath.Base(filepath.Dir(filepath.Dir(f))), nil
			}
		}
	}
	// /dev/disk/by-*/ and similar symlinks.
	if real, err := filepath.EvalSymlinks(c.path(devPath)); err == nil {
		if b := filepath.Base(real); exists(c.path("/sys/class/block/" + b)) {
			return b, nil
		}
	}
	// A device node with an unusual name: ask for its device number.
	if c.root == "/" {
		var st syscall.Stat_t
		if err := syscall.Stat(devPath, &st); err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
			link := fmt.Sprintf("/sys/dev/block/%d:%d", devMajor(uint64(st.Rdev)), devMinor(uint64(st.Rdev)))
			if real, err := filepath.EvalSymlinks(link); err == nil {
				return filepath.Base(real), nil
			}
		}
	}
	return "", fmt.Errorf("no block device in %s matches %s: %w", c.path("/sys/class/block"), devPath, fs.ErrNotExist)
}

// devMajor and devMinor decode a Linux dev_t (glibc's gnu_dev_major/minor).
func devMajor(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^0xfff }
func devMinor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^0xff }

// swapVolume is one examined swap area.
type swapVolume struct {
	vol *posturev1.Volume
	// onDisk is false for swap that never reaches a disk (zram without a
	// backing device); such swap does not decide system_encrypted.
	onDisk bool
}

// swapVolumes examines every active swap area listed in /proc/swaps.
func (c *Collector) swapVolumes(ctx context.Context, mounts []mountEntry) ([]swapVolume, error) {
	b, err := os.ReadFile(c.path("/proc/swaps"))
	if errors.Is(err, fs.ErrNotExist) {
		// A kernel built without swap support has no /proc/swaps.
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []swapVolume
	for _, s := range parseSwaps(b) {
		out = append(out, c.swapVolume(ctx, mounts, s))
	}
	return out, nil
}

type swapEntry struct {
	path string // "/dev/dm-2", "/swapfile"
	kind string // "partition" or "file"
}

// parseSwaps parses /proc/swaps: a header, then "Filename Type Size Used
// Priority" per line, with the kernel's octal escapes in Filename.
func parseSwaps(b []byte) []swapEntry {
	var out []swapEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] == "Filename" {
			continue
		}
		out = append(out, swapEntry{path: unescapeOctal(f[0]), kind: f[1]})
	}
	return out
}

func (c *Collector) swapVolume(ctx context.Context, mounts []mountEntry, s swapEntry) swapVolume {
	if s.kind == "file" {
		m, ok := mountContaining(mounts, s.path)
		if !ok {
			return swapVolume{vol: &posturev1.Volume{MountPoint: swapMountPoint, Device: s.path,
				Detail: fmt.Sprintf("swap file %s is on no listed mount: counted as not encrypted", s.path)}, onDisk: true}
		}
		v, why := c.mountVolume(ctx, m)
		if v == nil {
			return swapVolume{vol: &posturev1.Volume{MountPoint: swapMountPoint, Device: s.path,
				Detail: fmt.Sprintf("swap file %s: %s; counted as not encrypted", s.path, why)}, onDisk: true}
		}
		v.MountPoint = swapMountPoint
		v.Detail = fmt.Sprintf("swap file %s on %s: %s", s.path, m.mountPoint, v.Detail)
		return swapVolume{vol: v, onDisk: true}
	}

	name, err := c.blockName(s.path)
	if err != nil {
		return swapVolume{vol: &posturev1.Volume{MountPoint: swapMountPoint, Device: s.path,
			Detail: fmt.Sprintf("cannot find the block device of swap %s (%v): counted as not encrypted", s.path, err)}, onDisk: true}
	}
	tree := c.walk(c.path("/sys/class/block/"+name), 0)
	if tree.inMemory {
		return swapVolume{vol: &posturev1.Volume{MountPoint: swapMountPoint, Device: "/dev/" + tree.name,
			Detail: tree.label() + ": compressed RAM without a backing device; swapped pages never reach a disk"}}
	}
	return swapVolume{vol: newVolume(swapMountPoint, "/dev/"+tree.name, tree), onDisk: true}
}

// blockNode is one block device in the stack beneath a volume.
type blockNode struct {
	name      string // kernel name: "dm-0", "sda3", "md0"
	layer     string // what the device is, for details: "CRYPT-LUKS2", "LVM", "RAID1"
	method    string // the encryption method when this layer encrypts: "LUKS2"
	note      string // why the walk stopped here, when it stopped early
	inMemory  bool   // zram without a backing device
	removable bool   // a disk the kernel marks removable, or one attached by USB
	children  []*blockNode
}

// walk reads the block device at sysfs path p (a /sys/dev/block or
// /sys/class/block symlink, or a slaves/ entry) and everything beneath it.
func (c *Collector) walk(p string, depth int) *blockNode {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return &blockNode{name: filepath.Base(p), note: "unreadable"}
	}
	n := &blockNode{name: filepath.Base(real)}
	if depth >= maxStackDepth {
		n.note = "stack too deep"
		return n
	}

	switch {
	case exists(filepath.Join(real, "dm")):
		n.layer, n.method = dmLayer(readString(filepath.Join(real, "dm", "uuid")))
	case exists(filepath.Join(real, "md")):
		n.layer = cmp.Or(strings.ToUpper(readString(filepath.Join(real, "md", "level"))), "MD")
	case strings.HasPrefix(n.name, "zram"):
		n.layer = "zram"
		backing := readString(filepath.Join(real, "backing_dev"))
		n.inMemory = backing == "" || backing == "none"
	case strings.HasPrefix(n.name, "loop"):
		n.layer = "loop"
		if f := readString(filepath.Join(real, "loop", "backing_file")); f != "" {
			// The file's own filesystem is not followed: unknown stays unknown.
			n.note = "backed by file " + f
		}
	}

	if exists(filepath.Join(real, "partition")) {
		// A partition has no slaves/ of its own. Its disk is the directory
		// above; follow it only when that disk is itself stacked (md0p1).
		parent := filepath.Dir(real)
		if hasEntries(filepath.Join(parent, "slaves")) {
			n.children = []*blockNode{c.walk(parent, depth+1)}
		} else {
			n.removable = isRemovable(parent)
		}
		return n
	}

	slaves, err := os.ReadDir(filepath.Join(real, "slaves"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		n.note = "cannot list slaves"
		return n
	}
	for _, s := range slaves {
		n.children = append(n.children, c.walk(filepath.Join(real, "slaves", s.Name()), depth+1))
	}
	if len(n.children) == 0 {
		n.removable = isRemovable(real)
	}
	return n
}

// isRemovable reports whether the disk at sysfs directory dir is removable
// media. The kernel's removable attribute covers SD cards and most USB
// sticks; USB disks that claim to be fixed are caught by their place on a
// USB bus in the device path.
func isRemovable(dir string) bool {
	return readString(filepath.Join(dir, "removable")) == "1" || strings.Contains(dir, "/usb")
}

// dmLayer names a device-mapper device from its dm/uuid, which the tool
// that created it sets: cryptsetup "CRYPT-<TYPE>-<uuid>-<name>", LVM
// "LVM-<vg uuid><lv uuid>", multipath "mpath-<wwid>", kpartx "part<N>-…".
func dmLayer(uuid string) (layer, method string) {
	if rest, ok := strings.CutPrefix(uuid, "CRYPT-"); ok {
		typ, _, _ := strings.Cut(rest, "-")
		switch typ {
		case "", "VERITY", "INTEGRITY", "SUBDEV":
			// Integrity and verity protect, but do not hide, the data.
			return "CRYPT-" + typ, ""
		}
		return "CRYPT-" + typ, typ
	}
	switch {
	case uuid == "":
		return "dm", ""
	case strings.HasPrefix(uuid, "LVM-"):
		return "LVM", ""
	case strings.HasPrefix(uuid, "mpath-"):
		return "multipath", ""
	case strings.HasPrefix(uuid, "part"):
		return "partition", ""
	}
	prefix, _, _ := strings.Cut(uuid, "-")
	return "dm " + prefix, ""
}

// plainPath returns the first path from n down to a leaf that crosses no
// encryption layer, or nil when every path is encrypted.
func (n *blockNode) plainPath() []string {
	if n.method != "" {
		return nil
	}
	if len(n.children) == 0 {
		return []string{n.name}
	}
	for _, ch := range n.children {
		if p := ch.plainPath(); p != nil {
			return append([]string{n.name}, p...)
		}
	}
	return nil
}

// methods lists the encryption methods in the tree, sorted and unique.
func (n *blockNode) methods() []string {
	var out []string
	if n.method != "" {
		out = append(out, n.method)
	}
	for _, ch := range n.children {
		out = append(out, ch.methods()...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// stack renders the tree top-down: "dm-1 (LVM) <- dm-0 (CRYPT-LUKS2) <- sda3",
// with branches in braces: "md0 (RAID1) <- {sda1; dm-0 (CRYPT-LUKS2) <- sdb1}".
func (n *blockNode) stack() string {
	s := n.label()
	switch len(n.children) {
	case 0:
		return s
	case 1:
		return s + " <- " + n.children[0].stack()
	}
	parts := make([]string, len(n.children))
	for i, ch := range n.children {
		parts[i] = ch.stack()
	}
	return s + " <- {" + strings.Join(parts, "; ") + "}"
}

func (n *blockNode) label() string {
	s := n.name
	if n.layer != "" {
		s += " (" + n.layer + ")"
	}
	if n.note != "" {
		s += " [" + n.note + "]"
	}
	return s
}

// newVolume decides whether the tree under a volume is encrypted and
// explains the decision.
func newVolume(mountPoint, device string, tree *blockNode) *posturev1.Volume {
	v := &posturev1.Volume{MountPoint: mountPoint, Device: device, Detail: tree.stack()}
	switch p := tree.plainPath(); {
	case p == nil:
		v.Encrypted = true
		v.Method = strings.Join(tree.methods(), "+")
		v.Detail += ": every path to a disk crosses an encryption layer"
	case len(p) == 1:
		v.Detail += ": no encryption layer"
	default:
		v.Detail += ": no encryption layer on the path " + strings.Join(p, " <- ")
	}
	return v
}

// unescapeOctal undoes the \ooo escaping the kernel applies to paths in
// /proc/self/mountinfo and /proc/swaps (a space is \040).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// exists reports whether p exists, following symlinks.
func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// hasEntries reports whether directory p exists and is not empty.
func hasEntries(p string) bool {
	entries, err := os.ReadDir(p)
	return err == nil && len(entries) > 0
}

// readString reads a small sysfs attribute; a missing one reads as "".
func readString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
