#!/usr/bin/env bash
# The main job: install what is needed, build gantry, build a demo image from
# busybox-static with `gantry image build`, run it and show it serving HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked
G="$PWD/target/release/gantry"
export GANTRY_DATA_DIR="${GANTRY_DATA_DIR:-/var/lib/gantry}"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp /bin/busybox "$ctx/busybox"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
WORKDIR /www
RUN echo '<h1>Hello from Gantry</h1><p>served by busybox httpd in a native container</p>' > index.html
EXPOSE 80
HEALTHCHECK --interval=10s CMD wget -q -O /dev/null http://localhost/ || exit 1
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
DOCKERFILE
echo "== gantry image build -t gantry-demo:latest"
"$G" image build -t gantry-demo:latest "$ctx"
"$G" rm -f gantry-demo >/dev/null 2>&1 || true
echo "== gantry run -d --name gantry-demo -p 8090:80 gantry-demo"
"$G" run -d --name gantry-demo -p 8090:80 gantry-demo
"$G" ps
ip=$("$G" inspect gantry-demo | sed -n 's/.*"IPAddress": "\(.*\)".*/\1/p')
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8090/ && break; sleep 0.1; done
echo "== curl http://127.0.0.1:8090/ (published port)"
curl -sS http://127.0.0.1:8090/
echo
echo "== curl http://$ip/ (the container's own address on the gantry0 bridge)"
curl -sS "http://$ip/"
echo

# A one-host cluster: manager and agent in one process, a stack of two
# replicas behind a host-mode published port.
echo "== gantry server --dev (manager + this host as its node)"
pkill -f "gantry server --dev" 2>/dev/null || true
sleep 0.5
setsid nohup "$G" server --dev > /var/log/gantry-dev.log 2>&1 < /dev/null &
for _ in $(seq 100); do "$G" node ls >/dev/null 2>&1 && break; sleep 0.1; done
"$G" node ls
stack="$ctx/stack.yml"
cat > "$stack" <<'STACK'
services:
  web:
    image: gantry-demo:latest
    command: ["sh", "-c", "echo \"<h1>Hello from task $$HOSTNAME</h1>\" > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports:
      - target: 80
        published: 8081
        mode: host
    healthcheck:
      test: ["HTTP", "80", "/"]
      interval: 2s
    deploy:
      replicas: 1
      labels:
        gantry.http.host: www.demo.test   # the edge proxy on :80/:443
        gantry.http.port: "80"
  worker:
    image: gantry-demo:latest
    command: ["sleep", "1000000"]
    healthcheck:
      disable: true   # the image's check is for its web server
    deploy:
      replicas: 2
STACK
echo "== gantry deploy -f stack.yml demo"
"$G" deploy -f "$stack" demo
"$G" service ls
"$G" service ps web --no-history
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8081/ && break; sleep 0.1; done
echo "== curl http://127.0.0.1:8081/ (the stack's published port)"
curl -sS http://127.0.0.1:8081/
echo
"$G" cert ca > "$ctx/edge-ca.pem"
for _ in $(seq 100); do
  curl -sf -o /dev/null --cacert "$ctx/edge-ca.pem" --resolve www.demo.test:443:127.0.0.1 https://www.demo.test/ && break
  sleep 0.1
done
echo "== curl https://www.demo.test/ (the edge proxy, a certificate from the cluster's edge CA)"
curl -sS --cacert "$ctx/edge-ca.pem" --resolve www.demo.test:443:127.0.0.1 https://www.demo.test/
echo
cat <<MSG

The demo container and the one-host cluster keep running
(server log: /var/log/gantry-dev.log). Try:
  $G ps
  $G logs -f gantry-demo
  $G exec -it gantry-demo sh
  $G cert ca > edge-ca.pem; curl --cacert edge-ca.pem --resolve www.demo.test:443:127.0.0.1 https://www.demo.test/
  $G service ps web
  $G service scale worker=4
  $G events
  $G stack rm demo; pkill -f "gantry server --dev"
  $G stop gantry-demo && $G rm gantry-demo
(data dir: $GANTRY_DATA_DIR)
MSG
