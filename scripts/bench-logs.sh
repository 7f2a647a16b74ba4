#!/usr/bin/env bash
# Log following benchmark (see BENCHMARKS.md): a one-host cluster
# (`gantry server --dev`), one task writing 100-byte lines as fast as its
# log writer takes them (or at RATE MB/s), and `gantry service logs -f`
# reading them through the agent and the manager. Prints the rate the
# follower got, the follower's
# lag at the end (what it got is what was written when the lag stays
# small), and the CPU the manager+agent process took for it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -q -p gantry
G="$PWD/target/release/gantry"
SECS=${SECS:-10}
work=$(mktemp -d /tmp/gantry-bench-logs.XXXXXX)
export GANTRY_DATA_DIR="$work/data" GANTRY_CONFIG_DIR="$work/cfg"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server=""
cleanup() {
  "$G" stack rm bench >/dev/null 2>&1 || true
  sleep 2
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  "$G" agent --cleanup >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/ctx"
cp /bin/busybox "$work/ctx/busybox"
cat > "$work/ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
DOCKERFILE
"$G" image build -t bench-logs:1 "$work/ctx" >/dev/null
"$G" server --dev --listen "127.0.0.1:$port" --no-proxy --metrics 127.0.0.1:0 --manager-metrics 127.0.0.1:0 > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do "$G" node ls >/dev/null 2>&1 && break; sleep 0.1; done
line=$(printf 'x%.0s' $(seq 99))
if [ -n "${RATE:-}" ]; then
  # RATE MB/s: 10 bursts a second of RATE/10 MB.
  n=$((RATE * 1000000 / 10 / 100))
  cmd="while :; do yes $line | head -n $n; usleep 100000; done"
else
  cmd="yes $line"
fi
cat > "$work/stack.yml" <<STACK
services:
  spam:
    image: bench-logs:1
    command: ["sh", "-c", "$cmd"]
    stop_grace_period: 1s
STACK
"$G" deploy -d -f "$work/stack.yml" bench >/dev/null
for _ in $(seq 100); do "$G" service ps bench_spam --format json | grep -q '"state": "running"' && break; sleep 0.2; done
sleep 2
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
s0=$(cpu "$server")
start=$(date +%s.%N)
"$G" service logs -f --tail 0 --format json bench_spam 2>/dev/null > >(python3 -c '
import sys, json, time, datetime
secs = float(sys.argv[1]); t0 = time.time(); got = 0; lag = 0.0; n = 0
for raw in sys.stdin.buffer:
    got += len(raw); n += 1
    if n % 5000 == 0:
        e = json.loads(raw)
        t = datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
        lag = time.time() - t
    if time.time() - t0 > secs:
        break
el = time.time() - t0
print(f"follower: {got/el/1e6:.1f} MB/s of JSON lines ({n/el:.0f} lines/s), lag at the end {lag*1000:.0f} ms")
' "$SECS" > "$work/follow.out") &
fpid=$!
sleep "$SECS"
sleep 0.5
s1=$(cpu "$server")
pkill -f "service logs -f --tail 0 --format json bench_spam" || true
wait "$fpid" 2>/dev/null || true
cat "$work/follow.out"
# The pipeline alone: the whole kept backlog (the rotated files, about
# 30 MB of JSON lines) read without following, while the writer runs on.
b0=$(cpu "$server")
t0=$(date +%s.%N)
lines=$("$G" service logs --format json bench_spam 2>/dev/null | wc -l)
t1=$(date +%s.%N)
b1=$(cpu "$server")
python3 -c "
el = $t1 - $t0
print(f'backlog: {$lines} lines ({$lines*100/1e6:.0f} MB of output) in {el:.2f} s: {$lines*100/el/1e6:.0f} MB/s, manager+agent CPU {($b1-$b0)/$hz/el*100:.0f} % of one core')
"
echo "manager+agent process CPU while following: $(python3 -c "print(f'{($s1-$s0)/$hz/$SECS*100:.0f} %')") of one core"
