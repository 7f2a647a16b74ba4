#!/usr/bin/env bash
# The whole platform on one machine (the README's main command):
#
#   bash scripts/demo.sh          # install, build, bring the demo up
#   bash scripts/demo.sh down     # remove all of it
#
# Three simulated hosts (network namespaces on a LAN bridge that this
# machine reaches at 10.199.0.1), a manager and three agents, a registry
# on host 1, a demo image built with `gantry image build` and pushed there,
# and a stack: `web` (3 replicas) routed at https://www.jimmysfriedchicken.test
# by every host's edge proxy with a certificate from the cluster's edge CA,
# `api` on the path /api, and `orders`, a counter kept on a named volume.
#
# GANTRY_BIN=PATH skips installing and building (`gantry demo` runs this
# script so, with itself).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=/var/lib/gantry-demo
RUN=/run/gantry-demo
NET=10.199.0
HOSTS=3
DOMAIN=www.jimmysfriedchicken.test
export GANTRY_CONFIG_DIR="$ROOT/config"
# The demo talks to its own manager, whatever cluster the caller's
# environment points at.
unset GANTRY_HOST

down() {
  G=${GANTRY_BIN:-$PWD/target/release/gantry}
  # Agents first (each stops and removes its task containers and overlay
  # devices), then the manager and the registry.
  for f in "$RUN"/agent*.pid "$RUN"/manager.pid "$RUN"/registry.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  for i in $(seq "$HOSTS"); do
    if [ -e "/run/netns/gdemo-h$i" ] && [ -d "$ROOT/h$i" ] && [ -x "$G" ]; then
      nsenter --net="/run/netns/gdemo-h$i" "$G" --data-dir "$ROOT/h$i" agent --cleanup >/dev/null 2>&1 || true
    fi
  done
  # Anything still running from the demo's data dirs (monitors, tasks).
  pkill -9 -f "$ROOT/" 2>/dev/null || true
  for i in $(seq "$HOSTS"); do ip netns del "gdemo-h$i" 2>/dev/null || true; done
  ip netns del gdemo-lan 2>/dev/null || true
  ip link del gdemo0 2>/dev/null || true
  if [ -d "$ROOT" ]; then
    # Volumes and layers are plain directories; no mount is left once the
    # containers are gone, but make sure before removing.
    grep -F " $ROOT/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
    rm -rf "$ROOT"
  fi
  rm -rf "$RUN"
}

if [ "${1:-up}" = down ]; then
  down
  echo "The demo is gone."
  exit 0
fi

if [ -z "${GANTRY_BIN:-}" ]; then
  bash scripts/install-deps.sh
  cargo build --release --locked
fi
G=${GANTRY_BIN:-$PWD/target/release/gantry}
down
mkdir -p "$ROOT" "$RUN" "$GANTRY_CONFIG_DIR"

echo "== 3 simulated hosts on a LAN (network namespaces), reached from here at $NET.1"
ip netns add gdemo-lan
ip -n gdemo-lan link set lo up
ip -n gdemo-lan link add br0 type bridge
ip -n gdemo-lan link set br0 up
ip link add gdemo0 type veth peer name up0 netns gdemo-lan
ip -n gdemo-lan link set up0 master br0 up
ip addr add "$NET.1/24" dev gdemo0
ip link set gdemo0 up
for i in $(seq "$HOSTS"); do
  ip netns add "gdemo-h$i"
  ip -n gdemo-lan link add "h$i" type veth peer name eth0 netns "gdemo-h$i"
  ip -n gdemo-lan link set "h$i" master br0 up
  ip -n "gdemo-h$i" addr add "$NET.1$i/24" dev eth0
  ip -n "gdemo-h$i" link set eth0 up
  ip -n "gdemo-h$i" link set lo up
  ip -n "gdemo-h$i" route add default via "$NET.1"
