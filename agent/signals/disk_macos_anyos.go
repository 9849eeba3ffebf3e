package signals

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
	"howett.net/plist"
)

// On macOS, FileVault protects the Data volume of the boot volume group;
// the System volume is a sealed, read-only snapshot. fdesetup decides;
// diskutil's APFS listing adds what the volume is and whether a conversion
// is still running. Swap is encrypted by the kernel, which vm.swapusage
// states.

// macDiskEncryption measures FileVault. dataDevice is the device mounted
// at /System/Volumes/Data (or at / before macOS 10.15), "" when unknown.
func (c *Collector) macDiskEncryption(ctx context.Context, dataMount, dataDevice string) *posturev1.DiskEncryption {
	others := &posturev1.OtherVolumes{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
		"other volumes are not examined on macOS by this agent version: diskutil's APFS listing does not say which containers are internal")}
	stdout, stderr, code, err := c.run(ctx, fdesetup, "isactive")
	if err != nil {
		return &posturev1.DiskEncryption{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, err.Error()), OtherVolumes: others}
	}
	// fdesetup(8): isactive exits 0 when FileVault is on, 1 when it is off
	// and 2 when it is on but busy encrypting or decrypting; the exit
	// status, not the printed word, decides.
	var on, busy bool
	state := "FileVault off"
	switch code {
	case 0:
		on, state = true, "FileVault on"
	case 1:
	case 2:
		busy, state = true, "FileVault on but busy: encryption or decryption in progress (exit status 2)"
	default:
		return &posturev1.DiskEncryption{Meta: c.meta(posturev1.Status_STATUS_ERROR,
			commandError(fdesetup, []string{"isactive"}, code, stderr, stdout).Error()), OtherVolumes: others}
	}

	vol := &posturev1.Volume{MountPoint: dataMount, Device: dataDevice, Method: "FileVault"}
	details := []string{"fdesetup isactive: " + state}
	migrating := false
	if apfs, err := c.apfsVolume(ctx, filepath.Base(dataDevice)); err != nil {
		details = append(details, err.Error())
	} else {
		details = append(details, apfs.describe())
		migrating = apfs.CryptoMigrationOn
	}
	// A conversion in progress leaves part of the volume in the clear, so
	// only a finished one counts.
	vol.Encrypted = on && !migrating
	if !on && !busy {
		vol.Method = ""
	}
	vol.Detail = strings.Join(details, "; ")

	swap := c.macSwap(ctx)
	return &posturev1.DiskEncryption{
		Meta:            c.meta(posturev1.Status_STATUS_OK, ""),
		SystemEncrypted: vol.Encrypted && swap.Encrypted,
		Volumes:         []*posturev1.Volume{vol, swap},
		OtherVolumes:    others,
	}
}

// apfsVolumeInfo is one volume of "diskutil apfs list -plist".
type apfsVolumeInfo struct {
	DeviceIdentifier  string // "disk3s5"
	Name              string
	Roles             []string
	FileVault         bool
	Encryption        bool
	Locked            bool
	CryptoMigrationOn bool // encryption or decryption still in progress
}

func (v apfsVolumeInfo) describe() string {
	s := fmt.Sprintf("APFS volume %s %q", v.DeviceIdentifier, v.Name)
	if len(v.Roles) > 0 {
		s += " (role " + strings.Join(v.Roles, ",") + ")"
	}
	s += fmt.Sprintf(": FileVault %v, encrypted %v", v.FileVault, v.Encryption)
	if v.CryptoMigrationOn {
		s += ", encryption or decryption still in progress"
	}
	return s
}

// apfsVolume finds a volume by device identifier ("disk3s5").
func (c *Collector) apfsVolume(ctx context.Context, device string) (apfsVolumeInfo, error) {
	args := []string{"apfs", "list", "-plist"}
	stdout, stderr, code, err := c.run(ctx, diskutil, args...)
	if err != nil {
		return apfsVolumeInfo{}, err
	}
	if code != 0 {
		return apfsVolumeInfo{}, commandError(diskutil, args, code, stderr, stdout)
	}
	vols, err := parseAPFSList(stdout)
	if err != nil {
		return apfsVolumeInfo{}, fmt.Errorf("parse diskutil apfs list: %w", err)
	}
	for _, v := range vols {
		if v.DeviceIdentifier == device {
			return v, nil
		}
	}
	return apfsVolumeInfo{}, fmt.Errorf("diskutil apfs list shows no volume %s", device)
}

// parseAPFSList reads the volumes of every container in "diskutil apfs
// list -plist": {Containers: [{Volumes: [{DeviceIdentifier, Name, Roles,
// FileVault, Encryption, Locked, CryptoMigrationOn}]}]}.
func parseAPFSList(b []byte) ([]apfsVolumeInfo, error) {
	var list struct {
		Containers []struct{ Volumes []apfsVolumeInfo }
	}
	if _, err := plist.Unmarshal(b, &list); err != nil {
		return nil, err
	}
	var out []apfsVolumeInfo
	for _, ct := range list.Containers {
		out = append(out, ct.Volumes...)
	}
	return out, nil
}

// macSwap reads vm.swapusage ("total = 2048.00M  used = 1024.00M  free =
// 1024.00M  (encrypted)"): the kernel marks encrypted swap.
func (c *Collector) macSwap(ctx context.Context) *posturev1.Volume {
	v := &posturev1.Volume{MountPoint: swapMountPoint}
	args := []string{"-n", "vm.swapusage"}
	stdout, stderr, code, err := c.run(ctx, sysctlCmd, args...)
	switch {
	case err != nil:
		v.Detail = fmt.Sprintf("cannot read vm.swapusage (%v): swap counted as not encrypted", err)
	case code != 0:
		v.Detail = fmt.Sprintf("cannot read vm.swapusage (%v): swap counted as not encrypted", commandError(sysctlCmd, args, code, stderr, stdout))
	case strings.Contains(string(stdout), "(encrypted)"):
		v.Encrypted, v.Method = true, "macOS encrypted swap"
		v.Detail = "vm.swapusage: " + firstLine(stdout)
	default:
		v.Detail = "vm.swapusage does not say (encrypted): " + firstLine(stdout)
	}
	return v
}
