package browsercert

import (
	"os"
	"os/exec"
	"syscall"
)

// UserStores lists the login keychains of the accounts in /Users, each set
// to run security as its owner, for the uninstaller. A keychain that is
// locked (its owner is not logged in) refuses the deletion: the error says
// so; what is left expires within the browser certificate's lifetime and
// no longer counts once the device is gone from the collector.
func UserStores() ([]UserStore, error) {
	kcs, err := loginKeychains("/Users", func(fi os.FileInfo) (uint32, uint32, bool) {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return 0, 0, false
		}
		return st.Uid, st.Gid, true
	})
	var out []UserStore
	for _, u := range kcs {
		k := Keychain{Path: u.Path, Prepare: asUser(u.UID, u.GID, u.Home)}
		out = append(out, UserStore{User: u.User, Store: k})
	}
	return out, err
}

// asUser runs a command as the account uid:gid with its home.
func asUser(uid, gid uint32, home string) func(*exec.Cmd) {
	return func(c *exec.Cmd) {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		c.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin"}
		c.Dir = home
	}
}
