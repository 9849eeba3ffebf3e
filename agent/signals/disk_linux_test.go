package signals

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

// unpackTxtar materializes a testdata/sysfs/<case>.txtar archive (see
// make-sysfs-fixtures.sh) as a filesystem root in a temporary directory. A
// section holding "-> target" becomes a symlink.
func unpackTxtar(t *testing.T, archive string) string {
	t.Helper()
	b, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	var name string
	var content bytes.Buffer
	flush := func() {
		if name == "" {
			return
		}
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content.String(), "-> "); ok && strings.Count(target, "\n") == 1 {
			if err := os.Symlink(strings.TrimSuffix(target, "\n"), p); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(p, content.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		content.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-- ") && strings.HasSuffix(line, " --") && len(line) > 6 {
			flush()
			name = line[3 : len(line)-3]
			continue
		}
		if name != "" {
			content.WriteString(line + "\n")
		}
	}
	flush()
	return root
}

func TestDiskEncryption(t *testing.T) {
	const luks = "/dev/mapper/luks-3f6a2c1e-8d4b-4f0a-9e27-5b1c0d9a7e42"
	const allEncrypted = ": every path to a disk crosses an encryption layer"
	ok := func(systemEncrypted bool, vols ...*posturev1.Volume) *posturev1.DiskEncryption {
		return &posturev1.DiskEncryption{
			Meta:            metaAt(testTime, posturev1.Status_STATUS_OK, ""),
			SystemEncrypted: systemEncrypted,
			Volumes:         vols,
		}
	}
	tests := []struct {
		fixture string
		want    *posturev1.DiskEncryption
	}{
		{"plain-disk", ok(false,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/sda2", Detail: "sda2: no encryption layer"})},
		{"virtio-vm", ok(false,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/vda", Detail: "vda: no encryption layer"})},
		{"luks2-root", ok(true,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/dm-0", Encrypted: true, Method: "LUKS2",
				Detail: "dm-0 (CRYPT-LUKS2) <- nvme0n1p3" + allEncrypted})},
		{"lvm-on-luks", ok(true,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/dm-1", Encrypted: true, Method: "LUKS2",
				Detail: "dm-1 (LVM) <- dm-0 (CRYPT-LUKS2) <- sda3" + allEncrypted},
			&posturev1.Volume{MountPoint: "[SWAP]", Device: "/dev/dm-2", Encrypted: true, Method: "LUKS2",
				Detail: "dm-2 (LVM) <- dm-0 (CRYPT-LUKS2) <- sda3" + allEncrypted})},
		{"raid-one-leg", ok(false,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/md0",
				Detail: "md0 (RAID1) <- {dm-0 (CRYPT-LUKS2) <- sdb1; sda1}: no encryption layer on the path md0 <- sda1"})},
		{"verity-root", ok(false,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/dm-0",
				Detail: "dm-0 (CRYPT-VERITY) <- {sda2; sda3}: no encryption layer on the path dm-0 <- sda2"})},
		{"luks-root-plain-swap", ok(false,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/dm-0", Encrypted: true, Method: "LUKS2",
				Detail: "dm-0 (CRYPT-LUKS2) <- nvme0n1p2" + allEncrypted},
			&posturev1.Volume{MountPoint: "[SWAP]", Device: "/dev/nvme0n1p3", Detail: "nvme0n1p3: no encryption layer"})},
		{"luks-root-swapfile", ok(true,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/dm-0", Encrypted: true, Method: "LUKS1",
				Detail: "dm-0 (CRYPT-LUKS1) <- sda2" + allEncrypted},
			&posturev1.Volume{MountPoint: "[SWAP]", Device: "/dev/dm-0", Encrypted: true, Method: "LUKS1",
				Detail: "swap file /swap.img on /: dm-0 (CRYPT-LUKS1) <- sda2" + allEncrypted})},
		{"luks-integrity", ok(true,
			&posturev1.Volume{MountPoint: "/", Device: "/dev/dm-1", Encrypted: true, Method: "LUKS2",
				Detail: "dm-1 (CRYPT-LUKS2) <- dm-0 (CRYPT-SUBDEV) <- sda2" + allEncrypted})},
		{"btrfs-luks-zram", ok(true,
			&posturev1.Volume{MountPoint: "/", Device: luks, Encrypted: true, Method: "LUKS2",
				Detail: "btrfs (0b7c2e4f-3a1d-4c6e-8f90-1a2b3c4d5e6f) <- dm-0 (CRYPT-LUKS2) <- nvme0n1p3" + allEncrypted},
			&posturev1.Volume{MountPoint: "[SWAP]", Device: "/dev/zram0",
				Detail: "zram0 (zram): compressed RAM without a backing device; swapped pages never reach a disk"})},
		{"overlay-root", &posturev1.DiskEncryption{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
			"/ is on overlay (0:52), not a block device: cannot tell whether the disk beneath is encrypted")}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			root := unpackTxtar(t, filepath.Join("testdata", "sysfs", tt.fixture+".txtar"))
			c := New(Options{Root: root, Now: fixedNow})
			got := c.diskEncryption(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), ignoreOtherVolumes); diff != "" {
				t.Errorf("diskEncryption (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDiskEncryptionNoMountTable(t *testing.T) {
	c := New(Options{Root: t.TempDir(), Now: fixedNow})
	got := c.diskEncryption(context.Background())
	if got.GetMeta().GetStatus() != posturev1.Status_STATUS_UNAVAILABLE || got.GetSystemEncrypted() {
		t.Errorf("got %v, want STATUS_UNAVAILABLE and not encrypted", got)
	}
	if !strings.Contains(got.GetMeta().GetReason(), "mountinfo") {
		t.Errorf("reason %q does not name the mount table", got.GetMeta().GetReason())
	}
}

func TestDMLayer(t *testing.T) {
	tests := []struct {
		uuid, layer, method string
	}{
		{"CRYPT-LUKS2-3f6a2c1e8d4b4f0a9e275b1c0d9a7e42-root", "CRYPT-LUKS2", "LUKS2"},
		{"CRYPT-LUKS1-3f6a2c1e8d4b4f0a9e275b1c0d9a7e42-root", "CRYPT-LUKS1", "LUKS1"},
		{"CRYPT-PLAIN-cryptswap", "CRYPT-PLAIN", "PLAIN"},
		{"CRYPT-BITLK-3f6a2c1e8d4b4f0a9e275b1c0d9a7e42-win", "CRYPT-BITLK", "BITLK"},
		{"CRYPT-TCRYPT-vc", "CRYPT-TCRYPT", "TCRYPT"},
		{"CRYPT-VERITY-3f6a2c1e8d4b4f0a9e275b1c0d9a7e42-root", "CRYPT-VERITY", ""},
		{"CRYPT-INTEGRITY-data", "CRYPT-INTEGRITY", ""},
		{"CRYPT-SUBDEV-3f6a2c1e8d4b4f0a9e275b1c0d9a7e42-root_dif", "CRYPT-SUBDEV", ""},
		{"LVM-cX3Jp0fTq7vN2kLw9sYb4dRz1mHa6eUgQ8oPi5tKj3nVc7xBy2lWs0fDr4aZe9hM", "LVM", ""},
		{"mpath-3600508b400105e210000900000490000", "multipath", ""},
		{"part1-mpath-3600508b400105e210000900000490000", "partition", ""},
		{"", "dm", ""},
		{"stratis-1-private-abc", "dm stratis", ""},
	}
	for _, tt := range tests {
		t.Run(tt.uuid, func(t *testing.T) {
			layer, method := dmLayer(tt.uuid)
			if layer != tt.layer || method != tt.method {
				t.Errorf("dmLayer(%q) = %q, %q; want %q, %q", tt.uuid, layer, method, tt.layer, tt.method)
			}
		})
	}
}

func TestParseMountinfo(t *testing.T) {
	in := "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n" +
		"garbage\n"
	want := []mountEntry{
		{majMin: "98:0", mountPoint: "/mnt two", fsType: "ext3", source: "/dev/root"},
		{majMin: "254:0", mountPoint: "/", fsType: "ext4", source: "/dev/vda"},
	}
	got := parseMountinfo([]byte(in))
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(mountEntry{})); diff != "" {
		t.Errorf("parseMountinfo (-want +got):\n%s", diff)
	}
}

