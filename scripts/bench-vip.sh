#!/usr/bin/env bash
# Virtual IPs (see BENCHMARKS.md): connections per second straight to a
# task, through a Gantry virtual IP, and through an nftables DNAT virtual
# IP (the peer), in a network namespace of the bench's own; then what
# setting 100 to 10,000 virtual IPs costs. Prints Markdown. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
ns="vipbench$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
cargo build --release --locked -q -p gantry-net --bench vip
bin=$(ls -t target/release/deps/vip-* | grep -v '\.d$' | head -1)
# nsenter, not `ip netns exec`, which mounts a sysfs of its own and hides
# the cgroup2 mount the programs attach to.
nsenter --net="/run/netns/$ns" "$bin"
