#!/usr/bin/env bash
# Installs what Gantry's build, demo and tests need on Debian 12, as root.
# Idempotent: packages already present are left alone.
set -euo pipefail
pkgs=(
  build-essential pkg-config      # crates that compile C
  iproute2 iputils-ping curl ca-certificates
  busybox-static                  # demo and test images are built from it
  docker-registry skopeo          # a real OCI registry and a third-party client
  runc hyperfine                  # start-latency benchmark peers
  util-linux                      # nsenter for simulated hosts
  openssl                         # signs the test token server's JWTs
  docker.io                       # Docker Engine: proves built images are ones Docker accepts
  libclang-dev                    # bindgen for rustables (nftables over netlink) at build time
  clang                           # builds the overlay fast path (crates/gantry-net/bpf) to BPF
  nftables iperf3                 # tests read the firewall with nft; the overlay benchmark
  wrk                             # load during route changes in the edge test
  pebble                          # a real ACME CA (and its DNS server) for the certificate tests
  prometheus                      # promtool checks the metrics exposition
  jq                              # the scale harness reads the CLI's JSON
  e2fsprogs                       # mkfs.ext4: sized volumes are ext4 images on loop devices
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages only: no service starts (tests start their own daemons).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# moto's S3 server (PyPI): the S3-compatible target of the backup tests.
if ! python3 -c 'import moto.server' 2>/dev/null; then
  echo "installing: moto[server] (PyPI)"
  python3 -m pip install -q --disable-pip-version-check 'moto[server]==5.*' 2>&1 \
    | grep -v "Running pip as the 'root' user" || true
  python3 -c 'import moto.server'
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (rustup) first" >&2
  exit 1
fi
