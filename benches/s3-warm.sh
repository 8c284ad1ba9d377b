#!/usr/bin/env bash
# Warm blob throughput, measured in one run on 127.0.0.1: berth with the disk store, berth with
# the S3 store (s3s-fs, the S3 server the tests use) without and with its local hot tier, and
# Debian's docker-registry serving the
# same blob from its filesystem driver. Prints a markdown table; writes target/bench-s3-warm.md.
#
#   benches/s3-warm.sh                 # 200 MiB blob, 9 warm GETs each
#   MIB=50 GETS=3 benches/s3-warm.sh
#   BERTH_BIN=target/debug/berth benches/s3-warm.sh
#
# Needs docker-registry, curl, python3 (free ports) and s3s-fs (scripts/test installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-200}
GETS=${GETS:-9}
BERTH_BIN=${BERTH_BIN:-target/release/berth}
REPO=library/bench

for tool in docker-registry s3s-fs curl python3 openssl; do
  command -v "$tool" >/dev/null || { echo "s3-warm: needs $tool (see scripts/test)" >&2; exit 1; }
done
[[ -x $BERTH_BIN ]] || cargo build --release --bin berth

# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
disk=$(start_berth berth-disk "")
s3berth=$(start_berth berth-s3 "$(s3_table plain 'local_max_size = "0"')")
s3hot=$(start_berth berth-s3hot "$(s3_table hot '')")

prime() { # label, host:port[, berth data dir] → the first (cold for berth) GET's seconds
  local label=$1 addr=$2 data=${3:-} url="http://$2/v2/$REPO/blobs/$digest" got cold
  # Cold for berth: the fill (upstream → spool → verify → commit; the last byte waits for it).
  cold=$(curl -sS -f -o "$work/cold" -w '%{time_total}' "$url")
  got="sha256:$(sha256 <"$work/cold")"
  rm -f "$work/cold"
  [[ $got == "$digest" ]] || { echo "s3-warm: $label served wrong bytes" >&2; exit 1; }
  if [[ -n $data ]]; then # warm means committed: wait for the fill (an S3 upload) to finish
    for _ in $(seq 600); do [[ -z $(ls -A "$data/spool") ]] && break; sleep 0.1; done
    [[ -z $(ls -A "$data/spool") ]] || { echo "s3-warm: $label never committed the blob" >&2; exit 1; }
  fi
  awk -v t="$cold" 'BEGIN {printf "%.2f", t}'
}
warm_get() { # host:port → MiB/s of one warm GET
  curl -sS -f -o /dev/null -w '%{speed_download}\n' "http://$1/v2/$REPO/blobs/$digest" |
    awk '{printf "%.0f\n", $1/1048576}'
}
check_warm() { # label, host:port: the warm bytes hash to the digest
  local got
  got="sha256:$(curl -sS -f "http://$2/v2/$REPO/blobs/$digest" | sha256)"
  [[ $got == "$digest" ]] || { echo "s3-warm: $1 served wrong warm bytes" >&2; exit 1; }
}
upstream_blob_requests() {
  curl -s "http://$1/metrics" | awk '/^berth_upstream_requests_total/ && /kind="blob"/ {s+=$NF} END {print s+0}'
}

first_reg=$(prime "docker-registry" "$reg")
first_disk=$(prime "berth (disk)" "$disk" "$work/berth-disk/data")
first_s3=$(prime "berth (S3)" "$s3berth" "$work/berth-s3/data")
first_s3hot=$(prime "berth (S3 + hot tier)" "$s3hot" "$work/berth-s3hot/data")
# Warm GETs interleaved, one of each server per round, so machine drift hits every row alike;
# the hot tier / disk ratio is taken round by round.
declare -A speeds
pair_ratios=""
for _ in $(seq "$GETS"); do
  for server in reg disk s3berth s3hot; do
    speeds[$server]+="$(warm_get "${!server}") "
  done
  d=$(echo "${speeds[disk]}" | awk '{print $NF}') h=$(echo "${speeds[s3hot]}" | awk '{print $NF}')
  pair_ratios+="$(awk -v h="$h" -v d="$d" 'BEGIN {printf "%.2f", (d > 0) ? h / d : 0}') "
