#!/usr/bin/env bash
# Volumes at scale: one manager and NODES simulated nodes (`gantry
# sim-nodes`, the real protocol over mutual TLS, no containers), each with
# VOLUMES volumes that it reports as an agent does (the list and every
# figure once, then every 30 s the one volume whose figures changed). Then
# a global service mounts `vol-0` on every node with a backup every
# minute (the nodes serve no peer port, so each backup fails: the
# schedule's failure pauses and records are exercised at full size).
#
#   sudo bash scripts/bench-volumes.sh     # NODES=1000 VOLUMES=10
#
# Measures, with 0 volumes and with VOLUMES in the same run: the manager's
# CPU at rest (% of one core over 20 s), its peak RSS, `GET /v1/volumes`
# (median of 5, and its size), and with the backup schedule: CPU at rest
# and the records kept. The last line sums up.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-1000}
VOLUMES=${VOLUMES:-10}
command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null
[ -n "${GANTRY_BIN:-}" ] || cargo build --release --locked -q -p gantry
G=${GANTRY_BIN:-$PWD/target/release/gantry}
hz=$(getconf CLK_TCK)
ulimit -n 1048576 || true

# One run: NODES nodes with $1 volumes each; prints key=value lines.
run() {
  local vols=$1 work port mport mpid spid
  work=$(mktemp -d /tmp/gantry-vols.XXXXXX)
  export GANTRY_CONFIG_DIR=$work/cfg
  port=$((20000 + RANDOM % 20000))
  mport=$((port + 1))
  "$G" --data-dir "$work/m" server --listen "127.0.0.1:$port" --advertise 127.0.0.1 \
    --no-acme --heartbeat-grace 30s --cluster-cidr 10.0.0.0/8 \
    --manager-metrics "127.0.0.1:$mport" >"$work/manager.log" 2>&1 &
  mpid=$!
  for _ in $(seq 100); do "$G" node ls >/dev/null 2>&1 && break; sleep 0.2; done
  "$G" join-token -q >"$work/token"
  "$G" sim-nodes --manager "127.0.0.1:$port" --token-file "$work/token" --nodes "$NODES" \
    --volumes "$vols" >"$work/sim.log" 2>&1 &
  spid=$!
  for _ in $(seq 600); do
    [ "$("$G" node ls --format json 2>/dev/null | jq '[.[] | select(.up)] | length' 2>/dev/null || echo 0)" -ge "$NODES" ] && break
    sleep 0.5
  done
  # Every node's first report in, and a round of changes.
  sleep 35
  cpu() { awk '{print $14 + $15}' "/proc/$mpid/stat"; }
  local c0 idle ls_ms=() size count rss
  c0=$(cpu); sleep 20
  idle=$(awk -v a="$(cpu)" -v b="$c0" -v h="$hz" 'BEGIN {printf "%.1f", (a - b) / h * 5}')
  for _ in 1 2 3 4 5; do
    local t0 t1
    t0=$(date +%s%N)
    "$G" volume ls --format json >"$work/ls.json"
    t1=$(date +%s%N)
    ls_ms+=($(( (t1 - t0) / 1000000 )))
  done
  size=$(stat -c %s "$work/ls.json")
  count=$(jq length "$work/ls.json")
  local med
  med=$(printf '%s\n' "${ls_ms[@]}" | sort -n | sed -n 3p)
  local sched_idle=- records=-
  if [ "$vols" -gt 0 ]; then
    cat >"$work/stack.yml" <<EOF
services:
  db:
    image: example.test/sim:1
    command: ["sleep", "100000"]
    volumes: ["data:/data"]
    deploy: {mode: global}
volumes:
  data:
    external: true
    name: vol-0
    x-gantry:
      backup: {schedule: "0 * * * * *", to: /srv/none, key: k}
secrets:
  k: {file: $work/token}
EOF
    "$G" deploy -d -f "$work/stack.yml" vb >/dev/null
    # Two scheduled rounds, then CPU at rest with the schedule.
    sleep 125
    c0=$(cpu); sleep 20
    sched_idle=$(awk -v a="$(cpu)" -v b="$c0" -v h="$hz" 'BEGIN {printf "%.1f", (a - b) / h * 5}')
    records=$("$G" volume ls --format json | jq '[.[] | select(.last_backup != null)] | length')
  fi
  rss=$(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$mpid/status")
  kill "$spid" "$mpid" 2>/dev/null || true
  wait "$spid" "$mpid" 2>/dev/null || true
  rm -rf "$work"
  echo "volumes_per_node=$vols volumes=$count idle_cpu_pct=$idle ls_ms=$med ls_bytes=$size manager_peak_rss_mb=$rss with_schedule_idle_cpu_pct=$sched_idle backup_records=$records"
}

run 0
run "$VOLUMES"
