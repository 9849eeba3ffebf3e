#!/bin/sh
# posture-collector: after the files are in place (deb: configure
# [OLD-VERSION]; rpm: 1 on install, 2 on upgrade).
set -e
data=/var/lib/posture-collector
mkdir -p "$data"
chown posture-collector:posture-collector "$data"
chmod 0700 "$data"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    systemctl enable posture-collector.service >/dev/null 2>&1 || true
    # Started (or, on an upgrade, restarted on the new binary). By default
    # it listens on 127.0.0.1:8443 only: set listen and advertise in
    # /etc/posture/collector.yaml, then systemctl restart posture-collector.
    systemctl restart posture-collector.service || true
else
    echo "posture-collector: systemd is not running here; run the collector under your supervisor as its user:"
    echo "  runuser -u posture-collector -- posture-collector run"
fi
exit 0