done
for server in reg disk s3berth s3hot; do check_warm "$server" "${!server}"; done
row() { # server, first GET → "median|runs|first"
  local list=${speeds[$1]}
  echo "$(echo "$list" | tr ' ' '\n' | grep . | median | awk '{printf "%.0f", $1}')|$(echo "$list" | awk '{$1=$1; gsub(/ /, ", "); print}')|$2"
}
row_reg=$(row reg "$first_reg")
row_disk=$(row disk "$first_disk")
row_s3=$(row s3berth "$first_s3")
row_s3hot=$(row s3hot "$first_s3hot")

# The ceiling of the S3 row: the same object straight from s3s-fs (a second, anonymous instance
# on the same data directory, so plain curl can GET it).
s3anon=127.0.0.1:$(free_port)
s3s-fs --host 127.0.0.1 --port "${s3anon#*:}" "$work/s3" >"$work/s3anon.log" 2>&1 &
pids+=($!)
wait_http "$s3anon"
s3_direct() {
  for _ in $(seq "$GETS"); do
    curl -sS -f -o /dev/null -w '%{speed_download}\n' "http://$s3anon/berth-bench/plain/blobs/sha256/${digest#sha256:}"
  done
}
direct_speeds=$(s3_direct)
row_s3direct="$(echo "$direct_speeds" | median | awk '{printf "%.0f", $1/1048576}')|$(echo "$direct_speeds" | awk '{printf "%s%.0f", (NR>1?", ":""), $1/1048576}')"
reg_med=${row_reg%%|*}
runs() { echo "$1" | cut -d'|' -f2; }
first() { echo "$1" | cut -d'|' -f3; }
ratio() { awk -v a="$1" -v b="$reg_med" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }

report=$(
  cat <<EOF
## Warm ${MIB} MiB blob, median of $GETS interleaved GETs (MiB/s, curl to /dev/null, 127.0.0.1)

| server | median MiB/s | runs | vs docker-registry | first GET s | upstream blob GETs |
|---|---|---|---|---|---|
| docker-registry (filesystem driver) | **$reg_med** | $(runs "$row_reg") | 1.00 | $(first "$row_reg") | – |
| berth, disk store | **${row_disk%%|*}** | $(runs "$row_disk") | $(ratio "${row_disk%%|*}") | $(first "$row_disk") (cold) | $(upstream_blob_requests "$disk") |
| berth, S3 store (s3s-fs), no hot tier | **${row_s3%%|*}** | $(runs "$row_s3") | $(ratio "${row_s3%%|*}") | $(first "$row_s3") (cold) | $(upstream_blob_requests "$s3berth") |
| berth, S3 store + local hot tier | **${row_s3hot%%|*}** | $(runs "$row_s3hot") | $(ratio "${row_s3hot%%|*}") | $(first "$row_s3hot") (cold) | $(upstream_blob_requests "$s3hot") |
| s3s-fs itself, same object (ceiling of the row above) | **${row_s3direct%%|*}** | $(runs "$row_s3direct") | $(ratio "${row_s3direct%%|*}") | – | – |

berth: $BERTH_BIN; every berth and registry body of the first and last GET hashed to
$digest. The S3 row measures berth in front of s3s-fs (a test server that reads files in 4 KiB
chunks), not AWS S3. Hot tier vs disk store, round by round: median **$(echo "$pair_ratios" | tr ' ' '\n' | grep . | median)×**
($(echo "$pair_ratios" | awk '{$1=$1; gsub(/ /, ", "); print}')); warm GETs ran interleaved, one of each server per round.
A shared 2-core machine is noisy: compare rows of one run.
EOF
)
echo "$report"
mkdir -p target
echo "$report" >target/bench-s3-warm.md
