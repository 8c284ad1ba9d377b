#!/usr/bin/env bash
# Warm blob throughput, measured in one run on 127.0.0.1: berth with the disk store, berth with
# the S3 store (s3s-fs, the S3 server the tests use) without and with its local hot tier, and
# Debian's docker-registry serving the
# same blob from its filesystem driver. Prints a markdown table; writes target/bench-s3-warm.md.
#
#   benches/s3-warm.sh                 # 200 MiB blob, 5 warm GETs each
#   MIB=50 GETS=3 benches/s3-warm.sh
#   BERTH_BIN=target/debug/berth benches/s3-warm.sh
#
# Needs docker-registry, curl, python3 (free ports) and s3s-fs (scripts/test installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-200}
GETS=${GETS:-5}
BERTH_BIN=${BERTH_BIN:-target/release/berth}
REPO=library/bench

for tool in docker-registry s3s-fs curl python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "s3-warm: needs $tool (see scripts/test)" >&2; exit 1; }
done
[[ -x $BERTH_BIN ]] || cargo build --release --bin berth

# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
disk=$(start_berth berth-disk "")
s3berth=$(start_berth berth-s3 "$(s3_table plain 'local_max_size = "0"')")
s3hot=$(start_berth berth-s3hot "$(s3_table hot '')")

measure() { # label, host:port[, berth data dir] → one table row
  local label=$1 addr=$2 data=${3:-} url="http://$2/v2/$REPO/blobs/$digest" got speeds cold
  # Cold for berth: the fill (upstream → spool → verify → commit; the last byte waits for it).
  cold=$(curl -sS -f -o "$work/cold" -w '%{time_total}' "$url")
  got="sha256:$(sha256sum "$work/cold" | cut -d' ' -f1)"
  rm -f "$work/cold"
  [[ $got == "$digest" ]] || { echo "s3-warm: $label served wrong bytes" >&2; exit 1; }
  if [[ -n $data ]]; then # warm means committed: wait for the fill (an S3 upload) to finish
    for _ in $(seq 600); do [[ -z $(ls -A "$data/spool") ]] && break; sleep 0.1; done
    [[ -z $(ls -A "$data/spool") ]] || { echo "s3-warm: $label never committed the blob" >&2; exit 1; }
  fi
  speeds=$(for _ in $(seq "$GETS"); do curl -sS -f -o /dev/null -w '%{speed_download}\n' "$url"; done)
  got="sha256:$(curl -sS -f "$url" | sha256sum | cut -d' ' -f1)"
  [[ $got == "$digest" ]] || { echo "s3-warm: $label served wrong warm bytes" >&2; exit 1; }
  local med runs
  med=$(echo "$speeds" | median | awk '{printf "%.0f", $1/1048576}')
  runs=$(echo "$speeds" | awk '{printf "%s%.0f", (NR>1?", ":""), $1/1048576}')
  echo "$med|$runs|$(awk -v t="$cold" 'BEGIN {printf "%.2f", t}')"
}
upstream_blob_requests() {
  curl -s "http://$1/metrics" | awk '/^berth_upstream_requests_total/ && /kind="blob"/ {s+=$NF} END {print s+0}'
}

row_reg=$(measure "docker-registry" "$reg")
row_disk=$(measure "berth (disk)" "$disk" "$work/berth-disk/data")
row_s3=$(measure "berth (S3)" "$s3berth" "$work/berth-s3/data")
row_s3hot=$(measure "berth (S3 + hot tier)" "$s3hot" "$work/berth-s3hot/data")

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
speeds=$(s3_direct)
row_s3direct="$(echo "$speeds" | median | awk '{printf "%.0f", $1/1048576}')|$(echo "$speeds" | awk '{printf "%s%.0f", (NR>1?", ":""), $1/1048576}')"
reg_med=${row_reg%%|*}
runs() { echo "$1" | cut -d'|' -f2; }
first() { echo "$1" | cut -d'|' -f3; }
ratio() { awk -v a="$1" -v b="$reg_med" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }

report=$(
  cat <<EOF
## Warm ${MIB} MiB blob, median of $GETS GETs (MiB/s, curl to /dev/null, 127.0.0.1)

| server | median MiB/s | runs | vs docker-registry | first GET s | upstream blob GETs |
|---|---|---|---|---|---|
| docker-registry (filesystem driver) | **$reg_med** | $(runs "$row_reg") | 1.00 | $(first "$row_reg") | – |
| berth, disk store | **${row_disk%%|*}** | $(runs "$row_disk") | $(ratio "${row_disk%%|*}") | $(first "$row_disk") (cold) | $(upstream_blob_requests "$disk") |
| berth, S3 store (s3s-fs), no hot tier | **${row_s3%%|*}** | $(runs "$row_s3") | $(ratio "${row_s3%%|*}") | $(first "$row_s3") (cold) | $(upstream_blob_requests "$s3berth") |
| berth, S3 store + local hot tier | **${row_s3hot%%|*}** | $(runs "$row_s3hot") | $(ratio "${row_s3hot%%|*}") | $(first "$row_s3hot") (cold) | $(upstream_blob_requests "$s3hot") |
| s3s-fs itself, same object (ceiling of the row above) | **${row_s3direct%%|*}** | $(runs "$row_s3direct") | $(ratio "${row_s3direct%%|*}") | – | – |

berth: $BERTH_BIN; every berth and registry body of the first and last GET hashed to
$digest. The S3 row measures berth in front of s3s-fs (a test server that reads files in 4 KiB
chunks), not AWS S3. Hot tier vs disk store: $(awk -v a="${row_s3hot%%|*}" -v b="${row_disk%%|*}" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')×.
A shared 2-core machine is noisy: compare rows of one run.
EOF
)
echo "$report"
mkdir -p target
echo "$report" >target/bench-s3-warm.md
