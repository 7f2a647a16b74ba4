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
SECS=${SECS:-5}
RUNS=${RUNS:-3}
# DIRECT=1: the cluster routes between the two hosts (one subnet) without
# VXLAN (`gantry server --direct-routing`).
DIRECT=${DIRECT:-0}
server_flags=()
[ "$DIRECT" = 1 ] && server_flags+=(--direct-routing)
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
  on $i "$G" --data-dir "$work/a$i" agent --manager 192.168.250.10 --token "$token" --hostname h$i 2>"$work/a$i.log" &
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

gbps() { sed -n 's/.*"bits_per_second":[[:space:]]*\([0-9.e+]*\).*/\1/p' | tail -1 | awk '{printf "%.2f", $1/1e9}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
run_iperf() { # where-server where-client addr streams
  local out=() i
  for i in $(seq "$RUNS"); do
    # shellcheck disable=SC2086 # $2 and $3 are words on purpose
    out+=("$($2 iperf3 -c $3 -t "$SECS" -P "$4" -J | gbps)")
  done
  printf '%s\n' "${out[@]}" | median
}
on 2 iperf3 -s -D -p 5201 >/dev/null
in_task "$c2" iperf3 -s -D -p 5202 >/dev/null
sleep 0.5
[ "$DIRECT" = 1 ] && echo "(direct routing: $(on 1 ip route show proto 103 | head -1))"
echo "| path | 1 stream (Gbit/s) | 4 streams (Gbit/s) |"
echo "|---|---|---|"
h1=$(run_iperf "" "on 1" "192.168.250.12 -p 5201" 1); h4=$(run_iperf "" "on 1" "192.168.250.12 -p 5201" 4)
echo "| host to host (underlay) | $h1 | $h4 |"
o1=$(run_iperf "" "in_task $c1" "$ip2 -p 5202" 1); o4=$(run_iperf "" "in_task $c1" "$ip2 -p 5202" 4)
echo "| task to task across hosts (overlay) | $o1 | $o4 |"
# The same overlay without the task veth hop: host to host by the nodes'
# gateway addresses, to split the cost between VXLAN and the task's veth.
gw2=$(on 2 ip -4 -br addr show gantry0 | awk '{print $3}' | cut -d/ -f1)
g1=$(run_iperf "" "on 1" "$gw2 -p 5201" 1); g4=$(run_iperf "" "on 1" "$gw2 -p 5201" 4)
echo "| host to host by gateway addresses (overlay, no task veth) | $g1 | $g4 |"
echo
awk -v a="$o1" -v b="$h1" -v c="$o4" -v d="$h4" -v e="$g4" 'BEGIN {printf "overlay / underlay: %.0f%% with 1 stream, %.0f%% with 4 streams (gateway to gateway: %.0f%%)\n", 100*a/b, 100*c/d, 100*e/d}'
hr=$(on 1 ping -c 50 -i 0.02 -q 192.168.250.12 | sed -n 's/.*= [0-9.]*\/\([0-9.]*\)\/.*/\1/p')
orr=$(in_task "$c1" ping -c 50 -i 0.02 -q "$ip2" | sed -n 's/.*= [0-9.]*\/\([0-9.]*\)\/.*/\1/p')
echo "round trip (ping, average of 50): host to host $hr ms, task to task $orr ms"
pkill -f "iperf3 -s -D -p 520" || true
