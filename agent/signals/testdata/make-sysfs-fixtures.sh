#!/usr/bin/env bash
# Rebuilds the hand-made sysfs/procfs fixtures testdata/sysfs/<case>.txtar
# (see README.md). Each case is a miniature filesystem root holding only what
# the disk encryption walk reads, laid out as Linux sysfs lays it out. The
# trees are built in a temporary directory and stored as text archives,
# because sysfs names contain ':' (8:0, pci0000:00), which Go module zips and
# Windows checkouts do not allow; the tests unpack them again.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/sysfs"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

SDA=devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda
SDB=devices/pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block/sdb
NVME=devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1
VDA=devices/pci0000:00/0000:00:02.0/virtio1/block/vda
VIRT=devices/virtual/block
SDC=devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block/sdc
# A USB stick and a USB disk that claims to be fixed (removable 0).
USBSTICK=devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdd
USBDISK=devices/pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0/host7/target7:0:0/7:0:0:0/block/sde

# link LINK TARGET: a relative symlink as the kernel writes them; both paths
# are relative to sys/.
link() {
	mkdir -p "sys/$(dirname "$1")"
	ln -sfn "$(realpath -m --relative-to="sys/$(dirname "$1")" "sys/$2")" "sys/$1"
}

# blockdev PATH MAJ:MIN: a block device directory with its dev attribute and
# its /sys/dev/block and /sys/class/block links.
blockdev() {
	mkdir -p "sys/$1"
	echo "$2" >"sys/$1/dev"
	link "dev/block/$2" "$1"
	link "class/block/$(basename "$1")" "$1"
}

# part DISK NAME MAJ:MIN NUMBER: a partition, a subdirectory of its disk.
part() {
	blockdev "$1/$2" "$3"
	echo "$4" >"sys/$1/$2/partition"
}

# dm NAME MAJ:MIN DM_NAME DM_UUID SLAVE...: a device-mapper device.
dm() {
	local p="$VIRT/$1"
	blockdev "$p" "$2"
	mkdir -p "sys/$p/dm"
	echo "$3" >"sys/$p/dm/name"
	echo "$4" >"sys/$p/dm/uuid"
	shift 4
	local s
	for s; do link "$p/slaves/$(basename "$s")" "$s"; done
}

# md NAME MAJ:MIN LEVEL SLAVE...: an md RAID array.
md() {
	local p="$VIRT/$1"
	blockdev "$p" "$2"
	mkdir -p "sys/$p/md"
	echo "$3" >"sys/$p/md/level"
	shift 3
	local s
	for s; do link "$p/slaves/$(basename "$s")" "$s"; done
}

# removable DEVICE_PATH 0|1: the disk's removable attribute.
removable() {
	echo "$2" >"sys/$1/removable"
}

# mountinfo LINE...: proc/self/mountinfo.
mountinfo() {
	mkdir -p proc/self
	printf '%s\n' "$@" >proc/self/mountinfo
}

# swaps "PATH TYPE SIZE"...: proc/swaps with the kernel's header.
swaps() {
	mkdir -p proc
	printf 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n' >proc/swaps
	local s f t z
	for s; do
		read -r f t z <<<"$s"
		printf '%-40s%s\t%s\t\t0\t\t-2\n' "$f" "$t" "$z" >>proc/swaps
	done
}

newcase() {
	rm -rf "$1"
	mkdir "$1"
	cd "$1"
}

