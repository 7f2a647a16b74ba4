#!/usr/bin/env bash
# Edge proxy benchmark (see BENCHMARKS.md): the same backend (nginx, one
# worker, answering 200 "ok" from memory) reached directly and through
# Gantry's proxy, nginx and HAProxy, each with one worker thread and
# keep-alive to the backend; wrk with one thread. Prints Markdown. Then
# TLS handshakes a second (a new connection per request) and the time
# from a route change to the first request it routes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# nginx and HAProxy as peers, never started as services.
need=()
for p in nginx-light haproxy wrk; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --locked -q -p gantry-proxy --example standalone --example bare_hyper
P="$PWD/target/release/examples/standalone"
BARE="$PWD/target/release/examples/bare_hyper"
SECS=${SECS:-10}
CONNS=${CONNS:-32}
RUNS=${RUNS:-3}
work=$(mktemp -d /tmp/gantry-bench-proxy.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mime=$(ls /etc/nginx/mime.types 2>/dev/null || true)
cat > "$work/backend.conf" <<CONF
worker_processes 1; daemon off; pid $work/backend.pid; error_log $work/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:9000; location / { return 200 "ok\n"; } } }
CONF
cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream b { server 127.0.0.1:9000; keepalive 64; }
  server { listen 127.0.0.1:8002; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:8003
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:9000
CONF
declare -A PID
nginx -c "$work/backend.conf" & pids+=($!)
nginx -c "$work/nginx.conf" & pids+=($!); PID[nginx]=$!
haproxy -f "$work/haproxy.cfg" -db & pids+=($!); PID[haproxy]=$!
"$P" --listen 127.0.0.1:8001 --backend 127.0.0.1:9000 --threads 1 2>/dev/null & pids+=($!); PID[gantry]=$!
"$BARE" 127.0.0.1:8009 127.0.0.1:9000 & pids+=($!); PID[hyper-alone]=$!
sleep 1
# nginx's work is done by its worker, the master's child.
PID[nginx]=$(pgrep -P "${PID[nginx]}" | head -1)
# CPU time a process has used (user + system, clock ticks).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for port in 9000 8001 8002 8003 8009; do curl -sf "http://127.0.0.1:$port/" >/dev/null || { echo "nothing answers on $port" >&2; exit 1; }; done

# wrk: requests/s, and latency p50/p99 (µs) from --latency.
run_wrk() { # port
  wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$1/" 2>/dev/null
}
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v+0} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1e6}}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'; }
# Rounds interleave the paths (direct, gantry, nginx, ... then again), so
# that the machine's drift over the minutes of a run falls on all alike.
declare -A RPS P50 P99 R A B C CPU
names=(direct gantry nginx haproxy hyper-alone)
port_of() { case $1 in direct) echo 9000;; gantry) echo 8001;; nginx) echo 8002;; haproxy) echo 8003;; hyper-alone) echo 8009;; esac; }
for _ in $(seq "$RUNS"); do
  for name in "${names[@]}"; do
    pid=${PID[$name]:-}
    t0=$([ -n "$pid" ] && ticks "$pid" || echo 0)
    out=$(run_wrk "$(port_of $name)")
    t1=$([ -n "$pid" ] && ticks "$pid" || echo 0)
    # The proxy's CPU time per request, in µs (a clock tick is 10 ms).
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    [ -n "$pid" ] && C[$name]+="$(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {printf "%.2f", (b - a) * 10000 / n}') "
    R[$name]+="$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}') "
    A[$name]+="$(echo "$out" | awk '$1=="50%" {print $2}' | to_us) "
    B[$name]+="$(echo "$out" | awk '$1=="99%" {print $2}' | to_us) "
  done
