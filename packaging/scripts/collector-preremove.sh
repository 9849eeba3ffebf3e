#!/bin/sh
# posture-collector: before the files go (deb: remove, upgrade …; rpm: 0 on
# erase, 1 on upgrade).
set -e
case "$1" in
remove|0)
    if [ -d /run/systemd/system ]; then
        systemctl disable --now posture-collector.service >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
