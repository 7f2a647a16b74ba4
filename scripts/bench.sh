#!/usr/bin/env bash
# Benchmarks, side by side in one run (see BENCHMARKS.md):
#  1. container start: `gantry run --rm IMG true` (no network, and bridge +
#     veth) against `runc run` and `youki run` (libcontainer 0.7, the
#     runtime library the stack suggested, built from crates.io into
#     target/bench-peers on first use) on the same rootfs, and `docker run --rm
#     --network none` on a dockerd of the benchmark's own (the same image,
#     pulled from a loopback registry);
#  2. pull throughput of a 100 MB image from a loopback registry, against
#     skopeo copying the same image to a local directory.
# Prints medians and ratios as Markdown. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -q
G="$PWD/target/release/gantry"
YOUKI="$PWD/target/bench-peers/bin/youki"
if [ ! -x "$YOUKI" ]; then
  echo "building youki 0.7.0 (libcontainer) as a benchmark peer, once..." >&2
  cargo install -q youki --version 0.7.0 --no-default-features --features v1,v2,seccomp \
    --root "$PWD/target/bench-peers" >&2 || true
fi
RUNS=${RUNS:-40}
work=$(mktemp -d /tmp/gantry-bench.XXXXXX)
reg_pid=""
dockerd_pid=""
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null || true
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  GANTRY_DATA_DIR="$work/data" "$G" rm -f $(GANTRY_DATA_DIR="$work/data" "$G" ps -aq 2>/dev/null) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export GANTRY_DATA_DIR="$work/data"

# A loopback registry: the pull benchmark's source, and how dockerd gets
# the benchmark image.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/reg.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/reg}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/reg.yml" >/dev/null 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

# --- 1. start latency -------------------------------------------------------
mkdir -p "$work/ctx"
cp /bin/busybox "$work/ctx/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' > "$work/ctx/Dockerfile"
"$G" build -q -t bench "$work/ctx" >/dev/null
# The same rootfs for runc: busybox and its links, as the image has.
bundle="$work/bundle"
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
chroot "$bundle/rootfs" /bin/busybox --install -s /bin
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
c["root"]["readonly"] = False
c["linux"]["cgroupsPath"] = "/gantry-bench-runc"
json.dump(c, open(p, "w"))
PY
cmds=(
  -n "gantry run --rm --network none" "$G run --rm --network none bench true"
  -n "gantry run --rm (bridge + veth)" "$G run --rm bench true"
  -n "runc run (netns, no veth)" "runc run --bundle $bundle gantry-bench"
)
if [ -x "$YOUKI" ]; then
  # Its own copy of the bundle: a cgroup path of its own.
  cp -a "$bundle" "$work/ybundle"
  sed -i 's|/gantry-bench-runc|/gantry-bench-youki|' "$work/ybundle/config.json"
  cmds+=(-n "youki run (libcontainer 0.7)" "$YOUKI run --bundle $work/ybundle gantry-bench-y")
fi
if command -v dockerd >/dev/null; then
  "$G" tag bench "127.0.0.1:$port/bench:1" && "$G" push -q "127.0.0.1:$port/bench:1" >/dev/null
  dockerd --data-root "$work/docker" --exec-root "$work/docker-exec" -H "unix://$work/docker.sock" \
    --pidfile "$work/docker.pid" --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  D="docker -H unix://$work/docker.sock"
  for _ in $(seq 150); do $D version >/dev/null 2>&1 && break; sleep 0.2; done
  $D pull -q "127.0.0.1:$port/bench:1" >/dev/null
  cmds+=(-n "docker run --rm --network none" "$D run --rm --network none 127.0.0.1:$port/bench:1 true")
fi
hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$work/start.json" "${cmds[@]}" >/dev/null
python3 - "$work/start.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
med = {x["command"]: x["median"] * 1000 for x in r}
runc = next(v for k, v in med.items() if k.startswith("runc"))
print("| start (median of %d) | ms | vs runc |" % len(r[0]["times"]))
print("|---|---|---|")
for k, v in med.items():
    print(f"| {k} | {v:.1f} | {v / runc:.2f}x |")
PY

# --- 2. pull throughput -----------------------------------------------------
printf 'FROM bench\nRUN head -c 100m /dev/urandom > /big\n' > "$work/ctx/Dockerfile"
big="127.0.0.1:$port/big:1"
"$G" build -q -t "$big" "$work/ctx" >/dev/null
"$G" push -q "$big" >/dev/null
size=$("$G" image inspect "$big" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Size"])')
hyperfine -N --warmup 1 --runs 5 --export-json "$work/pull.json" \
  --prepare "rm -rf $work/pulldata $work/skopeo" \
  -n "gantry pull" "env GANTRY_DATA_DIR=$work/pulldata $G pull -q $big" \
  -n "skopeo copy to dir" "skopeo copy -q --src-tls-verify=false docker://$big dir:$work/skopeo" >/dev/null
python3 - "$work/pull.json" "$size" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]; size = int(sys.argv[2])
med = {x["command"]: x["median"] for x in r}
sk = med["skopeo copy to dir"]
print()
print("| pull %.0f MB from loopback registry (median of %d) | s | MB/s | vs skopeo |" % (size / 1e6, len(r[0]["times"])))
print("|---|---|---|---|")
for k, v in med.items():
    print(f"| {k} | {v:.2f} | {size / 1e6 / v:.0f} | {v / sk:.2f}x |")
PY