done
for name in "${names[@]}"; do
  RPS[$name]=$(printf '%s\n' ${R[$name]} | median)
  P50[$name]=$(printf '%s\n' ${A[$name]} | median)
  P99[$name]=$(printf '%s\n' ${B[$name]} | median)
  CPU[$name]=$([ -n "${C[$name]:-}" ] && printf '%s\n' ${C[$name]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}' || echo -)
done
echo "| path | requests/s | vs nginx | p50 (µs) | p99 (µs) | p99 added over direct (µs) | proxy CPU per request (µs) |"
echo "|---|---|---|---|---|---|---|"
for name in direct gantry nginx haproxy hyper-alone; do
  awk -v n="$name" -v r="${RPS[$name]}" -v ng="${RPS[nginx]}" -v p5="${P50[$name]}" -v p9="${P99[$name]}" -v d="${P99[direct]}" -v c="${CPU[$name]}" \
    'BEGIN {printf "| %s | %d | %.2fx | %d | %d | %s | %s |\n", n, r, r/ng, p5, p9, (n=="direct" ? "-" : sprintf("%d", p9-d)), c}'
done
echo

# Latency without queueing: one connection, one request at a time, so what
# each proxy adds to a request shows (wrk2's fixed rates are not packaged).
declare -A L50 L99 LA LB
for _ in $(seq "$RUNS"); do
  for name in direct gantry nginx haproxy; do
    out=$(wrk -t1 -c1 -d"${SECS}s" --latency "http://127.0.0.1:$(port_of $name)/" 2>/dev/null)
    LA[$name]+="$(echo "$out" | awk '$1=="50%" {print $2}' | to_us) "
    LB[$name]+="$(echo "$out" | awk '$1=="99%" {print $2}' | to_us) "
  done
done
for name in direct gantry nginx haproxy; do
  L50[$name]=$(printf '%s\n' ${LA[$name]} | median)
  L99[$name]=$(printf '%s\n' ${LB[$name]} | median)
done
echo "| one request at a time | p50 (µs) | p99 (µs) | added at p50 / p99 (µs) |"
echo "|---|---|---|---|"
for name in direct gantry nginx haproxy; do
  awk -v n="$name" -v a="${L50[$name]}" -v b="${L99[$name]}" -v da="${L50[direct]}" -v db="${L99[direct]}" \
    'BEGIN {printf "| %s | %d | %d | %s |\n", n, a, b, (n=="direct" ? "-" : sprintf("%d / %d", a-da, b-db))}'
done
echo

# TLS handshakes a second: a certificate from a throwaway CA, and wrk
# opening a new connection for each request.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$work/k.pem" -out "$work/c.pem" 2>/dev/null
cat > "$work/nginx-tls.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx-tls.pid; error_log $work/nginx-tls.err;
events { worker_connections 4096; }
http { access_log off;
  upstream b { server 127.0.0.1:9000; keepalive 64; }
  server { listen 127.0.0.1:8445 ssl; ssl_certificate $work/c.pem; ssl_certificate_key $work/k.pem; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c "$work/nginx-tls.conf" & pids+=($!)
"$P" --listen 127.0.0.1:8011 --https 127.0.0.1:8444 --cert "$work/c.pem" --key "$work/k.pem" --name bench.test --backend 127.0.0.1:9000 2>/dev/null & pids+=($!)
sleep 1
# wrk sends the URL's name as SNI: resolve bench.test to loopback in a
# mount namespace of wrk's own, leaving the host's /etc/hosts alone.
printf '127.0.0.1 bench.test\n' > "$work/hosts"
hs() {
  unshare -m sh -c "mount --bind $work/hosts /etc/hosts && wrk -t1 -c$CONNS -d${SECS}s -H 'Connection: close' https://bench.test:$1/" 2>/dev/null |
    awk '/Requests\/sec/ {printf "%.0f", $2}'
}
g=$(hs 8444); n=$(hs 8445)
echo "| TLS (new connection per request, ECDSA P-256) | handshakes/s |"
echo "|---|---|"
echo "| gantry | $g |"
echo "| nginx | $n |"
echo
"$P" --listen 127.0.0.1:8021 --backend 127.0.0.1:9000 --measure-swap 1000
