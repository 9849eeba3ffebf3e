package browsercert

import (
	"errors"
	"os/user"
)

// errCurrentUserStores says why the uninstaller leaves other accounts'
// CurrentUser stores alone.
var errCurrentUserStores = errors.New("other accounts' CurrentUser stores were left: each lives in its account's registry hive, loaded only while it is signed in, and its keys are reached as that account only; " +
	"run `posture-agent browser-cert --remove` as each user to take them out; what is left expires within the browser certificate's lifetime and no longer counts once the device is gone from the collector")

// UserStores is the CurrentUser store of the account running the
// uninstaller (an administrator's own, or SYSTEM's), with an error saying
// why other accounts' stores are not listed.
func UserStores() ([]UserStore, error) {
	name := "this account"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return []UserStore{{User: name, Store: CurrentUserStore{}}}, errCurrentUserStores
}