done
on() { local h=$1; shift; nsenter --net="/run/netns/gdemo-h$h" "$@"; }
start() { # NAME HOST COMMAND...: in the background, logged, pid recorded
  local name=$1 h=$2; shift 2
  # Not through `on`: a function in the background is a subshell, and $!
  # would be its pid. nsenter and setsid exec, so $! is the program's.
  nsenter --net="/run/netns/gdemo-h$h" setsid "$@" > "$ROOT/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

echo "== a registry on host 1 ($NET.11:5000)"
mkdir -p "$ROOT/registry"
cat > "$ROOT/registry.yml" <<CFG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $ROOT/registry
http:
  addr: $NET.11:5000
CFG
start registry 1 docker-registry serve "$ROOT/registry.yml"
REG="$NET.11:5000"

echo "== the manager on host 1 ($NET.11:4243)"
start manager 1 "$G" --data-dir "$ROOT/manager" server --listen "$NET.11:4243" --advertise "$NET.11" --no-acme
for _ in $(seq 100); do "$G" node ls >/dev/null 2>&1 && break; sleep 0.1; done
(umask 077; "$G" join-token -q > "$ROOT/join-token")
for i in $(seq "$HOSTS"); do
  echo "== an agent on host $i (h$i, $NET.1$i)"
  start "agent$i" "$i" "$G" --data-dir "$ROOT/h$i" --insecure-registry "$REG" agent \
    --manager "$NET.11:4243" --token-file "$ROOT/join-token" --hostname "h$i"
done
for _ in $(seq 100); do
  [ "$("$G" node ls --format json | grep -c '"up": true')" = "$HOSTS" ] && break
  sleep 0.2
done
"$G" node ls

echo "== gantry image build and push $REG/demo/jfc:1"
ctx="$ROOT/build"
mkdir -p "$ctx"
cp /bin/busybox "$ctx/busybox"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
WORKDIR /www
COPY serve.sh /serve.sh
EXPOSE 80
CMD ["sh", "/serve.sh"]
DOCKERFILE
cat > "$ctx/serve.sh" <<'SERVE'
# The page says which task and host answered; /cgi-bin/count keeps a
# counter in /data (a named volume for the orders service).
mkdir -p /www/api /www/cgi-bin
cat > /www/index.html <<HTML
<h1>Jimmy's Fried Chicken</h1>
<p>Served by task $GANTRY_SERVICE_NAME.$GANTRY_TASK_SLOT ($HOSTNAME) on host $GANTRY_NODE_HOSTNAME</p>
HTML
echo "{\"menu\": [\"wings\", \"drumsticks\", \"fries\"], \"task\": \"$GANTRY_SERVICE_NAME.$GANTRY_TASK_SLOT\", \"host\": \"$GANTRY_NODE_HOSTNAME\"}" > /www/api/index.html
cat > /www/cgi-bin/count <<'CGI'
#!/bin/sh
n=$(cat /data/count 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > /data/count
printf 'Content-Type: text/plain\r\n\r\norders so far: %s (host %s)\n' "$n" "$GANTRY_NODE_HOSTNAME"
CGI
chmod +x /www/cgi-bin/count
echo "serving on :80"
exec httpd -f -v -p 80 -h /www
SERVE
"$G" image build -t "$REG/demo/jfc:1" "$ctx"
"$G" --insecure-registry "$REG" push "$REG/demo/jfc:1"

echo "== gantry deploy -f stack.yml jfc"
cat > "$ROOT/stack.yml" <<STACK
services:
  web:
    image: $REG/demo/jfc:1
    healthcheck:
      test: ["HTTP", "80", "/"]
      interval: 2s
    deploy:
      replicas: 3
      labels:
        gantry.http.host: $DOMAIN
        gantry.http.port: "80"
  api:
    image: $REG/demo/jfc:1
    deploy:
      replicas: 2
      labels:
        gantry.http.host: $DOMAIN
        gantry.http.path: /api
        gantry.http.port: "80"
  orders:
    image: $REG/demo/jfc:1
    volumes:
      - orders:/data
    deploy:
      labels:
        gantry.http.host: $DOMAIN
        gantry.http.path: /cgi-bin/count
        gantry.http.path_type: exact
        gantry.http.port: "80"
volumes:
  orders:
STACK
"$G" deploy -f "$ROOT/stack.yml" jfc
"$G" cert ca > "$ROOT/edge-ca.pem"
url="https://$DOMAIN/"
resolve="--resolve $DOMAIN:443:$NET.11"
for _ in $(seq 150); do
  # shellcheck disable=SC2086
  curl -sf -o /dev/null --cacert "$ROOT/edge-ca.pem" $resolve "$url" && break
  sleep 0.2
done
echo "== curl $url (through host 1's edge proxy, three times)"
for _ in 1 2 3; do
  # shellcheck disable=SC2086
  curl -sS --cacert "$ROOT/edge-ca.pem" $resolve "$url" | sed -n 2p
done
"$G" service ls
cat <<MSG

The platform is up: 3 hosts (h1-h3 at $NET.11-13), a manager on h1, an edge
proxy on every host. Try:

  export GANTRY_CONFIG_DIR=$GANTRY_CONFIG_DIR; unset GANTRY_HOST
  curl --cacert $ROOT/edge-ca.pem --resolve $DOMAIN:443:$NET.12 https://$DOMAIN/
  curl --cacert $ROOT/edge-ca.pem --resolve $DOMAIN:443:$NET.13 https://$DOMAIN/api/
  curl --cacert $ROOT/edge-ca.pem --resolve $DOMAIN:443:$NET.11 https://$DOMAIN/cgi-bin/count
  curl -i --resolve $DOMAIN:80:$NET.11 http://$DOMAIN/          (redirects to HTTPS)
  $G node ls
  $G service ps jfc_web
  $G logs -f web                       (every replica, every host; Ctrl-C)
  $G stats
  $G events
  kill \$(cat $RUN/agent3.pid)   (host h3 dies: its replicas move within seconds)
  $G service ps jfc_web
  ${GANTRY_DEMO_DOWN:-bash scripts/demo.sh down}            (removes all of it)
MSG
