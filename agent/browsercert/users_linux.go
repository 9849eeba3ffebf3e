package browsercert

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// UserDB is a local account's NSS database.
type UserDB struct {
	User     string
	UID, GID uint32
	DB       NSSDB
}

// UserDatabases lists the NSS databases ($HOME/.pki/nssdb) of the accounts
// in passwd (/etc/passwd), each set to run the NSS tools as its owner, for
// the uninstaller to take every user's browser certificates out. The file
// is read directly: os/user looks accounts up one by one and cannot list
// them, and the format is seven colon-separated fields.
func UserDatabases(passwd string) ([]UserDB, error) {
	f, err := os.Open(passwd)
	if err != nil {
		return nil, fmt.Errorf("list local accounts: %w", err)
	}
	defer f.Close()
	var out []UserDB
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) != 7 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		home := fields[5]
		if err1 != nil || err2 != nil || !filepath.IsAbs(home) {
			continue
		}
		dir := filepath.Join(home, ".pki", "nssdb")
		if _, err := os.Stat(filepath.Join(dir, "cert9.db")); err != nil {
			continue
		}
		u := UserDB{User: fields[0], UID: uint32(uid), GID: uint32(gid)}
		u.DB = NSSDB{Dir: dir, Prepare: userPrepare(u.UID, u.GID, home)}
		out = append(out, u)
	}
	return out, sc.Err()
}

// userPrepare runs a command as the account uid:gid with its home.
func userPrepare(uid, gid uint32, home string) func(*exec.Cmd) {
	return func(c *exec.Cmd) {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		c.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin"}
		c.Dir = home
	}
}

// UserStores lists every local account's NSS database (UserDatabases of
// /etc/passwd), for the uninstaller.
func UserStores() ([]UserStore, error) {
	dbs, err := UserDatabases("/etc/passwd")
	var out []UserStore
	for _, u := range dbs {
		out = append(out, UserStore{User: u.User, Store: u.DB})
	}
	return out, err
}
