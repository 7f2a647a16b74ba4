#!/usr/bin/env bash
# Dockerfile builds: Gantry's builder against Docker Engine's BuildKit
# (Debian's docker.io, DOCKER_BUILDKIT=1, a dockerd of the benchmark's
# own), on the same multi-stage context, in one run:
#   cold     every cache emptied first (gantry builder prune, docker
#            builder prune -af), the images removed;
#   rebuild  one source file changed since the last build.
# The context: a busybox base stage, a "compile" stage that reads 50
# source files and works the CPU for a second or two, a small runtime
# stage copying the result; no network (FROM scratch).
# Prints each time, then per builder and case the median, and the ratio.
#
#   sudo bash scripts/bench-build.sh              # RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
bash scripts/install-deps.sh
cargo build --release --locked -q -p gantry
G="$PWD/target/release/gantry"
DOCKER=/usr/bin/docker # Debian's CLI: BuildKit in the daemon, no buildx needed
work=$(mktemp -d /tmp/gantry-bench-build.XXXXXX)
dockerd_pid=""
cleanup() {
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
export GANTRY_DATA_DIR="$work/data"

ctx="$work/ctx"
mkdir -p "$ctx/src"
cp "$(command -v busybox)" "$ctx/busybox"
for i in $(seq 1 50); do
  head -c 20000 /dev/urandom | base64 >"$ctx/src/file$i.txt"
done
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM base AS compile
COPY src/ /src/
RUN mkdir -p /out && for i in $(seq 1 20); do cat /src/*.txt | sha256sum; done > /out/app \
 && i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done

FROM scratch
COPY --from=base /bin/busybox /bin/busybox
COPY --from=compile /out/app /app
CMD ["/bin/busybox", "cat", "/app"]
EOF

dockerd --data-root "$work/docker" --exec-root "$work/docker-exec" -H "unix://$work/docker.sock" \
  --pidfile "$work/docker.pid" --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
  >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
D() { DOCKER_BUILDKIT=1 "$DOCKER" -H "unix://$work/docker.sock" "$@"; }
for _ in $(seq 100); do D info >/dev/null 2>&1 && break; sleep 0.2; done
D info >/dev/null

now() { date +%s.%N; }
timed() { # LABEL CMD...: runs it, prints the seconds
  local t0 t1
  t0=$(now)
  "${@:2}" >"$work/out.log" 2>&1 || { cat "$work/out.log" >&2; exit 1; }
  t1=$(now)
  awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.2f", a - b}'
}
gantry_build() { "$G" image build -q -t bench-ms "$ctx"; }
docker_build() { D build -q --network host -t bench-ms "$ctx"; } # RUN as Gantry runs it
change() { head -c 200 /dev/urandom | base64 >>"$ctx/src/file7.txt"; }

for r in $(seq 1 "$RUNS"); do
  "$G" builder prune >/dev/null
  "$G" image rm bench-ms >/dev/null 2>&1 || true
  D builder prune -af >/dev/null
  D rmi -f bench-ms >/dev/null 2>&1 || true
  g_cold=$(timed gantry gantry_build)
  d_cold=$(timed docker docker_build)
  change
  g_re=$(timed gantry gantry_build)
  d_re=$(timed docker docker_build)
  echo "run $r: cold gantry $g_cold s, docker $d_cold s; rebuild gantry $g_re s, docker $d_re s"
  echo "$g_cold" >>"$work/g_cold"
  echo "$d_cold" >>"$work/d_cold"
  echo "$g_re" >>"$work/g_re"
  echo "$d_re" >>"$work/d_re"
done
# Both built the same thing.
[ "$("$G" run --rm bench-ms | head -c 64)" = "$(D run --rm --network none bench-ms | head -c 64)" ] ||
  { echo "the two images differ" >&2; exit 1; }
median() { sort -n "$1" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo
echo "| case | gantry median (s) | docker BuildKit median (s) | ratio |"
echo "|---|---|---|---|"
for c in cold re; do
  g=$(median "$work/g_$c")
  d=$(median "$work/d_$c")
  name=$([ "$c" = cold ] && echo "cold build" || echo "rebuild, one source file changed")
  awk -v n="$name" -v g="$g" -v d="$d" 'BEGIN {printf "| %s | %.2f | %.2f | %.2fx |\n", n, g, d, g / d}'
done
