package signals

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Automatic updates on Linux are package-manager specific: Debian and
// Ubuntu install them with unattended-upgrades, run daily by
// apt-daily-upgrade.timer when APT::Periodic::Unattended-Upgrade is
// non-zero; Fedora and RHEL with dnf-automatic's timers. The answers only
// change when configuration files change, so they are reused until one
// does (apt-config alone costs ~20 ms of CPU).

func (c *Collector) autoUpdate(ctx context.Context) *posturev1.AutoUpdate {
	manager, _ := c.updateManager()
	switch manager {
	case "apt":
		return cachedConfig(c, "apt", c.aptAutoUpdateStamp(), func() *posturev1.AutoUpdate { return c.aptAutoUpdate(ctx) })
	case "dnf":
		return cachedConfig(c, "dnf", c.dnfAutoUpdateStamp(), func() *posturev1.AutoUpdate { return c.dnfAutoUpdate(ctx) })
	case "zypper":
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"automatic updates are not measured for zypper: SUSE has no single standard mechanism (YaST online update, transactional-update, os-update)"),
			Mechanism: "zypper"}
	}
	return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE, "no supported package manager (apt, dnf, zypper) found")}
}

// systemdBooted reports whether systemd is the running init (sd_booted(3)).
func (c *Collector) systemdBooted() bool {
	return exists(c.path("/run/systemd/system"))
}

func (c *Collector) aptAutoUpdateStamp() string {
	return fileStamp(c.path("/etc/apt/apt.conf"), c.path("/etc/apt/apt.conf.d"),
		c.path("/usr/bin/unattended-upgrade"), c.path("/etc/cron.daily/apt-compat"),
		c.path("/etc/systemd/system/timers.target.wants"), c.path("/etc/systemd/system/apt-daily.timer"),
		c.path("/etc/systemd/system/apt-daily-upgrade.timer"), c.path("/run/systemd/system"))
}

// aptAutoUpdate checks the three things unattended upgrades need: the
// package, the APT::Periodic settings (apt-config merges every apt.conf.d
// file as apt does), and the daily trigger (systemd timers, or cron on
// systems without systemd).
func (c *Collector) aptAutoUpdate(ctx context.Context) *posturev1.AutoUpdate {
	const mechanism = "unattended-upgrades"
	if !c.hasCommand("unattended-upgrade") {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Mechanism: mechanism,
			Detail: "unattended-upgrades is not installed (apt install unattended-upgrades)"}
	}
	args := []string{"shell", "UU", "APT::Periodic::Unattended-Upgrade", "UPL", "APT::Periodic::Update-Package-Lists"}
	stdout, stderr, code, err := c.run(ctx, "apt-config", args...)
	if err != nil {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error()), Mechanism: mechanism}
	}
	if code != 0 {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_ERROR, commandError("apt-config", args, code, stderr, stdout).Error()), Mechanism: mechanism}
	}
	vars := parseAptConfigShell(stdout)
	var off []string
	if !aptPeriodicOn(vars["UU"]) {
		off = append(off, fmt.Sprintf("APT::Periodic::Unattended-Upgrade is %q (set it to \"1\" in /etc/apt/apt.conf.d/20auto-upgrades)", vars["UU"]))
	}
	if !aptPeriodicOn(vars["UPL"]) {
		off = append(off, fmt.Sprintf("APT::Periodic::Update-Package-Lists is %q, so no new updates are seen", vars["UPL"]))
	}
	if c.systemdBooted() {
		for _, timer := range []string{"apt-daily.timer", "apt-daily-upgrade.timer"} {
			if state, err := c.unitFileState(ctx, timer); err != nil {
				return c.unitStateUnknown(mechanism, err)
			} else if !unitEnabled(state) {
				off = append(off, fmt.Sprintf("%s is %s (systemctl enable --now %s)", timer, state, timer))
			}
		}
	} else if !exists(c.path("/etc/cron.daily/apt-compat")) {
		off = append(off, "without systemd, /etc/cron.daily/apt-compat would run unattended-upgrades, and it is missing")
	}
	if len(off) > 0 {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Mechanism: mechanism, Detail: strings.Join(off, "; ")}
	}
	return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, Mechanism: mechanism,
		Detail: "unattended-upgrades runs daily"}
}

// parseAptConfigShell reads "apt-config shell" output: NAME='value' lines
// in shell quoting, where a single quote inside a value closes the quoted
// part, is escaped, and reopens it.
func parseAptConfigShell(b []byte) map[string]string {
	out := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		v = strings.ReplaceAll(v, `'"'"'`, "'")
		v = strings.ReplaceAll(v, `'\''`, "'")
		out[k] = strings.Trim(v, "'")
	}
	return out
}

// aptPeriodicOn reads an APT::Periodic interval: a number of days (0 or
// unset is off) or "always".
func aptPeriodicOn(v string) bool {
	if v == "always" {
		return true
	}
	n, err := strconv.Atoi(v)
	return err == nil && n > 0
}