func TestParseSwaps(t *testing.T) {
	in := "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" +
		"/dev/dm-2                               partition\t998396\t\t0\t\t-2\n" +
		"/swap\\040file                           file\t\t2097148\t\t0\t\t-3\n"
	want := []swapEntry{{path: "/dev/dm-2", kind: "partition"}, {path: "/swap file", kind: "file"}}
	got := parseSwaps([]byte(in))
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(swapEntry{})); diff != "" {
		t.Errorf("parseSwaps (-want +got):\n%s", diff)
	}
}

func TestOtherVolumes(t *testing.T) {
	root := unpackTxtar(t, filepath.Join("testdata", "sysfs", "data-disks.txtar"))
	c := New(Options{Root: root, Now: fixedNow})
	disk := c.diskEncryption(context.Background())
	if !disk.GetSystemEncrypted() || len(disk.GetVolumes()) != 1 {
		t.Errorf("system volume: %v, want / encrypted and nothing else", disk)
	}
	want := &posturev1.OtherVolumes{
		Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""),
		Volumes: []*posturev1.Volume{
			{MountPoint: "/home", Device: "/dev/sdb1", Detail: "sdb1: no encryption layer"},
			{MountPoint: "/srv", Device: "/dev/dm-1", Encrypted: true, Method: "LUKS2",
				Detail: "dm-1 (CRYPT-LUKS2) <- sdc1: every path to a disk crosses an encryption layer"},
		},
	}
	if diff := cmp.Diff(want, disk.GetOtherVolumes(), protocmp.Transform()); diff != "" {
		t.Errorf("other volumes (-want +got):\n%s", diff)
	}
}

