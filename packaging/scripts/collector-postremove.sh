#!/bin/sh
# posture-collector: after the files are gone (deb: remove, purge, upgrade
# …; rpm: 0 on erase, 1 on upgrade).
set -e
case "$1" in
purge)
    # The CA, the database and everything else of this collector.
    rm -rf /var/lib/posture-collector
    if getent passwd posture-collector >/dev/null; then
        userdel posture-collector >/dev/null 2>&1 || true
    fi
    if getent group posture-collector >/dev/null; then
        groupdel posture-collector >/dev/null 2>&1 || true
    fi
    rmdir /etc/posture 2>/dev/null || true
    ;;
1)
    if [ -d /run/systemd/system ]; then
        systemctl try-restart posture-collector.service >/dev/null 2>&1 || true
    fi
    ;;
esac
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
