#!/usr/bin/env bash
# Volume backups against restic (Debian's), same data, same kind of target
# (a folder on the same disk), same run:
#   a volume of SIZE_MB (half one database-like file, half 1 MiB files,
#   random bytes: nothing compresses, as for encrypted or compressed data);
#   a first backup of each (not timed: the base); then ROUNDS rounds of
#   "1 % of the bytes change" (a 1 % slice of the big file rewritten in
#   place, and 1 % of the small files rewritten), each followed by a
#   backup with Gantry (`gantry volume backup`) and one with restic, each
#   timed, and each repository's growth measured (du).
# Prints each round, then the medians and Gantry's time and size over
# restic's.
#
#   sudo bash scripts/bench-backup.sh       # ROUNDS=5 SIZE_MB=1024
#   (GANTRY_BIN=PATH: that binary instead of a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SIZE_MB=${SIZE_MB:-1024}
bash scripts/install-deps.sh
command -v restic >/dev/null || apt-get install -y -qq restic >/dev/null
if [ -z "${GANTRY_BIN:-}" ]; then
  cargo build --release --locked -q -p gantry
fi
G="${GANTRY_BIN:-$PWD/target/release/gantry}"
work=$(mktemp -d /tmp/gantry-bench-backup.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
export GANTRY_DATA_DIR="$work/data" GANTRY_CONFIG_DIR="$work/cfg" HOME="$work/home"
mkdir -p "$HOME"
head -c 32 /dev/urandom | base64 > "$work/key"
export RESTIC_PASSWORD_FILE="$work/key" RESTIC_CACHE_DIR="$work/restic-cache"

"$G" volume create bench >/dev/null
vol="$work/data/volumes/bench/_data"
small=$((SIZE_MB / 2))
big_mb=$((SIZE_MB - small))
mkdir -p "$vol/files"
head -c "$((big_mb * 1048576))" /dev/urandom > "$vol/table.db"
for i in $(seq 1 "$small"); do head -c 1048576 /dev/urandom > "$vol/files/f$i"; done
sync

restic -q -r "$work/restic" init >/dev/null
"$G" volume backup --to "$work/gantry" --key-file "$work/key" bench >/dev/null
restic -q -r "$work/restic" backup "$vol" >/dev/null

ms() { date +%s%3N; }
kb() { du -sk "$1" | cut -f1; }
gt=(); rt=(); gs=(); rs=()
changed_mb=$(( (SIZE_MB + 99) / 100 ))
for r in $(seq 1 "$ROUNDS"); do
  # 1 %: a slice of the big file in place, and some small files anew.
  slice=$(( big_mb / 100 > 0 ? big_mb / 100 : 1 ))
  dd if=/dev/urandom of="$vol/table.db" bs=1M count="$slice" \
     seek=$(( (r * 37) % (big_mb - slice) )) conv=notrunc status=none
  nsmall=$(( small / 100 > 0 ? small / 100 : 1 ))
  for i in $(seq 1 "$nsmall"); do
    head -c 1048576 /dev/urandom > "$vol/files/f$(( (r * 101 + i * 7) % small + 1 ))"
  done
  sync
  b=$(kb "$work/gantry"); t0=$(ms)
  "$G" volume backup --to "$work/gantry" --key-file "$work/key" bench >/dev/null
  t1=$(ms); gsz=$(( $(kb "$work/gantry") - b ))
  b=$(kb "$work/restic"); t2=$(ms)
  restic -q -r "$work/restic" backup "$vol" >/dev/null
  t3=$(ms); rsz=$(( $(kb "$work/restic") - b ))
  gt+=($((t1 - t0))); rt+=($((t3 - t2))); gs+=("$gsz"); rs+=("$rsz")
  echo "round $r (~${changed_mb} MB changed): gantry $((t1 - t0)) ms +${gsz} kB, restic $((t3 - t2)) ms +${rsz} kB"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mg=$(median "${gt[@]}"); mr=$(median "${rt[@]}")
sg=$(median "${gs[@]}"); sr=$(median "${rs[@]}")
echo "restic: $(restic version | head -1)"
echo "median incremental backup (${SIZE_MB} MB volume, 1 % changed): gantry ${mg} ms, restic ${mr} ms, ratio $(awk -v a="$mg" -v b="$mr" 'BEGIN {printf "%.2f", a/b}')x"
echo "median repository growth: gantry ${sg} kB, restic ${sr} kB, ratio $(awk -v a="$sg" -v b="$sr" 'BEGIN {printf "%.2f", (b>0)?a/b:0}')x"
echo "repositories: gantry $(kb "$work/gantry") kB, restic $(kb "$work/restic") kB"