LUKS_UUID=3f6a2c1e-8d4b-4f0a-9e27-5b1c0d9a7e42
LUKS_HEX=${LUKS_UUID//-/}

# plain-disk: ext4 on a partition of a SATA disk.
(
	newcase plain-disk
	blockdev "$SDA" 8:0
	part "$SDA" sda1 8:1 1
	part "$SDA" sda2 8:2 2
	mountinfo \
		"22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro" \
		"23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw" \
		"24 22 8:1 / /boot/efi rw,relatime shared:30 - vfat /dev/sda1 rw,fmask=0077,dmask=0077"
	swaps
)

# virtio-vm: ext4 on a whole virtio disk, as in a small VM.
(
	newcase virtio-vm
	blockdev "$VDA" 254:0
	mountinfo \
		"21 26 0:20 / /proc rw,relatime - proc proc rw" \
		"22 26 0:21 / /sys rw,relatime - sysfs sysfs rw" \
		"26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard"
	swaps
)

# luks2-root: ext4 on LUKS2 on an NVMe partition.
(
	newcase luks2-root
	blockdev "$NVME" 259:0
	part "$NVME" nvme0n1p1 259:1 1
	part "$NVME" nvme0n1p2 259:2 2
	part "$NVME" nvme0n1p3 259:3 3
	dm dm-0 253:0 "luks-$LUKS_UUID" "CRYPT-LUKS2-$LUKS_HEX-luks-$LUKS_UUID" "$NVME/nvme0n1p3"
	mountinfo \
		"29 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/luks-$LUKS_UUID rw" \
		"41 29 259:2 / /boot rw,relatime shared:31 - ext4 /dev/nvme0n1p2 rw" \
		"43 41 259:1 / /boot/efi rw,relatime shared:33 - vfat /dev/nvme0n1p1 rw,fmask=0077"
	swaps
)

# lvm-on-luks: the Debian installer's "guided, encrypted LVM": root and swap
# logical volumes in a volume group on LUKS2.
(
	newcase lvm-on-luks
	blockdev "$SDA" 8:0
	part "$SDA" sda1 8:1 1
	part "$SDA" sda2 8:2 2
	part "$SDA" sda3 8:3 3
	dm dm-0 253:0 sda3_crypt "CRYPT-LUKS2-$LUKS_HEX-sda3_crypt" "$SDA/sda3"
	dm dm-1 253:1 debian--vg-root \
		"LVM-cX3Jp0fTq7vN2kLw9sYb4dRz1mHa6eUgQ8oPi5tKj3nVc7xBy2lWs0fDr4aZe9hM" "$VIRT/dm-0"
	dm dm-2 253:2 debian--vg-swap_1 \
		"LVM-cX3Jp0fTq7vN2kLw9sYb4dRz1mHa6eUgT1uYh6gFr2dSe5wQa9zXc3vBn7mKl0jP" "$VIRT/dm-0"
	mountinfo \
		"25 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/debian--vg-root rw,errors=remount-ro" \
		"30 25 8:2 / /boot rw,relatime shared:28 - ext2 /dev/sda2 rw" \
		"31 30 8:1 / /boot/efi rw,relatime shared:29 - vfat /dev/sda1 rw,fmask=0077"
	swaps "/dev/dm-2 partition 998396"
)

# raid-one-leg: RAID1 over a plain partition and a LUKS2 partition.
(
	newcase raid-one-leg
	blockdev "$SDA" 8:0
	part "$SDA" sda1 8:1 1
	blockdev "$SDB" 8:16
	part "$SDB" sdb1 8:17 1
	dm dm-0 253:0 sdb1_crypt "CRYPT-LUKS2-$LUKS_HEX-sdb1_crypt" "$SDB/sdb1"
	md md0 9:0 raid1 "$SDA/sda1" "$VIRT/dm-0"
	mountinfo "25 1 9:0 / / rw,relatime shared:1 - ext4 /dev/md0 rw"
	swaps
)

# verity-root: a read-only root verified by dm-verity (data and hash
# partitions), as image-based systems use; verity is integrity, not secrecy.
(
	newcase verity-root
	blockdev "$SDA" 8:0
	part "$SDA" sda2 8:2 2
	part "$SDA" sda3 8:3 3
	dm dm-0 253:0 root "CRYPT-VERITY-6b3e1f0a2c4d4e8f9a1b2c3d4e5f6a7b-root" "$SDA/sda2" "$SDA/sda3"
	mountinfo "24 1 253:0 / / ro,relatime shared:1 - erofs /dev/mapper/root ro"
	swaps
)

# luks-root-plain-swap: encrypted root, swap on a plain partition.
(
	newcase luks-root-plain-swap
	blockdev "$NVME" 259:0
	part "$NVME" nvme0n1p2 259:2 2
	part "$NVME" nvme0n1p3 259:3 3
	dm dm-0 253:0 "luks-$LUKS_UUID" "CRYPT-LUKS2-$LUKS_HEX-luks-$LUKS_UUID" "$NVME/nvme0n1p2"
	mountinfo "29 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/luks-$LUKS_UUID rw"
	swaps "/dev/nvme0n1p3 partition 8388604"
)

# luks-root-swapfile: encrypted root holding a swap file.
(
	newcase luks-root-swapfile
	blockdev "$SDA" 8:0
	part "$SDA" sda2 8:2 2
	dm dm-0 253:0 root "CRYPT-LUKS1-$LUKS_HEX-root" "$SDA/sda2"
	mountinfo "29 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw"
	swaps "/swap.img file 2097148"
)

# luks-integrity: LUKS2 with authenticated encryption, which puts a
# dm-integrity subdevice (CRYPT-SUBDEV) beneath the dm-crypt device.
(
	newcase luks-integrity
	blockdev "$SDA" 8:0
	part "$SDA" sda2 8:2 2
	dm dm-0 253:0 root_dif "CRYPT-SUBDEV-$LUKS_HEX-root_dif" "$SDA/sda2"
	dm dm-1 253:1 root "CRYPT-LUKS2-$LUKS_HEX-root" "$VIRT/dm-0"
	mountinfo "29 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw"
	swaps
)

# btrfs-luks-zram: Fedora's layout: btrfs on LUKS2 (mounted with an
# anonymous device number), swap on zram.
(
	newcase btrfs-luks-zram
	FSID=0b7c2e4f-3a1d-4c6e-8f90-1a2b3c4d5e6f
	blockdev "$NVME" 259:0
	part "$NVME" nvme0n1p3 259:3 3
	dm dm-0 253:0 "luks-$LUKS_UUID" "CRYPT-LUKS2-$LUKS_HEX-luks-$LUKS_UUID" "$NVME/nvme0n1p3"
	blockdev "$VIRT/zram0" 252:0
	echo none >"sys/$VIRT/zram0/backing_dev"
	link "fs/btrfs/$FSID/devices/dm-0" "$VIRT/dm-0"
	mountinfo \
		"61 1 0:35 /root / rw,relatime shared:1 - btrfs /dev/mapper/luks-$LUKS_UUID rw,seclabel,compress=zstd:1,ssd,space_cache=v2,subvolid=257,subvol=/root" \
		"90 61 0:35 /home /home rw,relatime shared:52 - btrfs /dev/mapper/luks-$LUKS_UUID rw,seclabel,compress=zstd:1,ssd,space_cache=v2,subvolid=256,subvol=/home"
	swaps "/dev/zram0 partition 8388604"
)

# overlay-root: a container's root filesystem.
(
	newcase overlay-root
	blockdev "$SDA" 8:0
	part "$SDA" sda1 8:1 1
	mountinfo \
		"600 540 0:52 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/123/diff,workdir=/var/lib/docker/overlay2/123/work" \
		"601 600 0:55 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw"
	swaps
)

# data-disks: encrypted root, and other mounted volumes: an unencrypted
# /home disk and a LUKS /srv disk (listed separately), /boot and the ESP,
# a snap (squashfs on a loop device), a USB stick and a USB disk (ignored).
(
	newcase data-disks
	blockdev "$SDA" 8:0
	removable "$SDA" 0
	part "$SDA" sda1 8:1 1
	part "$SDA" sda2 8:2 2
	part "$SDA" sda3 8:3 3
	blockdev "$SDB" 8:16
	removable "$SDB" 0
	part "$SDB" sdb1 8:17 1
	blockdev "$SDC" 8:32
	removable "$SDC" 0
	part "$SDC" sdc1 8:33 1
	blockdev "$USBSTICK" 8:48
	removable "$USBSTICK" 1
	part "$USBSTICK" sdd1 8:49 1
	blockdev "$USBDISK" 8:64
	removable "$USBDISK" 0
	part "$USBDISK" sde1 8:65 1
	dm dm-0 253:0 sda3_crypt "CRYPT-LUKS2-$LUKS_HEX-sda3_crypt" "$SDA/sda3"
	dm dm-1 253:1 srv_crypt "CRYPT-LUKS2-$LUKS_HEX-srv_crypt" "$SDC/sdc1"
	blockdev "$VIRT/loop0" 7:0
	mkdir -p "sys/$VIRT/loop0/loop"
	echo /var/lib/snapd/snaps/core22_1380.snap >"sys/$VIRT/loop0/loop/backing_file"
	mountinfo \
		"25 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/sda3_crypt rw" \
		"30 25 8:2 / /boot rw,relatime shared:28 - ext4 /dev/sda2 rw" \
		"31 30 8:1 / /boot/efi rw,relatime shared:29 - vfat /dev/sda1 rw,fmask=0077" \
		"32 25 8:17 / /home rw,relatime shared:30 - ext4 /dev/sdb1 rw" \
		"33 25 253:1 / /srv rw,relatime shared:31 - xfs /dev/mapper/srv_crypt rw" \
		"34 25 7:0 / /snap/core22/1380 ro,nodev,relatime shared:32 - squashfs /dev/loop0 ro" \
		"35 25 8:49 / /media/alice/STICK rw,nosuid,nodev,relatime shared:33 - vfat /dev/sdd1 rw" \
		"36 25 8:65 / /media/alice/backup rw,nosuid,nodev,relatime shared:34 - ext4 /dev/sde1 rw" \
		"37 25 0:40 / /tmp rw,nosuid,nodev shared:35 - tmpfs tmpfs rw" \
		"38 25 253:0 /var/lib/docker /var/lib/docker rw,relatime shared:1 - ext4 /dev/mapper/sda3_crypt rw"
	swaps
)

# btrfs-raid1-one-plain: a btrfs RAID1 over a LUKS2 partition and a plain
# one: not encrypted.
(
	newcase btrfs-raid1-one-plain
	FSID=5d1e8c3a-7b2f-4e60-9a1d-3c4b5a6f7e80
	blockdev "$SDA" 8:0
	part "$SDA" sda2 8:2 2
	blockdev "$SDB" 8:16
	part "$SDB" sdb2 8:18 2
	dm dm-0 253:0 cryptroot "CRYPT-LUKS2-$LUKS_HEX-cryptroot" "$SDA/sda2"
	link "fs/btrfs/$FSID/devices/dm-0" "$VIRT/dm-0"
	link "fs/btrfs/$FSID/devices/sdb2" "$SDB/sdb2"
	mountinfo "30 1 0:33 /@ / rw,relatime shared:1 - btrfs /dev/mapper/cryptroot rw,space_cache=v2,subvolid=256,subvol=/@"
	swaps
)

# zfs-native: a ZFS root dataset; "zfs get" decides (see zfs/).
(
	newcase zfs-native
	blockdev "$NVME" 259:0
	part "$NVME" nvme0n1p4 259:4 4
	mountinfo \
		"70 1 0:26 / / rw,relatime shared:1 - zfs rpool/ROOT/ubuntu_k3l9ab rw,xattr,posixacl" \
		"90 70 0:48 / /home/alice rw,relatime shared:40 - zfs rpool/USERDATA/alice_x2u8cd rw,xattr,posixacl"
	swaps
)

# zfs-on-luks: a pool whose only device is a LUKS2 mapping.
(
	newcase zfs-on-luks
	blockdev "$NVME" 259:0
	part "$NVME" nvme0n1p3 259:3 3
	dm dm-0 253:0 "luks-$LUKS_UUID" "CRYPT-LUKS2-$LUKS_HEX-luks-$LUKS_UUID" "$NVME/nvme0n1p3"
	mountinfo "70 1 0:26 / / rw,relatime shared:1 - zfs tank/root rw,xattr"
	swaps
)

# Pack every tree as txtar: one "-- path --" section per file, and a symlink
# as a section holding "-> target".
for dir in */; do
	c=${dir%/}
	{
		echo "sysfs fixture $c: built by make-sysfs-fixtures.sh"
		(cd "$c" && find . \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort) | while read -r f; do
			echo "-- $f --"
			if [ -L "$c/$f" ]; then
				echo "-> $(readlink "$c/$f")"
			else
				cat "$c/$f"
			fi
		done
	} >"$out/$c.txtar"
done