func TestDiskEncryptionBtrfsRaid(t *testing.T) {
	root := unpackTxtar(t, filepath.Join("testdata", "sysfs", "btrfs-raid1-one-plain.txtar"))
	got := New(Options{Root: root, Now: fixedNow}).diskEncryption(context.Background())
	want := &posturev1.DiskEncryption{
		Meta: metaAt(testTime, posturev1.Status_STATUS_OK, ""),
		Volumes: []*posturev1.Volume{{MountPoint: "/", Device: "/dev/mapper/cryptroot",
			Detail: "btrfs (5d1e8c3a-7b2f-4e60-9a1d-3c4b5a6f7e80) <- {dm-0 (CRYPT-LUKS2) <- sda2; sdb2}: " +
				"no encryption layer on the path btrfs <- sdb2"}},
	}
	if diff := cmp.Diff(want, got, protocmp.Transform(), ignoreOtherVolumes); diff != "" {
		t.Errorf("diskEncryption (-want +got):\n%s", diff)
	}
}

func TestDiskEncryptionZFS(t *testing.T) {
	const zfsGet = "zfs get -H -p -o property,value encryption,keystatus,encryptionroot "
	ok := metaAt(testTime, posturev1.Status_STATUS_OK, "")
	tests := []struct {
		name, fixture string
		recordings    map[string]recorded
		want          *posturev1.DiskEncryption
	}{
		{
			name:       "native encryption",
			fixture:    "zfs-native",
			recordings: map[string]recorded{zfsGet + "rpool/ROOT/ubuntu_k3l9ab": {stdout: "zfs/zfs-get-encrypted.stdout.txt"}},
			want: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: true, Volumes: []*posturev1.Volume{{
				MountPoint: "/", Device: "rpool/ROOT/ubuntu_k3l9ab", Encrypted: true, Method: "ZFS aes-256-gcm",
				Detail: "zfs dataset rpool/ROOT/ubuntu_k3l9ab: native encryption aes-256-gcm, encryption root rpool, key available"}}},
		},
		{
			name:    "ZFS on LUKS",
			fixture: "zfs-on-luks",
			recordings: map[string]recorded{
				zfsGet + "tank/root":      {stdout: "zfs/zfs-get-off.stdout.txt"},
				"zpool status -P -L tank": {stdout: "zfs/zpool-status-luks.stdout.txt"},
			},
			want: &posturev1.DiskEncryption{Meta: ok, SystemEncrypted: true, Volumes: []*posturev1.Volume{{
				MountPoint: "/", Device: "tank/root", Encrypted: true, Method: "LUKS2",
				Detail: "zfs dataset tank/root (native encryption off) on tank (zpool) <- dm-0 (CRYPT-LUKS2) <- nvme0n1p3: " +
					"every path to a disk crosses an encryption layer"}}},
		},
		{
			name:    "zfs fails",
			fixture: "zfs-native",
			recordings: map[string]recorded{
				zfsGet + "rpool/ROOT/ubuntu_k3l9ab": {stderr: "zfs/zfs-get-missing.stderr.txt", exitCode: 1},
			},
			want: &posturev1.DiskEncryption{Meta: metaAt(testTime, posturev1.Status_STATUS_UNAVAILABLE,
				"/ is on zfs (rpool/ROOT/ubuntu_k3l9ab): zfs get -H -p -o property,value encryption,keystatus,encryptionroot "+
					"rpool/ROOT/ubuntu_k3l9ab exited with status 1: cannot open 'rpool/ROOT/ubuntu_k3l9ab': dataset does not exist")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := unpackTxtar(t, filepath.Join("testdata", "sysfs", tt.fixture+".txtar"))
			c := New(Options{Root: root, Runner: newFakeRunner(t, tt.recordings), Now: fixedNow})
			got := c.diskEncryption(context.Background())
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), ignoreOtherVolumes); diff != "" {
				t.Errorf("diskEncryption (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseZpoolStatus(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "zfs", "zpool-status-mirror.stdout.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/dev/sda3", "/dev/dm-1", "/dev/nvme0n1p2", "/dev/nvme0n1p3"}
	if diff := cmp.Diff(want, parseZpoolStatus(b)); diff != "" {
		t.Errorf("parseZpoolStatus (-want +got):\n%s", diff)
	}
}
