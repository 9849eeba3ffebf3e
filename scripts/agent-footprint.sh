#!/usr/bin/env bash
# Measures what a running agent costs this machine: it starts a collector
# on loopback, enrolls an agent (software identity), runs it streaming a
# report every INTERVAL for DURATION, and reads the agent process's
# resident memory (VmRSS, and its peak VmHWM; most of it is the binary's
# own pages, RssFile) and CPU time from /proc.
# Linux only. Everything lives in a temporary directory and is stopped at
# the end.
#
#   scripts/agent-footprint.sh [DURATION_SECONDS] [INTERVAL]   (default 120 2s)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-120}
interval=${2:-2s}
work=$(mktemp -d "${TMPDIR:-/tmp}/posture-footprint.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The agent as make builds it (AGENT_TAGS), pure Go and statically linked
# as it ships (CGO_ENABLED=0); a cgo build also maps the C library, about
# 1.4 MiB more.
tags=$(sed -n 's/^AGENT_TAGS *:= *//p' Makefile)
go build -o "$work/" ./collector/cmd/posture-collector
CGO_ENABLED=0 go build -tags "$tags" -o "$work/" ./agent/cmd/posture-agent
data="$work/collector" state="$work/agent"
"$work/posture-collector" run --data-dir "$data" --listen 127.0.0.1:0 >"$work/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$data/admin.sock" ] && break; sleep 0.1; done
[ -S "$data/admin.sock" ] || { cat "$work/collector.log"; echo "collector did not start" >&2; exit 1; }
token=$("$work/posture-collector" token create --ttl 10m --data-dir "$data" 2>/dev/null)
"$work/posture-agent" enroll --token "$token" --state-dir "$state" --identity software >/dev/null

"$work/posture-agent" run --state-dir "$state" --interval "$interval" >"$work/agent.log" 2>&1 &
agent=$!
pids+=("$agent")

# CPU time in clock ticks (utime + stime) and memory, from /proc.
ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$agent/status"; }
hz=$(getconf CLK_TCK)

sleep 15 # enrollment, first connection and the first package-manager check
t0=$(ticks) start=$(date +%s.%N)
min=999999 max=0 sum=0 n=0
end=$(( $(date +%s) + duration ))
while [ "$(date +%s)" -lt "$end" ]; do
  rss=$(kib VmRSS)
  (( rss < min )) && min=$rss
  (( rss > max )) && max=$rss
  sum=$(( sum + rss )) n=$(( n + 1 ))
  sleep 1
done
t1=$(ticks) stop=$(date +%s.%N)
hwm=$(kib VmHWM) anon=$(kib RssAnon) file=$(kib RssFile)
seq=$("$work/posture-collector" devices list -o json --data-dir "$data" 2>/dev/null | grep -o '"lastSeq": *"[0-9]*"' | grep -o '[0-9]*' | head -1)

awk -v min="$min" -v max="$max" -v sum="$sum" -v n="$n" -v hwm="$hwm" -v anon="$anon" -v file="$file" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
    -v start="$start" -v stop="$stop" -v interval="$interval" -v seq="${seq:-?}" 'BEGIN {
  secs = stop - start
  iv = interval; sub(/s$/, "", iv)
  cycles = secs / iv
  cpu_ms = (t1 - t0) * 1000 / hz
  printf "agent streamed for %.0f s, a report every %s (collector holds %s reports)\n", secs, interval, seq
  printf "VmRSS  min %.1f MiB, mean %.1f MiB, max %.1f MiB; peak (VmHWM) %.1f MiB; at the end %.1f MiB anonymous, %.1f MiB of files\n", min/1024, sum/n/1024, max/1024, hwm/1024, anon/1024, file/1024
  printf "CPU    %.0f ms in %.0f cycles: %.2f ms per cycle (measure, sign, send, receive the acknowledgement)\n", cpu_ms, cycles, cpu_ms/cycles
}'
