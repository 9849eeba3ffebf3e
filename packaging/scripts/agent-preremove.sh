#!/bin/sh
# posture-agent: before the files go (deb: remove, upgrade NEW-VERSION,
# deconfigure; rpm: 0 on erase, 1 on upgrade, when the new version is
# already installed).
set -e
case "$1" in
remove|0)
    if [ -d /run/systemd/system ]; then
        systemctl disable --now posture-agent.service >/dev/null 2>&1 || true
    elif [ -f /etc/init.d/posture-agent ]; then
        # Stops it and removes its init script, links, pid file and log;
        # the enrollment in /var/lib/posture-agent stays until purge.
        /usr/bin/posture-agent uninstall >/dev/null || true
    fi
    ;;
upgrade|deconfigure)
    if [ -d /run/systemd/system ]; then
        systemctl stop posture-agent.service >/dev/null 2>&1 || true
    elif [ -f /etc/init.d/posture-agent ]; then
        /usr/bin/posture-agent stop >/dev/null || true
    fi
    ;;
esac
exit 0
