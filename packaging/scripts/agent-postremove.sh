#!/bin/sh
# posture-agent: after the files are gone (deb: remove, purge, upgrade …;
# rpm: 0 on erase, 1 on upgrade).
set -e
case "$1" in
purge)
    # The device's identity, certificates and unsent measurements.
    rm -rf /var/lib/posture-agent
    rm -f /var/log/posture-agent.log /var/run/posture-agent.pid
    rmdir /etc/posture 2>/dev/null || true
    ;;
1)
    # rpm upgrade: the old version's preremove ran after the new one was
    # installed; start the new one.
    if [ -f /var/lib/posture-agent/agent.json ]; then
        if [ -d /run/systemd/system ]; then
            systemctl try-restart posture-agent.service >/dev/null 2>&1 || true
        fi
    fi
    ;;
esac
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
