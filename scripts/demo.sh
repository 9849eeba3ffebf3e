#!/usr/bin/env bash
# Runs the whole system on this machine: a collector on loopback, this
# machine's agent enrolled with a one-time token, reports streamed, the
# fleet listed and access decided. Everything lives in a temporary
# directory and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
work=$(mktemp -d "${TMPDIR:-/tmp}/posture-demo.XXXXXX")
data="$work/collector" state="$work/agent"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_DEMO:-}" ] && { echo "kept $work"; return; }
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
collector() { "$BIN/posture-collector" "$@" --data-dir "$data"; }

# A software TPM, when swtpm is installed: manufactured with an EK
# certificate from a demo CA, which the collector trusts as an EK root, so
# the device enrolls as tpm_ek_verified and signs every report with a quote.
start_swtpm() {
  local tpm="$work/swtpm" ca="$work/swtpm/localca" port
  mkdir -p "$tpm/state" "$ca"
  cat >"$tpm/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $tpm/swtpm-localca.conf
create_certs_tool_options = $tpm/swtpm-localca.options
active_pcr_banks = sha256
CONF
  cat >"$tpm/swtpm-localca.conf" <<CONF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
CONF
  printf -- '--platform-manufacturer Posture\n--platform-version 2.1\n--platform-model demo\n' >"$tpm/swtpm-localca.options"
  swtpm_setup --tpm2 --tpmstate "$tpm/state" --create-ek-cert --lock-nvram \
    --config "$tpm/swtpm_setup.conf" --logfile "$tpm/setup.log" >/dev/null
  cat "$ca/swtpm-localca-rootca-cert.pem" "$ca/issuercert.pem" >"$work/ek-roots.pem"
  port=$(( 20000 + RANDOM % 20000 ))
  swtpm socket --tpm2 --server type=tcp,bindaddr=127.0.0.1,port=$port \
    --ctrl type=tcp,bindaddr=127.0.0.1,port=$((port + 1)) \
    --tpmstate dir="$tpm/state" --flags not-need-init,startup-clear --log file="$tpm/swtpm.log" &
  pids+=($!)
  sleep 0.5
  tpm_addr="tcp://127.0.0.1:$port"
}

identity_flags=(--identity software)
collector_flags=()
if command -v swtpm >/dev/null && command -v swtpm_setup >/dev/null && command -v swtpm_localca >/dev/null; then
  say "start a software TPM (swtpm) with an EK certificate from a demo CA"
  start_swtpm
  echo "swtpm listening at $tpm_addr; demo EK CA: $work/ek-roots.pem"
  identity_flags=(--identity tpm --tpm "$tpm_addr")
  collector_flags=(--ekcert-roots "$work/ek-roots.pem")
else
  say "swtpm is not installed: the agent falls back to a software identity (apt-get install swtpm swtpm-tools for a TPM-backed demo)"
fi

say "start the collector (data dir $data)"
"$BIN/posture-collector" run --data-dir "$data" --listen 127.0.0.1:0 --policy demo/policy.yaml "${collector_flags[@]}" >"$work/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$data/admin.sock" ] && break; sleep 0.1; done
[ -S "$data/admin.sock" ] || { cat "$work/collector.log"; echo "collector did not start" >&2; exit 1; }
grep -m1 'collector serving' "$work/collector.log"

say "create a one-time enrollment token"
token=$(collector token create --ttl 10m 2>/dev/null)
echo "${token:0:48}…"

say "enroll this machine's agent"
"$BIN/posture-agent" enroll --token "$token" --state-dir "$state" "${identity_flags[@]}"
device=$(sed -n 's/.*"device_id": "\(.*\)".*/\1/p' "$state/agent.json")

say "run the agent (reports every 5s; the second report carries the package manager's answer)"
"$BIN/posture-agent" run --state-dir "$state" --interval 5s >"$work/agent.log" 2>&1 &
pids+=($!)
second='"lastSeq": *([2-9]|[1-9][0-9]+)([^0-9]|$)'
for _ in $(seq 300); do
  collector devices show "$device" -o json 2>/dev/null | grep -Eq "$second" && break
  sleep 0.2
done
collector devices show "$device" -o json | grep -Eq "$second" || { cat "$work/agent.log"; echo "no second report arrived" >&2; exit 1; }

say "posture-collector devices list"
collector devices list
say "posture-collector devices show $device"
collector devices show "$device"

check() {
  set +e
  collector check "$device" --level "$1"
  rc=$?
  set -e
  echo "(exit $rc)"
  [ "$rc" -le 1 ] || exit 1
}
say "posture-collector check --level basic   (exit 0 allow, 1 deny)"
check basic
say "posture-collector check --level trusted"
check trusted

say "revoke the device; the same check now denies at once"
collector devices revoke "$device" --reason "demo: laptop reported stolen"
check basic

say "posture-collector decisions: every decision above, with why and who asked"
collector decisions "$device"

say "collector counters"
collector stats
say "demo finished"
