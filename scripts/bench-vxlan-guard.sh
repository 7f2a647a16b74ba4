#!/usr/bin/env bash
# What the firewall's VXLAN source check costs a packet on the nftables path
# (agents without the BPF fast path, and packets the fast path leaves to the
# stack), by the cluster's size. Two network namespaces of this script's
# own; VXLAN frames (small, an IPv4 packet of the sender's block inside)
# sent from one as fast as one thread can, counted by a socket on port 4789
# in the other (sender on CPU 0, receiver on CPU 1). For each peer count:
#   - Gantry's rules (crates/gantry-net/src/firewall.rs, applied by the
#     vxlan_guard example): one lookup of (outer source, inner block) in a
#     set of the peers;
#   - the design not taken: one rule per peer (what nftables does without
#     a concatenated key), the sender's last, written with nft.
# Prints Markdown: received packets a second, median of RUNS, and the
# ratio to no table at all.
#
#   sudo bash scripts/bench-vxlan-guard.sh        # PEERS="10 100 1000 4000" RUNS=5 SECS=3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -q -p gantry-net --example vxlan_guard
V="$PWD/target/release/examples/vxlan_guard"
PEERS=${PEERS:-"10 100 1000 4000"}
RUNS=${RUNS:-5}
SECS=${SECS:-3}
tag=gvg$$
snd=$tag-snd
rcv=$tag-rcv
work=$(mktemp -d /tmp/gantry-vxlan-guard.XXXXXX)
cleanup() {
  ip netns del "$snd" 2>/dev/null || true
  ip netns del "$rcv" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$snd"
ip netns add "$rcv"
ip -n "$snd" link add eth0 type veth peer name eth0 netns "$rcv"
ip -n "$snd" addr add 10.77.0.1/24 dev eth0
ip -n "$rcv" addr add 10.77.0.2/24 dev eth0
for n in "$snd" "$rcv"; do
  ip -n "$n" link set lo up
  ip -n "$n" link set eth0 up
done
in_rcv() { nsenter --net="/run/netns/$rcv" "$@"; }

run() { # -> received packets a second
  in_rcv taskset -c 1 "$V" recv "$SECS" > "$work/got" &
  local r=$!
  sleep 0.3
  nsenter --net="/run/netns/$snd" taskset -c 0 "$V" send 10.77.0.2 $((SECS + 1))
  wait "$r"
  cat "$work/got"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { for _ in $(seq "$RUNS"); do run; done | median; }

per_peer_rules() { # n
  {
    echo "table inet bench {"
    echo "chain input {"
    echo "type filter hook input priority 0; policy accept;"
    for i in $(seq 1 $(($1 - 1))); do
      a=$(( (i >> 8) & 255 )); b=$(( i & 255 ))
      echo "meta nfproto ipv4 ip saddr 10.78.$a.$b udp dport 4789 @th,224,16 0x0800 @th,336,32 & 0xffffff00 == $(printf '0x0a%02x%02x00' "$a" "$b") accept"
    done
    echo "meta nfproto ipv4 ip saddr 10.77.0.1 udp dport 4789 @th,224,16 0x0800 @th,336,32 & 0xffffff00 == 0x0a200000 accept"
    echo "meta nfproto ipv4 udp dport 4789 drop"
    echo "}"
    echo "}"
  } > "$work/rules.nft"
  in_rcv nft -f "$work/rules.nft"
}

base=$(measure)
echo "| peers | Gantry's rules: one set lookup | vs no table | one rule per peer (not taken) | vs no table |"
echo "|---|---|---|---|---|"
echo "| (no table) | $base | 1.00 | $base | 1.00 |"
ratio() { awk -v a="$1" -v b="$base" 'BEGIN {printf "%.2f", a/b}'; }
for n in $PEERS; do
  in_rcv "$V" apply "$n" 10.77.0.1
  set_pps=$(measure)
  in_rcv "$V" remove
  per_peer_rules "$n"
  rule_pps=$(measure)
  in_rcv nft delete table inet bench
  echo "| $n | $set_pps | $(ratio "$set_pps") | $rule_pps | $(ratio "$rule_pps") |"
done
