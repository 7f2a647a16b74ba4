#!/usr/bin/env bash
# Deploying a big image to several nodes against one pull: a manager on a
# simulated host, agents on three more (network namespaces on a bridge),
# an image with one SIZE_MB random layer in the cluster's registry.
#   one    a service of 1 replica on host 1: time from deploy to running
#          (the node pulls the image, then starts it);
#   three  a global service on the three hosts: the same, until all
#          three run.
# Between cases the service goes and every node forgets the image. The
# bench's goal: three at most 1.5x one. Prints each time, the bytes the
# manager's host sent, the medians and the ratio.
#
# LINK_MBIT gives every host's link that rate each way (tc tbf), as on a
# LAN; 0 leaves them as veth pairs are, where all four hosts share this
# machine's cores and the CPU, not the links, is what runs out.
#
#   sudo bash scripts/bench-distribute.sh     # RUNS=5 SIZE_MB=200 LINK_MBIT=1000
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-200}
LINK_MBIT=${LINK_MBIT:-1000}
bash scripts/install-deps.sh
if [ -z "${GANTRY_BIN:-}" ]; then
  cargo build --release --locked -q -p gantry
fi
G="${GANTRY_BIN:-$PWD/target/release/gantry}"
tag="gd$$"
work=$(mktemp -d /tmp/gantry-bench-distribute.XXXXXX)
cleanup() {
  pkill -f -- "$work" 2>/dev/null || true
  sleep 0.3
  for i in 1 2 3; do
    nsenter --net=/run/netns/$tag-h$i "$G" --data-dir "$work/a$i" agent --cleanup >/dev/null 2>&1 || true
  done
  for n in $tag-h0 $tag-h1 $tag-h2 $tag-h3 $tag-lan; do ip netns del $n 2>/dev/null || true; done
  [ -n "${KEEP_LOGS:-}" ] && cp "$work"/*.log /tmp/ 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add $tag-lan
ip -n $tag-lan link add br0 type bridge
ip -n $tag-lan link set br0 up
for i in 0 1 2 3; do
  ip netns add $tag-h$i
  ip -n $tag-lan link add h$i type veth peer name eth0 netns $tag-h$i
  ip -n $tag-lan link set h$i master br0 up
  ip -n $tag-h$i addr add 192.168.251.$((10 + i))/24 dev eth0
  ip -n $tag-h$i link set eth0 up
  ip -n $tag-h$i link set lo up
  if [ "$LINK_MBIT" != 0 ]; then
    ip netns exec $tag-h$i tc qdisc add dev eth0 root tbf rate "${LINK_MBIT}mbit" burst 1mb latency 50ms
    ip netns exec $tag-lan tc qdisc add dev h$i root tbf rate "${LINK_MBIT}mbit" burst 1mb latency 50ms
  fi
done
on() { local h=$1; shift; nsenter --net=/run/netns/$tag-h$h "$@"; }

export GANTRY_CONFIG_DIR="$work/cfg"
on 0 "$G" --data-dir "$work/m" server --listen 0.0.0.0:4243 --advertise 192.168.251.10 \
  --manager-metrics 127.0.0.1:0 2>"$work/m.log" &
for _ in $(seq 100); do on 0 "$G" node ls >/dev/null 2>&1 && break; sleep 0.1; done
token=$(on 0 "$G" join-token -q)
for i in 1 2 3; do
  on $i "$G" --data-dir "$work/a$i" agent --manager 192.168.251.10 --token "$token" --hostname h$i \
    2>"$work/a$i.log" &
done
for _ in $(seq 100); do [ "$(on 0 "$G" node ls --format json | grep -c '"up": true')" = 3 ] && break; sleep 0.1; done

# The image: busybox and a random layer, built on the manager's host and
# pushed to the cluster's registry.
image=192.168.251.10:4243/bench/big:1
ctx="$work/ctx"
mkdir -p "$ctx"
cp /bin/busybox "$ctx/busybox"
head -c "$((SIZE_MB << 20))" /dev/urandom >"$ctx/big.bin"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY big.bin /big.bin\nCMD ["/bin/busybox", "sleep", "1000000"]\n' >"$ctx/Dockerfile"
on 0 "$G" --data-dir "$work/cli" build -q -t "$image" "$ctx" >/dev/null
on 0 "$G" --data-dir "$work/cli" push -q "$image" >/dev/null

running() { on 0 "$G" service ls --format json | python3 -c '
import json, sys
print(sum(s.get("running", 0) for s in json.load(sys.stdin) if s["name"] == sys.argv[1]))' "$1"; }
now() { date +%s.%N; }
declare -A times
# Bytes the manager's host has sent.
sent() { ip -n $tag-h0 -s -j link show eth0 | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["bytes"])'; }
round() { # CASE WANT STACKFILE
  local case=$1 want=$2 file=$3 t0 t1 b0 b1
  b0=$(sent)
  t0=$(now)
  on 0 "$G" deploy -d -f "$file" bench >/dev/null
  until [ "$(running bench_app)" = "$want" ]; do sleep 0.05; done
  t1=$(now)
  b1=$(sent)
  local s; s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
  printf '%-6s %6.2f s  the manager sent %4d MB\n' "$case" "$s" "$(( (b1 - b0) >> 20 ))"
  times[$case]+="$s "
  on 0 "$G" stack rm bench >/dev/null
  for i in 1 2 3; do
    until [ -z "$("$G" --data-dir "$work/a$i" ps -aq)" ]; do sleep 0.1; done
    "$G" --data-dir "$work/a$i" rmi "$image" >/dev/null 2>&1 || true
  done
}
cat >"$work/one.yml" <<EOS
services:
  app:
    image: $image
    stop_grace_period: 1s
    deploy:
      placement: {constraints: [node.hostname == h1]}
EOS
cat >"$work/three.yml" <<EOS
services:
  app:
    image: $image
    stop_grace_period: 1s
    deploy: {mode: global}
EOS
for _ in $(seq 1 "$RUNS"); do
  round one 1 "$work/one.yml"
  round three 3 "$work/three.yml"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
o=$(echo "${times[one]}" | median)
t=$(echo "${times[three]}" | median)
echo
awk -v o="$o" -v t="$t" -v mb="$SIZE_MB" -v n="$RUNS" 'BEGIN {
  printf "medians over %d runs, %d MB layer: one node %.2f s, three nodes %.2f s, ratio %.2fx\n", n, mb, o, t, t / o }'
echo "links: $([ "$LINK_MBIT" = 0 ] && echo "veth, unshaped" || echo "$LINK_MBIT Mbit/s each way")"