// systemd's D-Bus API (org.freedesktop.systemd1(5)).
const (
	systemdService = "org.freedesktop.systemd1"
	systemdPath    = "/org/freedesktop/systemd1"
)

// unitFileState asks systemd whether a unit is enabled, as systemctl
// is-enabled does: Manager.GetUnitFileState answers "enabled", "disabled",
// "masked", "static" and so on, and an error for a unit that is not
// installed. It needs no privilege.
func (c *Collector) unitFileState(ctx context.Context, unit string) (string, error) {
	var state string
	err := c.busCall(ctx, systemdService, systemdPath, systemdService+".Manager.GetUnitFileState", []any{&state}, unit)
	switch busErrorName(err) {
	case "":
	case "org.freedesktop.DBus.Error.FileNotFound", "org.freedesktop.systemd1.NoSuchUnit":
		return "not installed", nil
	}
	if err != nil {
		return "", fmt.Errorf("ask systemd whether %s is enabled: %w", unit, err)
	}
	return state, nil
}

// unitStateUnknown is the section for a unit state systemd could not be
// asked for: without the system bus nothing tells whether the timers run.
func (c *Collector) unitStateUnknown(mechanism string, err error) *posturev1.AutoUpdate {
	if errors.Is(err, errNoSystemBus) {
		return &posturev1.AutoUpdate{Mechanism: mechanism, Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"systemd runs, but its D-Bus API cannot be reached, so whether the update timers are enabled is unknown: "+err.Error())}
	}
	return &posturev1.AutoUpdate{Mechanism: mechanism, Meta: c.meta(posturev1.Status_STATUS_ERROR, err.Error())}
}

// unitEnabled reads an is-enabled state. "static" and "indirect" units run
// only when something else pulls them in, which a timer rarely is, so they
// do not count.
func unitEnabled(state string) bool {
	switch state {
	case "enabled", "enabled-runtime", "alias", "generated":
		return true
	}
	return false
}

var dnfAutomaticTimers = []string{"dnf-automatic-install.timer", "dnf-automatic.timer", "dnf5-automatic.timer"}

func (c *Collector) dnfAutoUpdateStamp() string {
	paths := []string{c.path("/etc/dnf/automatic.conf"), c.path("/etc/systemd/system/timers.target.wants"), c.path("/run/systemd/system")}
	for _, t := range dnfAutomaticTimers {
		paths = append(paths, c.path("/etc/systemd/system/"+t))
	}
	return fileStamp(paths...)
}

// dnfAutomaticApplies reads /etc/dnf/automatic.conf [commands]
// apply_updates (default no: dnf-automatic.timer then only downloads).
func (c *Collector) dnfAutomaticApplies() (applies bool, upgradeType string) {
	upgradeType = "default"
	b, err := os.ReadFile(c.path("/etc/dnf/automatic.conf"))
	if err != nil {
		return false, upgradeType
	}
	conf := map[string]string{}
	mergeKConfig(conf, b, "commands")
	switch strings.ToLower(conf["apply_updates"]) {
	case "yes", "true", "1", "on":
		applies = true
	}
	if t := conf["upgrade_type"]; t != "" {
		upgradeType = t
	}
	return applies, upgradeType
}

// dnfAutoUpdate checks dnf-automatic's timers: dnf-automatic-install.timer
// always installs; dnf-automatic.timer (and dnf5's) installs only with
// apply_updates = yes.
func (c *Collector) dnfAutoUpdate(ctx context.Context) *posturev1.AutoUpdate {
	const mechanism = "dnf-automatic"
	if !c.systemdBooted() {
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_UNAVAILABLE,
			"dnf-automatic runs from systemd timers, and systemd is not running"), Mechanism: mechanism}
	}
	applies, upgradeType := c.dnfAutomaticApplies()
	var states []string
	for _, timer := range dnfAutomaticTimers {
		state, err := c.unitFileState(ctx, timer)
		if err != nil {
			return c.unitStateUnknown(mechanism, err)
		}
		states = append(states, timer+" "+state)
		if !unitEnabled(state) {
			continue
		}
		if timer == "dnf-automatic-install.timer" || applies {
			return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Enabled: true, Mechanism: mechanism,
				Detail: fmt.Sprintf("%s installs %s updates", timer, upgradeType)}
		}
		return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Mechanism: mechanism,
			Detail: fmt.Sprintf("%s only downloads updates: set apply_updates = yes in /etc/dnf/automatic.conf", timer)}
	}
	return &posturev1.AutoUpdate{Meta: c.meta(posturev1.Status_STATUS_OK, ""), Mechanism: mechanism,
		Detail: "no dnf-automatic timer is enabled (" + strings.Join(states, ", ") + "): systemctl enable --now dnf-automatic-install.timer"}
}
