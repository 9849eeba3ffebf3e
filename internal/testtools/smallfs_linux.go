package testtools

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// SmallFS mounts a filesystem of size bytes on a new directory and returns
// the directory, for tests that fill a disk: a tmpfs with that size, or
// when this process may not mount one, an ext4 image on a loop device. It
// is unmounted when the test ends. A test that can do neither (it needs
// root, or CAP_SYS_ADMIN) is skipped loudly (failed when RequireEnv is 1).
func SmallFS(t testing.TB, size int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "smallfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tmpfsErr := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0700,size="+strconv.FormatInt(size, 10))
	if tmpfsErr == nil {
		t.Cleanup(func() { unmount(t, dir) })
		return dir
	}
	loopErr := mountLoop(t, dir, size)
	if loopErr == nil {
		return dir
	}
	missing(t, fmt.Sprintf("CANNOT MOUNT A SMALL FILESYSTEM (run the tests as root): tmpfs: %v; loop device: %v", tmpfsErr, loopErr))
	return ""
}

// mountLoop mounts an ext4 image of size bytes on dir through a loop
// device.
func mountLoop(t testing.TB, dir string, size int64) error {
	t.Helper()
	img := filepath.Join(t.TempDir(), "smallfs.img")
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for _, tool := range []string{"mkfs.ext4", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return err
		}
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mount -o loop: %v: %s", err, out)
	}
	t.Cleanup(func() { unmount(t, dir) })
	return nil
}

// unmount unmounts dir, detaching it lazily if something still holds it.
func unmount(t testing.TB, dir string) {
	if err := syscall.Unmount(dir, 0); err != nil {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	}
}
