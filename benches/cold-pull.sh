#!/usr/bin/env bash
# Cold single pull: one client GETs a blob berth has never seen (upstream → hash → spool →
# client, the last byte released at verification) vs the same GET straight from the upstream
# registry (Debian's docker-registry, filesystem driver). Rounds alternate direct and berth,
# each berth round on a fresh cache; the ratio is taken round by round. Prints a markdown
# table; writes target/bench-cold-pull.md.
#
#   benches/cold-pull.sh                  # 200 MiB blob, 7 rounds
#   MIB=50 ROUNDS=3 benches/cold-pull.sh
#   BERTH_BIN=target/debug/berth benches/cold-pull.sh
#   UPSTREAM_TLS=1 benches/cold-pull.sh   # the upstream over HTTPS, as the public registries
#
# Then `cargo bench --bench floor` measures the least CPU the same work takes on this machine
# (receive, SHA-256, write and sync, send; AES-GCM over TLS), and the report reads berth's
# CPU per GiB against it.
#
# Needs docker-registry, curl, python3 (free ports) and s3s-fs (scripts/test installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-200}
ROUNDS=${ROUNDS:-7}
BERTH_BIN=${BERTH_BIN:-target/release/berth}
REPO=library/bench

for tool in docker-registry s3s-fs curl python3 openssl; do
  command -v "$tool" >/dev/null || { echo "cold-pull: needs $tool (see scripts/test)" >&2; exit 1; }
done
[[ -x $BERTH_BIN ]] || cargo build --release --bin berth

# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
path="/v2/$REPO/blobs/$digest"
get_time() { curl -sS -f "${@:2}" -o /dev/null -w '%{time_total}\n' "$1$path"; }
committed() { # the digest of what berth stored under $1, once it is there (≤ 10 s)
  local file
  for _ in $(seq 100); do
    file=$(find "$1/blobs" -type f 2>/dev/null | head -1)
    [[ -n $file ]] && { echo "sha256:$(sha256 <"$file")"; return; }
    sleep 0.1
  done
  echo none
}

# The upstream's files are in the page cache from the upload; one unmeasured GET makes sure.
get_time "$upstream" "${curl_upstream[@]}" >/dev/null
direct=() via=() ratios=() cpus=()
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  addr=$(start_berth "cold-$round" "")
  d=$(get_time "$upstream" "${curl_upstream[@]}")
  pid=$(cat "$work/cold-$round/pid")
  before=$(cpu_ticks "$pid")
  b=$(get_time "http://$addr")
  # berth verified the digest before the last byte; check what it committed too.
  got=$(committed "$work/cold-$round/data")
  after=$(cpu_ticks "$pid")
  cpus+=("$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v m="$MIB" 'BEGIN {printf "%.2f", t / hz / (m / 1024)}')")
  [[ $got == "$digest" ]] || { echo "cold-pull: round $round: berth committed $got" >&2; exit 1; }
  stop_berth "cold-$round"
  sleep 0.2
  rm -rf "$work/cold-$round"
  direct+=("$d") via+=("$b") ratios+=("$(awk -v b="$b" -v d="$d" 'BEGIN {printf "%.2f", b / d}')")
  echo "round $round: direct ${d}s, through berth ${b}s" >&2
done
floor_kind=plain
[[ ${UPSTREAM_TLS:-} == 1 ]] && floor_kind=tls
echo "cold-pull: measuring the floor (cargo bench --bench floor; builds it the first time)" >&2
floor=$(cargo bench -q --bench floor -- "$work/blob" "$work" 2>/dev/null) ||
  { echo "cold-pull: the floor bench failed (cargo bench --bench floor -- FILE)" >&2; exit 1; }
floor_of() { awk -v k="$1" '$1 == k {print $2}' <<<"$floor"; }
floor_parts="receive $(floor_of receive), send $(floor_of send), SHA-256 $(floor_of sha256), write and sync $(floor_of write+sync)"
[[ $floor_kind == tls ]] && floor_parts+=", AES-128-GCM $(floor_of aes-128-gcm)"
mibs() { awk -v t="$1" -v m="$MIB" 'BEGIN {printf "%.0f", m / t}'; }
report=$(
  cat <<EOF
## Cold single pull of a ${MIB} MiB blob, $ROUNDS rounds (seconds, curl to /dev/null, 127.0.0.1, upstream $upstream)

| GET | median s | MiB/s | rounds (s) |
|---|---|---|---|
| straight from docker-registry | **$(med "${direct[@]}")** | $(mibs "$(med "${direct[@]}")") | $(list "${direct[@]}") |
| through berth, cold cache | **$(med "${via[@]}")** | $(mibs "$(med "${via[@]}")") | $(list "${via[@]}") |

berth / direct, round by round: median **$(med "${ratios[@]}")×** ($(list "${ratios[@]}")).
berth's CPU per GiB filled (download$([[ ${UPSTREAM_TLS:-} == 1 ]] && echo " over TLS"), SHA-256, spool, commit, send): median **$(med "${cpus[@]}") CPU-s/GiB** ($(list "${cpus[@]}")).
The same work at this machine's floor (\`cargo bench --bench floor\`, each part with nothing in between): **$(floor_of "$floor_kind") CPU-s/GiB** ($floor_parts); berth's fill costs **$(awk -v b="$(med "${cpus[@]}")" -v f="$(floor_of "$floor_kind")" 'BEGIN {printf "%.2f", b / f}')×** the floor.
berth: $BERTH_BIN, a fresh cache per round; each committed blob hashed to $digest.
A shared 2-core machine is noisy: compare rows of one run.
EOF
)
echo "$report"
mkdir -p target
echo "$report" >target/bench-cold-pull.md
