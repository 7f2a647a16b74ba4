#!/usr/bin/env bash
# Replicated volumes: RPO and RTO over host kills. Each round is the test
# `a_replicated_volume_comes_back_on_its_standby_when_its_host_dies`: three
# simulated hosts (network namespaces, real agents and a manager), a writer
# appending a numbered record every 50 ms to a volume with
# `x-gantry: {replicas: 2}`, its host killed with its containers; the
# round measures the records lost (RPO: lost x 50 ms) and the time until
# the writer runs again on the standby (RTO).
#
#   sudo ROUNDS=10 bash scripts/bench-volume-failover.sh
#
# Each round kills the host at a moment 0 to 3 s after a copy was seen
# complete (copies start every 3 s), so the losses cover the interval.
#
# Prints each round's line and then the medians and the worst.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-10}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "$ROUNDS"); do
  cargo nextest run --cargo-quiet -p gantry --test volumes a_replicated_volume --no-capture 2>&1 \
    | grep '^REPLICA:' | tee -a "$out"
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
worst() { sort -n | tail -1; }
rpo=$(awk '{ print $10 }' "$out")
rto=$(awk '{ print $15 }' "$out")
echo "rounds=$(wc -l <"$out") rpo_median_s=$(median <<<"$rpo") rpo_worst_s=$(worst <<<"$rpo") rto_median_s=$(median <<<"$rto") rto_worst_s=$(worst <<<"$rto")"
