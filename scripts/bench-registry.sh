#!/usr/bin/env bash
# Push and pull through the cluster's registry against Debian's
# docker-registry (Distribution), same machine, same run, same client
# (skopeo), both over TLS on loopback with a password:
#   push  an OCI layout with one SIZE_MB random layer (uncompressed, so
#         no side gains from compression) copied to a new repository;
#   pull  that image copied back out to a fresh directory.
# Gantry: `gantry server --dev` (one manager; its registry on its port,
# a registry user made with `gantry registry user add`). Distribution:
# docker-registry with a self-signed certificate and htpasswd.
# Prints each time, then per registry and case the median, the MB/s and
# Gantry's time over Distribution's.
#
#   sudo bash scripts/bench-registry.sh      # RUNS=5 SIZE_MB=200
#   (GANTRY_BIN=PATH: that binary instead of a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-200}
bash scripts/install-deps.sh
command -v htpasswd >/dev/null || apt-get install -y -qq apache2-utils >/dev/null
if [ -z "${GANTRY_BIN:-}" ]; then
  cargo build --release --locked -q -p gantry
fi
G="${GANTRY_BIN:-$PWD/target/release/gantry}"
work=$(mktemp -d /tmp/gantry-bench-registry.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$G" --data-dir "$work/data" agent --cleanup >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export GANTRY_DATA_DIR="$work/data" GANTRY_CONFIG_DIR="$work/cfg"

# --- the images: OCI layouts with one random layer each (one per round:
# a registry that has a blob skips its upload)
make_image() { # DIR
python3 - "$1" "$SIZE_MB" <<'PY'
import hashlib, io, json, os, sys, tarfile
out, mb = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, d), "wb").write(b)
    return "sha256:" + d, len(b)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    data = os.urandom(mb << 20)
    info = tarfile.TarInfo("data.bin"); info.size = len(data)
    t.addfile(info, io.BytesIO(data))
layer = buf.getvalue()
ld, ls = put(layer)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
cd, cs = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
md, ms = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": ms}]}, open(os.path.join(out, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
PY
}

# --- Gantry: one dev manager, a registry user
gport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$G" server --dev --no-proxy --listen "127.0.0.1:$gport" --metrics 127.0.0.1:0 \
  --manager-metrics 127.0.0.1:0 --cluster-cidr 10.250.0.0/16 >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$G" node ls >/dev/null 2>&1 && break; sleep 0.2; done
gpass=$("$G" registry user add -q bench)
mkdir -p "$work/gcerts"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca_pem"])' "$work/cfg/admin.json" >"$work/gcerts/ca.crt"

# --- Distribution: TLS and htpasswd
dport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/dcerts"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$work/dcerts/key.pem" -out "$work/dcerts/ca.crt" 2>/dev/null
htpasswd -Bbn bench secret >"$work/htpasswd"
cat >"$work/registry.yml" <<EOC
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/distribution}, delete: {enabled: true}}
http:
  addr: 127.0.0.1:$dport
  tls: {certificate: $work/dcerts/ca.crt, key: $work/dcerts/key.pem}
auth: {htpasswd: {realm: bench, path: $work/htpasswd}}
EOC
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sk "https://127.0.0.1:$dport/v2/" -o /dev/null && break; sleep 0.1; done
mkdir -p "$work/dcerts-only" && cp "$work/dcerts/ca.crt" "$work/dcerts-only/ca.crt"

now() { date +%s.%N; }
declare -A times
run() { # NAME CASE CMD...
  local name=$1 case=$2; shift 2
  local t0 t1
  sync
  t0=$(now); "$@" >/dev/null; t1=$(now)
  local s; s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
  printf '%-12s %-5s %6.2f s\n' "$name" "$case" "$s"
  times[$name/$case]+="$s "
}
for r in $(seq 1 "$RUNS"); do
  rm -rf "$work/img" && make_image "$work/img"
  for reg in gantry distribution; do
    if [ $reg = gantry ]; then addr="127.0.0.1:$gport" certs="$work/gcerts" creds="bench:$gpass"
    else addr="127.0.0.1:$dport" certs="$work/dcerts-only" creds="bench:secret"; fi
    run $reg push skopeo copy -q --dest-cert-dir "$certs" --dest-creds "$creds" \
      "oci:$work/img" "docker://$addr/bench/r$r:1"
    run $reg pull skopeo copy -q --src-cert-dir "$certs" --src-creds "$creds" \
      "docker://$addr/bench/r$r:1" "dir:$work/out-$reg-$r"
    rm -rf "$work/out-$reg-$r"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "medians over $RUNS runs, $SIZE_MB MB layer:"
for case in push pull; do
  g=$(echo "${times[gantry/$case]}" | median)
  d=$(echo "${times[distribution/$case]}" | median)
  awk -v c="$case" -v g="$g" -v d="$d" -v mb="$SIZE_MB" 'BEGIN {
    printf "%-5s gantry %6.2f s (%5.0f MB/s)  distribution %6.2f s (%5.0f MB/s)  ratio %.2fx\n", c, g, mb / g, d, mb / d, g / d }'
done
