#!/usr/bin/env bash
# Overlay benchmark (see BENCHMARKS.md): two simulated hosts (network
# namespaces on a bridge), a Gantry manager and two agents, one task on
# each host. iperf3 between the two tasks' network namespaces (over the
# VXLAN overlay) against iperf3 between the two hosts (the underlay), with
# 1 and 4 streams; and round-trip latency with ping. Prints Markdown.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 >/dev/null
cargo build --release --locked -q
G="$PWD/target/release/gantry"
SECS=${SECS:-3}
RUNS=${RUNS:-5}
# TCP_CC: the congestion control of the bench's sockets, cubic by default
# (Linux's default). This VM's kernel defaults to BBR, whose pacing falls
# into long slow phases on a CPU-bound path (underlay and overlay alike),
# and a socket switched away from it with `iperf3 -C` can stay paced. So
# it is made the default of the bench's own namespaces (hosts and tasks),
# and passed to iperf3 too.
TCP_CC=${TCP_CC:-cubic}
# PIN=1 (default): clients on CPU 0, servers on CPU 1, for every path
# alike; unpinned, the scheduler's placement of the two single-threaded
# iperf3 processes moves a run's figure by up to 2x. PIN=0: unpinned.
PIN=${PIN:-1}
client_cpu=(); server_cpu=()
[ "$PIN" = 1 ] && { client_cpu=(taskset -c 0); server_cpu=(taskset -c 1); }
# DIRECT=1: the cluster routes between the two hosts (one subnet) without
# VXLAN (`gantry server --direct-routing`).
DIRECT=${DIRECT:-0}
server_flags=()
[ "$DIRECT" = 1 ] && server_flags+=(--direct-routing)
agent_flags=()
[ "${NO_FAST_PATH:-0}" = 1 ] && agent_flags+=(--no-fast-path)
tag="gb$$"
work=$(mktemp -d /tmp/gantry-bench-overlay.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The manager and agents run under nsenter in subshells: $! is the
  # subshell's, so they are found by their data dirs too.
  pkill -f -- "$work" 2>/dev/null || true
  sleep 0.3
  for i in 1 2; do
    nsenter --net=/run/netns/$tag-h$i "$G" --data-dir "$work/a$i" agent --cleanup >/dev/null 2>&1 || true
  done
  for n in $tag-h0 $tag-h1 $tag-h2 $tag-lan; do ip netns del $n 2>/dev/null || true; done
  # The allowed congestion controls as they were (see TCP_CC below), even
  # when the script stopped while they were widened.
  [ -z "${allowed:-}" ] || sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed"
  # KEEP_LOGS=1: the manager's and agents' logs are left in /tmp.
  [ -n "${KEEP_LOGS:-}" ] && cp "$work"/*.log /tmp/ 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The LAN: a bridge in a namespace of its own, three hosts on it.
ip netns add $tag-lan
ip -n $tag-lan link add br0 type bridge
ip -n $tag-lan link set br0 up
for i in 0 1 2; do
  ip netns add $tag-h$i
  ip -n $tag-lan link add h$i type veth peer name eth0 netns $tag-h$i
  ip -n $tag-lan link set h$i master br0 up
  ip -n $tag-h$i addr add 192.168.250.$((10 + i))/24 dev eth0
  ip -n $tag-h$i link set eth0 up
  ip -n $tag-h$i link set lo up
done
on() { local h=$1; shift; nsenter --net=/run/netns/$tag-h$h "$@"; }

# A busybox image, in each agent's store (no registry needed).
ctx="$work/ctx"
mkdir -p "$ctx"
cp /bin/busybox "$ctx/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n' > "$ctx/Dockerfile"
for i in 1 2; do "$G" --data-dir "$work/a$i" build -q -t bench:1 "$ctx" >/dev/null; done

export GANTRY_CONFIG_DIR="$work/cfg"
on 0 "$G" --data-dir "$work/m" server --listen 0.0.0.0:4243 --advertise 192.168.250.10 "${server_flags[@]}" 2>"$work/m.log" &
pids+=($!)
for _ in $(seq 100); do on 0 "$G" node ls >/dev/null 2>&1 && break; sleep 0.1; done
token=$(on 0 "$G" join-token -q)
for i in 1 2; do
  on $i "$G" --data-dir "$work/a$i" agent --manager 192.168.250.10 --token "$token" --hostname h$i "${agent_flags[@]}" 2>"$work/a$i.log" &
  pids+=($!)
done
cat > "$work/stack.yml" <<'STACK'
services:
  perf:
    image: bench:1
    command: ["sleep", "1000000"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
STACK
for _ in $(seq 100); do [ "$(on 0 "$G" node ls --format json | grep -c '"up": true')" = 2 ] && break; sleep 0.1; done
on 0 "$G" deploy -f "$work/stack.yml" bench >/dev/null
pid_of() { "$G" --data-dir "$work/a$1" inspect "$("$G" --data-dir "$work/a$1" ps -q | head -1)" | sed -n 's/.*"Pid": \([0-9]*\).*/\1/p' | head -1; }
ip_of() { "$G" --data-dir "$work/a$1" inspect "$("$G" --data-dir "$work/a$1" ps -q | head -1)" | sed -n 's/.*"IPAddress": "\(.*\)".*/\1/p' | head -1; }
for _ in $(seq 100); do [ -n "$(pid_of 1)" ] && [ -n "$(pid_of 2)" ] && break; sleep 0.1; done
c1=$(pid_of 1); c2=$(pid_of 2); ip2=$(ip_of 2)
[ -n "$c1" ] && [ -n "$c2" ] && [ -n "$ip2" ] || { echo "tasks did not start" >&2; exit 1; }
in_task() { local pid=$1; shift; nsenter --net=/proc/$pid/ns/net "$@"; }
# A namespace other than the first may only pick an allowed algorithm:
# allowed for the moment it takes to set it, then the list as it was.
allowed=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed $TCP_CC"
for ns in /run/netns/$tag-h1 /run/netns/$tag-h2 /proc/$c1/ns/net /proc/$c2/ns/net; do
  nsenter --net=$ns sysctl -qw net.ipv4.tcp_congestion_control="$TCP_CC"
done
sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed"

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
# Busy clock ticks of the whole machine (user, nice, system, irq, softirq):
# both simulated hosts share its CPUs, so this is what a path costs.
busy() { head -1 /proc/stat | awk '{print $2 + $3 + $4 + $7 + $8}'; }
# One iperf3 run: "Gbit/s busy-ticks-per-GB".
one() { # client-prefix... -- addr port streams
  local pre=() a b json
  while [ "$1" != -- ]; do pre+=("$1"); shift; done; shift
  a=$(busy)
  json=$("${pre[@]}" "${client_cpu[@]}" iperf3 -c "$1" -p "$2" -t "$SECS" -P "$3" -C "$TCP_CC" -J)
  b=$(busy)
  echo "$json" | sed -n 's/.*"bytes":[[:space:]]*\([0-9]*\).*/\1/p' | tail -1 |
    awk -v s="$SECS" -v t=$((b - a)) '{printf "%.2f %.1f\n", $1 * 8 / s / 1e9, t / ($1 / 1e9)}'
}
on 2 "${server_cpu[@]}" iperf3 -s -D -p 5201 >/dev/null
in_task "$c2" "${server_cpu[@]}" iperf3 -s -D -p 5202 >/dev/null
sleep 0.5
[ "$DIRECT" = 1 ] && echo "(direct routing: $(on 1 ip route show proto 103 | head -1))"
gw2=$(on 2 ip -4 -br addr show gantry0 | awk '{print $3}' | cut -d/ -f1)
# Rounds interleave the paths (underlay, overlay, gateway to gateway), so
# the machine's drift falls on all alike; each round's overlay figure is
# taken as a share of the same round's underlay, and the shares' median
# is reported. The CPU each path costs a byte is steadier than its
# throughput on a noisy machine, and is reported beside it.
declare -A G C R
for n in 1 4; do
  for _ in $(seq "$RUNS"); do
    read -r hg hc < <(one on 1 -- 192.168.250.12 5201 $n)
    read -r og oc < <(one in_task "$c1" -- "$ip2" 5202 $n)
    read -r gg gc < <(one on 1 -- "$gw2" 5201 $n)
    G[h$n]+="$hg "; G[o$n]+="$og "; G[g$n]+="$gg "
    C[h$n]+="$hc "; C[o$n]+="$oc "; C[g$n]+="$gc "
    R[o$n]+="$(awk -v a="$og" -v b="$hg" 'BEGIN {printf "%.3f", a / b}') "
    R[g$n]+="$(awk -v a="$gg" -v b="$hg" 'BEGIN {printf "%.3f", a / b}') "
    R[co$n]+="$(awk -v a="$oc" -v b="$hc" 'BEGIN {printf "%.3f", a / b}') "
  done
done
m() { printf '%s\n' ${1} | median; }
pct() { m "$1" | awk '{printf "%.0f%%", 100 * $1}'; }
echo "| path | 1 stream (Gbit/s) | 4 streams (Gbit/s) | CPU per GB, 4 streams (ticks) |"
echo "|---|---|---|---|"
echo "| host to host (underlay) | $(m "${G[h1]}") | $(m "${G[h4]}") | $(m "${C[h4]}") |"
echo "| task to task across hosts (overlay) | $(m "${G[o1]}") | $(m "${G[o4]}") | $(m "${C[o4]}") |"
# The same overlay without the task veth hop: host to host by the nodes'
# gateway addresses, to split the cost between the overlay and the veth.
echo "| host to host by gateway addresses (overlay, no task veth) | $(m "${G[g1]}") | $(m "${G[g4]}") | $(m "${C[g4]}") |"
echo
echo "iperf3 -C $TCP_CC, $([ "$PIN" = 1 ] && echo "clients on CPU 0, servers on CPU 1" || echo unpinned), $SECS s per run"
echo "overlay / underlay, median of $RUNS interleaved rounds: $(pct "${R[o1]}") with 1 stream, $(pct "${R[o4]}") with 4 streams (gateway to gateway: $(pct "${R[g4]}")); CPU per byte, 4 streams: $(m "${R[co4]}")x the underlay's"
hr=$(on 1 ping -c 50 -i 0.02 -q 192.168.250.12 | sed -n 's/.*= [0-9.]*\/\([0-9.]*\)\/.*/\1/p')
orr=$(in_task "$c1" ping -c 50 -i 0.02 -q "$ip2" | sed -n 's/.*= [0-9.]*\/\([0-9.]*\)\/.*/\1/p')
echo "round trip (ping, average of 50): host to host $hr ms, task to task $orr ms"
# What the overlay's BPF fast path carried (NO_FAST_PATH=1: agents without it).
for i in 1 2; do
  echo "h$i fast path: $(on $i curl -s 127.0.0.1:9323/metrics | sed -n 's/^gantry_overlay_fast_path_packets_total{way="\(.*\)"} \(.*\)/\1=\2/p' | tr '\n' ' ')"
done
pkill -f "iperf3 -s -D -p 520" || true
