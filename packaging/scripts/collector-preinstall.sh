#!/bin/sh
# posture-collector: before the files are unpacked. Its own system user,
# which owns its data directory and runs the service.
set -e
if ! getent group posture-collector >/dev/null; then
    groupadd --system posture-collector
fi
if ! getent passwd posture-collector >/dev/null; then
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    useradd --system --gid posture-collector --home-dir /var/lib/posture-collector \
        --no-create-home --shell "$nologin" --comment "Posture collector" posture-collector
fi
exit 0
