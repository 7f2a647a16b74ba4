#!/usr/bin/env bash
# Reading stack files at size (see BENCHMARKS.md): `gantry stack config`
# against Docker's `docker stack config` (the client of this machine kind;
# it needs no daemon) on the same generated files of 10, 100 and 1,000
# services in the shape of real ones (environment with variables, ports,
# volumes, health checks, deploy settings), each run RUNS times; prints
# medians and ratios as Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -q -p gantry
G="$PWD/target/release/gantry"
D=$(command -v /usr/local/bin/docker || command -v docker)
"$D" stack config --help >/dev/null 2>&1 || { echo "no docker CLI with stack config" >&2; exit 1; }
RUNS=${RUNS:-11}
work=$(mktemp -d /tmp/gantry-bench-compose.XXXXXX)
trap 'rm -rf "$work"' EXIT

gen() { # N -> a stack of N services
  local n=$1
  echo "services:"
  for i in $(seq 1 "$n"); do
    cat <<EOF
  svc$i:
    image: registry.example.com/team/app$i:\${TAG:-1.0}
    command: sh -c "echo 'starting $i'; exec app --port 80"
    environment:
      DB_URL: postgres://app:\${DB_PASSWORD}@db:5432/app$i
      LOG_LEVEL: \${LOG_LEVEL:-info}
    ports:
      - "$((10000 + i)):80"
    volumes:
      - data$i:/var/lib/app
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://localhost/health"]
      interval: 10s
      retries: 3
    deploy:
      replicas: 2
      resources:
        limits: {cpus: "0.5", memory: 256M}
      placement:
        constraints: [node.labels.tier == app]
      update_config: {parallelism: 1, delay: 5s, order: start-first}
EOF
  done
  echo "volumes:"
  for i in $(seq 1 "$n"); do echo "  data$i:"; done
}

median_ms() { # command... -> median wall time of RUNS runs, in ms
  local t=()
  for _ in $(seq 1 "$RUNS"); do
    local a b
    a=$(date +%s%N)
    "$@" >/dev/null 2>&1
    b=$(date +%s%N)
    t+=($(( (b - a) / 1000 )))
  done
  printf '%s\n' "${t[@]}" | sort -n | awk '{v[NR]=$1} END {printf "%.1f", v[int((NR+1)/2)]/1000}'
}

export DB_PASSWORD='s3cret #42'
echo "| services | file | gantry stack config (ms) | docker stack config (ms) | gantry / docker |"
echo "|---|---|---|---|---|"
for n in 10 100 1000; do
  f="$work/stack-$n.yml"
  gen "$n" > "$f"
  size=$(du -h "$f" | cut -f1)
  g=$(median_ms "$G" stack config -f "$f")
  d=$(median_ms "$D" stack config -c "$f")
  ratio=$(awk -v g="$g" -v d="$d" 'BEGIN {printf "%.2f", g / d}')
  echo "| $n | $size | $g | $d | $ratio |"
done
