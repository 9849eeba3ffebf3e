package main

import (
	"fmt"
	"html"
	"strings"
)

// The service definitions are written here rather than by kardianos/service's
// templates so that they are the same text whether posture-agent install
// writes them or a package ships them (packaging/ holds them, checked
// against these functions by a golden test), and so that each has what the
// service manager needs to restart the agent when it fails.

const (
	serviceName        = "posture-agent"
	serviceDisplayName = "Posture agent"
	serviceDescription = "Measures device posture and streams signed reports to the Posture collector."
	// packagedBinary is where the Linux packages put the agent.
	packagedBinary = "/usr/bin/posture-agent"
	// sysvPIDFile and sysvLogFile are the System V init script's.
	sysvPIDFile = "/var/run/posture-agent.pid"
	sysvLogFile = "/var/log/posture-agent.log"
	// launchdLogFile is where launchd sends the agent's output on macOS.
	launchdLogFile = "/Library/Logs/posture-agent.log"
)

// systemdQuote quotes an argument for a systemd command line when it
// needs it.
func systemdQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\$%;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `$$`, `%`, `%%`)
	return `"` + r.Replace(s) + `"`
}

// shellQuote quotes an argument for /bin/sh.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\$`;&|<>()*?[]#~!{}\n") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func commandLine(quote func(string) string, path string, args []string) string {
	parts := []string{quote(path)}
	for _, a := range args {
		parts = append(parts, quote(a))
	}
	return strings.Join(parts, " ")
}

// systemdUnit is the agent's systemd unit: restarted whenever it stops
// other than by systemctl stop, without a limit on restarts (a laptop
// offline for a day must not leave the agent given up).
func systemdUnit(path string, args []string) string {
	return `[Unit]
Description=` + serviceDisplayName + `
Documentation=https://github.com/posture-project/posture
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStart=` + commandLine(systemdQuote, path, args) + `
Restart=always
RestartSec=10s
TimeoutStopSec=20s

[Install]
WantedBy=multi-user.target
`
}

// launchdPlist is the agent's launchd job: started at boot and kept
// alive (launchd starts it again whenever it exits, at most every 10 s).
func launchdPlist(path string, args []string) string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>` + serviceName + `</string>
	<key>ProgramArguments</key>
	<array>
`)
	for _, a := range append([]string{path}, args...) {
		fmt.Fprintf(&b, "\t\t<string>%s</string>\n", html.EscapeString(a))
	}
	b.WriteString(`	</array>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<true/>
	<key>ThrottleInterval</key>
	<integer>10</integer>
	<key>StandardOutPath</key>
	<string>` + launchdLogFile + `</string>
	<key>StandardErrorPath</key>
	<string>` + launchdLogFile + `</string>
</dict>
</plist>
`)
	return b.String()
}

// sysvScript is the agent's System V init script. System V init has no
// supervisor: an agent that fails stays stopped, and status says so and
// why (exit 1, "dead"); posture-agent start fails when it stops at once.
func sysvScript(path string, args []string) string {
	return `#!/bin/sh
### BEGIN INIT INFO
# Provides:          ` + serviceName + `
# Required-Start:    $network $remote_fs $syslog
# Required-Stop:     $network $remote_fs $syslog
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: ` + serviceDisplayName + `
# Description:       ` + serviceDescription + `
### END INIT INFO

cmd="` + commandLine(shellQuote, path, args) + `"
pid_file=` + sysvPIDFile + `
log_file=` + sysvLogFile + `

# running: the process in the pid file is alive and is the agent.
running() {
    [ -f "$pid_file" ] || return 1
    pid=$(cat "$pid_file" 2>/dev/null)
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q posture-agent
}

case "$1" in
start)
    if running; then
        echo "posture-agent is running (pid $pid)"
        exit 0
    fi
    umask 077
    $cmd >>"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
    echo "posture-agent started (pid $!)"
    ;;
stop)
    if ! running; then
        rm -f "$pid_file"
        echo "posture-agent is not running"
        exit 0
    fi
    kill "$pid"
    i=0
    while running && [ $i -lt 200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if running; then
        echo "posture-agent (pid $pid) did not stop within 20s" >&2
        exit 1
    fi
    rm -f "$pid_file"
    echo "posture-agent stopped"
    ;;
restart|force-reload)
    "$0" stop && "$0" start
    ;;
status)
    if running; then
        echo "posture-agent is running (pid $pid)"
        exit 0
    elif [ -f "$pid_file" ]; then
        echo "posture-agent is dead, but its pid file remains; see $log_file"
        exit 1
    fi
    echo "posture-agent is not running"
    exit 3
    ;;
*)
    echo "Usage: $0 {start|stop|restart|force-reload|status}" >&2
    exit 2
    ;;
esac
exit 0
`
}
