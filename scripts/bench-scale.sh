#!/usr/bin/env bash
# The control plane at scale: one manager and NODES simulated nodes (one
# process, `gantry sim-nodes`: each joins with the token and speaks the real
# protocol over mutual TLS with its own certificate, its assignment stream
# and its heartbeats, but runs no container), then a stack of SERVICES
# services with TASKS tasks in all, in STACKS stacks (default 1). Measures the time until the manager
# sees every task running, the manager's peak RSS and CPU seconds, and the
# bytes the manager sends to nodes for one change of one service (a scale
# by one replica). Nodes are sent the DNS names and network members of the
# stacks whose tasks they run, so with many small stacks a change reaches
# only the nodes of its stack.
#
#   sudo bash scripts/bench-scale.sh      # NODES=1000 TASKS=100000 SERVICES=100
#
# GRACE is the manager's heartbeat grace (default 3s), TIMEOUT the seconds
# each phase may take; KEEP=1 keeps the manager's and the nodes' logs in
# /tmp; GANTRY_SIM_DUMP=1 has the nodes print every line they receive.
#
# Everything runs on this machine: the simulated nodes share its cores
# with the manager. The last line sums up:
#   nodes=.. tasks=.. services=.. stacks=.. joined_s=.. running_after_s=.. manager_peak_rss_mb=.. manager_cpu_s=.. bytes_per_service_change=.. idle_cpu_pct=..
# (idle_cpu_pct: the manager's CPU, in % of one core, over 10 s at rest
# afterwards: heartbeats and keep-alives alone)
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-1000}
TASKS=${TASKS:-100000}
SERVICES=${SERVICES:-100}
STACKS=${STACKS:-1}
GRACE=${GRACE:-3s}
TIMEOUT=${TIMEOUT:-600}
command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null
[ -n "${GANTRY_BIN:-}" ] || cargo build --release --locked -q -p gantry
G=${GANTRY_BIN:-$PWD/target/release/gantry}
work=$(mktemp -d /tmp/gantry-scale.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && cp "$work/sim.log" "$work/manager.log" /tmp/; rm -rf "$work"
}
trap cleanup EXIT
export GANTRY_CONFIG_DIR=$work/cfg
port=$((20000 + RANDOM % 20000))
mport=$((port + 1))
ulimit -n 1048576 || true
"$G" --data-dir "$work/m" server --listen "127.0.0.1:$port" --advertise 127.0.0.1 \
  --no-acme --heartbeat-grace "$GRACE" --cluster-cidr 10.0.0.0/8 \
  --manager-metrics "127.0.0.1:$mport" >"$work/manager.log" 2>&1 &
mpid=$!
pids+=("$mpid")
for _ in $(seq 100); do "$G" node ls >/dev/null 2>&1 && break; sleep 0.2; done
"$G" join-token -q >"$work/token"

t_join=$(date +%s.%N)
GANTRY_SIM_DUMP=${GANTRY_SIM_DUMP:-} "$G" sim-nodes --manager "127.0.0.1:$port" --token-file "$work/token" --nodes "$NODES" \
  >"$work/sim.log" 2>&1 &
pids+=("$!")
ready=0
for _ in $(seq $((TIMEOUT * 2))); do
  ready=$("$G" node ls --format json 2>/dev/null | jq '[.[] | select(.up)] | length' 2>/dev/null || echo 0)
  [ "$ready" -ge "$NODES" ] && break
  sleep 0.5
done
joined_s=$(awk -v a="$(date +%s.%N)" -v b="$t_join" 'BEGIN {printf "%.1f", a - b}')
echo "# $ready of $NODES nodes ready after ${joined_s}s" >&2
[ "$ready" -ge "$NODES" ] || { tail -5 "$work/manager.log" "$work/sim.log" >&2; exit 1; }

per=$((TASKS / SERVICES))
per_stack=$((SERVICES / STACKS))
for k in $(seq 0 $((STACKS - 1))); do
  {
    echo "services:"
    for s in $(seq 0 $((per_stack - 1))); do
      cat <<EOF
  s$s:
    image: example.test/sim:1
    command: ["sleep", "100000"]
    deploy:
      replicas: $per
EOF
    done
  } >"$work/stack$k.yml"
done
cpu() { awk '{print $14 + $15}' "/proc/$mpid/stat"; }
running() {
  "$G" service ls --format json 2>/dev/null | jq '[.[] | .running] | add // 0' 2>/dev/null || echo 0
}
cpu0=$(cpu)
t0=$(date +%s.%N)
for k in $(seq 0 $((STACKS - 1))); do
  "$G" deploy -d -f "$work/stack$k.yml" "bench$k" >/dev/null
done
n=0
for _ in $(seq $((TIMEOUT * 2))); do
  n=$(running)
  [ "$n" -ge "$TASKS" ] && break
  sleep 0.5
done
all_s=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {printf "%.1f", a - b}')
echo "# $n of $TASKS tasks running after ${all_s}s" >&2
[ "$n" -ge "$TASKS" ] || { tail -5 "$work/manager.log" "$work/sim.log" >&2; exit 1; }
sleep 2

bytes() {
  curl -s "http://127.0.0.1:$mport/metrics" | awk '/^gantry_manager_assignment_bytes_total/ {print $2}'
}
# The deploy's last changes drain first: the count is read once the
# manager has sent nothing for a second.
b0=$(bytes)
for _ in $(seq 60); do
  sleep 1
  b=$(bytes)
  [ "$b" = "$b0" ] && break
  b0=$b
done
"$G" service scale "bench0_s0=$((per + 1))" >/dev/null
for _ in $(seq 120); do
  [ "$(running)" -ge $((TASKS + 1)) ] && break
  sleep 0.5
done
sleep 2
b1=$(bytes)
change=$(awk -v a="$b1" -v b="$b0" 'BEGIN {printf "%d", a - b}')
cpu1=$(cpu)
hz=$(getconf CLK_TCK)
cpu_s=$(awk -v a="$cpu1" -v b="$cpu0" -v h="$hz" 'BEGIN {printf "%.1f", (a - b) / h}')
rss=$(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$mpid/status")
# At rest: what the manager spends on heartbeats and keep-alives alone.
c0=$(cpu)
sleep 10
idle_pct=$(awk -v a="$(cpu)" -v b="$c0" -v h="$hz" 'BEGIN {printf "%d", (a - b) / h * 10}')
echo "# sim: $(tail -1 "$work/sim.log")" >&2
echo "nodes=$NODES tasks=$TASKS services=$SERVICES stacks=$STACKS joined_s=$joined_s running_after_s=$all_s manager_peak_rss_mb=$rss manager_cpu_s=$cpu_s bytes_per_service_change=$change idle_cpu_pct=$idle_pct"
