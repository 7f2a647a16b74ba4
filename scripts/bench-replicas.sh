#!/usr/bin/env bash
# Big deployments on the demo's three simulated hosts (real agents, real
# containers): for each N in NS, a stack of one service with N replicas
# (the demo image, `sleep 100000`) is deployed while wrk loads the demo's
# site through host 1's edge proxy. Prints, per N: seconds until all N
# run, nodes marked down meanwhile (events), task containers on the hosts
# once it settled (N plus the demo's 6), seconds until `stack rm` left only
# the demo's 6, and the site's requests and failures (non-2xx/3xx and
# socket errors) during the deploy and the removal.
#
#   sudo bash scripts/bench-replicas.sh          # NS="100 300 1000"
#
# With MODES="plain files", each N is deployed twice: plain, and with two
# secrets and a templated config per task (files on a tmpfs in each
# container); then the stack's value changes and is deployed again (plain:
# an environment variable; files: the secret's value), and the time until
# all N tasks run the new version is printed too (update_config:
# parallelism 50, monitor 1s).
#
# It brings the demo up (scripts/demo.sh) and takes it down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${NS:-"100 300 1000"}
MODES=${MODES:-plain}
TIMEOUT=${TIMEOUT:-600}
bash scripts/install-deps.sh
[ -n "${GANTRY_BIN:-}" ] || cargo build --release --locked -q -p gantry
G=${GANTRY_BIN:-$PWD/target/release/gantry}
export GANTRY_BIN=$G
ROOT=/var/lib/gantry-demo
export GANTRY_CONFIG_DIR=$ROOT/config
DOMAIN=www.jimmysfriedchicken.test
work=$(mktemp -d /tmp/gantry-replicas.XXXXXX)
wrk_pid=
cleanup() {
  [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null || true
  bash scripts/demo.sh down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
bash scripts/demo.sh >"$work/demo.log" 2>&1 || { tail -20 "$work/demo.log"; exit 1; }
REG=10.199.0.11:5000

containers() {
  local n=0
  for i in 1 2 3; do
    n=$((n + $("$G" --data-dir "$ROOT/h$i" ps -q 2>/dev/null | wc -l)))
  done
  echo "$n"
}
running() {
  "$G" service ls --format json 2>/dev/null |
    jq '[.[] | select(.name == "big_many") | .running] | add // 0' 2>/dev/null || echo 0
}
downs() {
  "$G" events --since 1h --no-follow --format json 2>/dev/null |
    jq -s '[.[] | select(.type == "node" and .action == "down")] | length' 2>/dev/null || echo "?"
}
# wrk sends the URL's name as SNI: the name resolves to host 1 in a mount
# namespace of wrk's own, leaving this machine's /etc/hosts alone.
printf '10.199.0.11 %s\n' "$DOMAIN" >"$work/hosts"
load_start() {
  unshare -m sh -c "mount --bind $work/hosts /etc/hosts && exec wrk -t1 -c4 -d${TIMEOUT}s --timeout 5s https://$DOMAIN/" \
    >"$work/wrk.out" 2>&1 &
  wrk_pid=$!
  sleep 1
}
load_stop() { # writes "requests failed" to $work/wrk.sum
  # wrk prints its summary when interrupted.
  pkill -INT -P "$wrk_pid" wrk 2>/dev/null || kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
  wrk_pid=
  awk '/requests in/ {r = $1}
       /Non-2xx or 3xx/ {f += $NF}
       /Socket errors/ {gsub(",", ""); f += $4 + $6 + $8 + $10}
       END {printf "%d %d\n", r, f}' "$work/wrk.out" >"$work/wrk.sum"
}
elapsed() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN {printf "%.1f", a - b}'; }

base=$(containers)
echo "# the demo runs $base task containers" >&2
rolled() { # the new version runs everywhere: update completed, N running
  "$G" service inspect big_many 2>/dev/null |
    jq -e --argjson n "$1" '.[0] | .version >= 2 and .update.state == "completed" and .running >= $n' >/dev/null 2>&1
}
echo "| replicas | mode | all running after (s) | new value rolled out after (s) | nodes marked down | task containers after (N + $base) | stack rm: only the demo's after (s) | site requests | site failures |"
echo "|---|---|---|---|---|---|---|---|---|"
for N in $NS; do
 for MODE in $MODES; do
  printf 'good %s\n' "$(head -c 16 /dev/urandom | base64)" >"$work/pw"
  files_use=""
  files_top=""
  if [ "$MODE" = files ]; then
    files_use='    secrets: [db_password, {source: api_key, target: /etc/api_key, uid: "1000", mode: 0400}]
    configs: [{source: app, target: /etc/app.conf}]'
    files_top="secrets:
  db_password: {file: $work/pw}
  api_key: {file: $work/pw}
configs:
  app:
    content: 'slot={{ .Task.Slot }} pw={{ secret \"db_password\" }}'
    template_driver: golang"
  fi
  write_stack() {
    cat >"$work/stack.yml" <<EOF
services:
  many:
    image: $REG/demo/jfc:1
    command: ["sleep", "100000"]
    stop_grace_period: 1s
    environment: {ROUND: "$1"}
$files_use
    deploy:
      replicas: $N
      update_config: {parallelism: 50, monitor: 1s}
$files_top
EOF
  }
  write_stack 1
  d0=$(downs)
  load_start
  t0=$(date +%s.%N)
  "$G" deploy -d -f "$work/stack.yml" big >/dev/null
  run_s=timeout
  for _ in $(seq $((TIMEOUT * 2))); do
    if [ "$(running)" -ge "$N" ]; then run_s=$(elapsed "$t0"); break; fi
    sleep 0.5
  done
  sleep 3
  # A new value: the secret's (files), the environment's (plain).
  if [ "$MODE" = files ]; then
    printf 'good %s\n' "$(head -c 16 /dev/urandom | base64)" >"$work/pw"
  else
    write_stack 2
  fi
  t2=$(date +%s.%N)
  "$G" deploy -d -f "$work/stack.yml" big >/dev/null
  roll_s=timeout
  for _ in $(seq $((TIMEOUT * 2))); do
    if rolled "$N"; then roll_s=$(elapsed "$t2"); break; fi
    sleep 0.5
  done
  sleep 3
  after=$(containers)
  t1=$(date +%s.%N)
  "$G" stack rm big >/dev/null
  rm_s=timeout
  for _ in $(seq $((TIMEOUT * 2))); do
    if [ "$(containers)" -le "$base" ]; then rm_s=$(elapsed "$t1"); break; fi
    sleep 0.5
  done
  load_stop
  read -r reqs failed <"$work/wrk.sum"
  d1=$(downs)
  echo "| $N | $MODE | $run_s | $roll_s | $((d1 - d0)) | $after | $rm_s | $reqs | $failed |"
  sleep 5
 done
done
