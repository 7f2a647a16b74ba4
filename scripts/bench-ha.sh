#!/usr/bin/env bash
# Leader failover of three managers on simulated hosts (network
# namespaces ha1..ha3 on a bridge): ROUNDS times per mode, the leader is
# taken away and the time until a write from the CLI (a node label, which
# rolls nothing) succeeds again is measured; the CLI's credential names
# the three managers and it fails over by itself. Modes:
#   process  the leader's process is killed (SIGKILL), then restarted;
#   link     the leader's host loses its link (ip link down), then gets it
#            back.
# Between rounds it waits until all three managers are reachable again,
# then SETTLE seconds (default 3: a manager that has just come back is
# still catching up, and a leader dying at that very moment is a second
# fault; SETTLE=0 measures that too).
# Prints each time and, per mode, min / median / p90 / max.
#
#   sudo bash scripts/bench-ha.sh                 # ROUNDS=20 MODES="process link"
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
SETTLE=${SETTLE:-3}
MODES=${MODES:-"process link"}
bash scripts/install-deps.sh
[ -n "${GANTRY_BIN:-}" ] || cargo build --release --locked -q -p gantry
G=${GANTRY_BIN:-$PWD/target/release/gantry}
work=$(mktemp -d /tmp/gantry-ha.XXXXXX)
export GANTRY_CONFIG_DIR=$work/cli
BR=gantryha0
PORT=4243
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for i in 1 2 3; do ip netns del "ha$i" 2>/dev/null || true; done
  ip link del "$BR" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip link add "$BR" type bridge
ip addr add 10.198.0.1/24 dev "$BR"
ip link set "$BR" up
for i in 1 2 3; do
  ip netns add "ha$i"
  ip link add "ha$i-h" type veth peer name eth0 netns "ha$i"
  ip link set "ha$i-h" master "$BR" up
  ip -n "ha$i" addr add "10.198.0.1$i/24" dev eth0
  ip -n "ha$i" link set eth0 up
  ip -n "ha$i" link set lo up
done
addr() { echo "10.198.0.1$1:$PORT"; }
start() { # start I [ARGS...]
  local i=$1
  shift
  GANTRY_CONFIG_DIR=$work/c$i GANTRY_LOG=warn ip netns exec "ha$i" "$G" --data-dir "$work/d$i" \
    server --listen "0.0.0.0:$PORT" --advertise "10.198.0.1$i" --hostname "m$i" \
    --no-acme --manager-metrics 127.0.0.1:0 "$@" >>"$work/m$i.log" 2>&1 &
  pids[$i]=$!
}
start 1
for _ in $(seq 1 100); do [ -f "$work/c1/admin.json" ] && break; sleep 0.1; done
mkdir -p "$work/cli"
cp "$work/c1/admin.json" "$work/cli/admin.json"
token=$("$G" join-token manager -q)
start 2 --join "$(addr 1)" --token "$token"
start 3 --join "$(addr 1)" --token "$token"
reachable() { # all three reachable, one leading
  "$G" manager ls --format json 2>/dev/null |
    jq -e '([.[] | select(.status == "Leader")] | length) == 1 and
           ([.[] | select(.status == "Reachable" or .status == "Leader")] | length) == 3' >/dev/null
}
wait_reachable() {
  for _ in $(seq 1 300); do reachable && return 0; sleep 0.2; done
  echo "the managers did not come back: $("$G" manager ls 2>&1)" >&2
  exit 1
}
wait_reachable
leader() {
  "$G" manager ls --format json | jq -r '.[] | select(.status == "Leader") | .hostname' | tr -d m
}
now() { date +%s.%N; }
stats() { # numbers on stdin
  sort -n | awk '{v[NR] = $1} END {
    p90 = v[int((NR * 9 + 9) / 10)]; if (p90 == "") p90 = v[NR];
    printf "min %.2f  median %.2f  p90 %.2f  max %.2f  (n=%d)\n", v[1], v[int((NR + 1) / 2)], p90, v[NR], NR }'
}
for mode in $MODES; do
  : >"$work/$mode.times"
  for r in $(seq 1 "$ROUNDS"); do
    l=$(leader)
    t0=$(now)
    case $mode in
      process) kill -9 "${pids[$l]}" ;;
      link) ip -n "ha$l" link set eth0 down ;;
    esac
    n=0
    until "$G" node ls >/dev/null 2>&1 && "$G" network create "ha-$mode-$r" >/dev/null 2>&1; do
      n=$((n + 1))
      [ "$n" -gt 200 ] && { echo "no write within 200 tries" >&2; exit 1; }
      sleep 0.05
    done
    t=$(awk -v a="$(now)" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')
    echo "$t" >>"$work/$mode.times"
    echo "$mode round $r: leader m$l gone, a write succeeded after $t s"
    case $mode in
      process) wait "${pids[$l]}" 2>/dev/null || true; start "$l" ;;
      link) ip -n "ha$l" link set eth0 up ;;
    esac
    wait_reachable
    sleep "$SETTLE"
  done
done
echo
for mode in $MODES; do
  printf '%-8s ' "$mode"
  stats <"$work/$mode.times"
done
