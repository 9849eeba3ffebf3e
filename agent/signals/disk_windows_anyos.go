package signals

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// winDiskEncryption asks BitLocker about every encryptable volume through
// WMI, calling GetProtectionStatus rather than trusting the cached
// ProtectionStatus property, GetConversionStatus and GetKeyProtectors (the
// method results are numbers and IDs, so nothing depends on the display
// language, unlike manage-bde), and decides on the volume of %SystemDrive%
// (which need not be C:). Fixed data volumes are listed separately;
// portable (removable) ones are ignored.
func (c *Collector) winDiskEncryption(ctx context.Context, systemDrive string) *posturev1.DiskEncryption {
	failed := func(status posturev1.Status, reason string) *posturev1.DiskEncryption {
		return &posturev1.DiskEncryption{Meta: c.meta(status, reason),
			OtherVolumes: &posturev1.OtherVolumes{Meta: c.meta(status, reason)}}
	}
	if c.wmi == nil {
		return failed(posturev1.Status_STATUS_UNAVAILABLE, errNoWindowsSource.Error())
	}
	vols, err := withTimeout(ctx, c, "BitLocker (WMI Win32_EncryptableVolume)", c.wmi.EncryptableVolumes)
	switch {
	case errors.Is(err, errAccessDenied):
		return failed(posturev1.Status_STATUS_UNAVAILABLE, "needs administrator rights to query BitLocker: "+err.Error())
	case errors.Is(err, fs.ErrNotExist):
		return failed(posturev1.Status_STATUS_UNAVAILABLE,
			"BitLocker's WMI provider is missing (a Windows edition without BitLocker); other encryption products are not examined: "+err.Error())
	case err != nil:
		return failed(posturev1.Status_STATUS_ERROR, err.Error())
	}
	return bitLockerState(vols, systemDrive, c.now())
}

// bitLockerState decides from the volumes' method results, observed at t.
// A volume counts as encrypted when it is fully encrypted and protection
// is on: suspended protection leaves the key in the clear on the disk.
func bitLockerState(vols []encryptableVolume, systemDrive string, t time.Time) *posturev1.DiskEncryption {
	d := &posturev1.DiskEncryption{OtherVolumes: &posturev1.OtherVolumes{Meta: metaAt(t, posturev1.Status_STATUS_OK, "")}}
	found := false
	for _, v := range vols {
		vol := bitLockerVolume(v)
		switch {
		case strings.EqualFold(v.DriveLetter, systemDrive):
			found = true
			d.Volumes = append(d.Volumes, vol)
			d.SystemEncrypted = vol.Encrypted
		case v.VolumeType == 2 || v.DriveLetter == "":
			// Portable volumes (USB drives) are removable media; volumes
			// without a letter are recovery and system partitions.
		default:
			d.OtherVolumes.Volumes = append(d.OtherVolumes.Volumes, vol)
		}
	}
	if !found {
		d.Meta = metaAt(t, posturev1.Status_STATUS_ERROR,
			fmt.Sprintf("BitLocker lists no volume for the system drive %s (%d volumes listed)", systemDrive, len(vols)))
		return d
	}
	d.Meta = metaAt(t, posturev1.Status_STATUS_OK, "")
	return d
}

var conversionStatus = map[uint32]string{
	0: "fully decrypted", 1: "fully encrypted", 2: "encryption in progress",
	3: "decryption in progress", 4: "encryption paused", 5: "decryption paused",
}

var encryptionMethod = map[uint32]string{
	1: "AES-128 with diffuser", 2: "AES-256 with diffuser", 3: "AES-128", 4: "AES-256",
	5: "hardware encryption", 6: "XTS-AES-128", 7: "XTS-AES-256",
}

// dataOnlyEncryption is GetConversionStatus' EncryptionFlags bit for a
// volume encrypted in data-only ("used space only") mode.
const dataOnlyEncryption = 0x1

// freeSpaceWiped is GetConversionStatus' WipingStatus once free space has
// been wiped.
const freeSpaceWiped = 1

func bitLockerVolume(v encryptableVolume) *posturev1.Volume {
	vol := &posturev1.Volume{MountPoint: v.DriveLetter, Device: v.DeviceID}
	if v.MethodError != "" {
		vol.Detail = "BitLocker state unreadable: " + v.MethodError
		return vol
	}
	conv := conversionStatus[v.ConversionStatus]
	if conv == "" {
		conv = fmt.Sprintf("conversion status %d", v.ConversionStatus)
	}
	usedSpaceOnly := v.EncryptionFlags&dataOnlyEncryption != 0 && v.WipingStatus != freeSpaceWiped
	if usedSpaceOnly && v.ConversionStatus == 1 {
		// Windows device encryption and Enable-BitLocker -UsedSpaceOnly
		// encrypt only the blocks in use: what was deleted before stays
		// readable in free space until it is overwritten or wiped.
		conv = "used space only encrypted (free space was not wiped, so data deleted before encryption may still be readable: " +
			"manage-bde -w " + v.DriveLetter + ")"
	}
	if v.ConversionStatus == 2 || v.ConversionStatus == 3 || v.ConversionStatus == 4 || v.ConversionStatus == 5 {
		conv += fmt.Sprintf(" (%d%% encrypted)", v.EncryptionPercentage)
	}
	var protection string
	switch v.ProtectionStatus {
	case 0:
		protection = "protection off"
		switch {
		case v.ConversionStatus != 1:
		case v.KeyProtectorIDs != nil && len(v.KeyProtectorIDs) == 0:
			// Nothing to resume: manage-bde -protectors -enable changes
			// nothing until a protector exists ("waiting for activation").
			protection = "protection off: the volume has no key protector, so its key is stored in the clear " +
				"(add one: manage-bde -protectors -add " + v.DriveLetter + " -tpm, or turn on BitLocker for the drive)"
		case v.KeyProtectorIDs != nil:
			protection = "protection suspended: the key is stored unprotected on the disk (manage-bde -protectors -enable " + v.DriveLetter + ")"
		default:
			protection = "protection off: the key is stored unprotected on the disk, and its key protectors could not be listed " +
				"(manage-bde -protectors -get " + v.DriveLetter + " shows them: resume with -enable, or add one with -add)"
		}
	case 1:
		protection = "protection on"
	case 2:
		protection = "protection unknown: the volume is locked"
	default:
		protection = fmt.Sprintf("protection status %d", v.ProtectionStatus)
	}
	vol.Detail = "BitLocker " + conv + ", " + protection
	if m := encryptionMethod[v.EncryptionMethod]; m != "" {
		vol.Detail += ", " + m
	}
	if v.ProtectionStatus == 1 && v.ConversionStatus == 1 {
		vol.Encrypted, vol.Method = true, "BitLocker"
	}
	return vol
}
