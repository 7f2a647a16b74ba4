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
echo "== gantry run -d --name gantry-demo -p 8080:80 gantry-demo"
"$G" run -d --name gantry-demo -p 8080:80 gantry-demo
"$G" ps
ip=$("$G" inspect gantry-demo | sed -n 's/.*"IPAddress": "\(.*\)".*/\1/p')
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.1; done
echo "== curl http://127.0.0.1:8080/ (published port)"
curl -sS http://127.0.0.1:8080/
echo
echo "== curl http://$ip/ (the container's own address on the gantry0 bridge)"
curl -sS "http://$ip/"
echo
cat <<MSG

The demo container keeps running. Try:
  $G ps
  $G logs -f gantry-demo
  $G exec -it gantry-demo sh
  $G stop gantry-demo && $G rm gantry-demo
(data dir: $GANTRY_DATA_DIR)
MSG
