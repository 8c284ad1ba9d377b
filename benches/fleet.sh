#!/usr/bin/env bash
# Cross-replica fills, one run on 127.0.0.1: 30 concurrent cold clients of one blob spread over
# 3 berth replicas sharing an s3s-fs bucket (advertise_url set), against 30 clients of one berth.
# Reports upstream bytes / blob size (from berth's berth_upstream_blob_bytes counters) and wall
# time; every body is hashed. Writes target/bench-fleet.md.
#
#   benches/fleet.sh                # 200 MiB blob
#   MIB=100 benches/fleet.sh
#
# Needs docker-registry, curl, python3 and s3s-fs (scripts/test installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-200}
CLIENTS=${CLIENTS:-30}
BERTH_BIN=${BERTH_BIN:-target/release/berth}
REPO=library/bench
for tool in docker-registry s3s-fs curl python3 openssl; do
  command -v "$tool" >/dev/null || { echo "fleet: needs $tool (see scripts/test)" >&2; exit 1; }
done
[[ -x $BERTH_BIN ]] || cargo build --release --bin berth
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

upstream_bytes() { # host:port... → summed upstream blob bytes
  local sum=0 n
  for a in "$@"; do
    n=$(curl -s "http://$a/metrics" | awk '/^berth_upstream_blob_bytes_total/ {s+=$NF} END {printf "%.0f", s+0}')
    sum=$((sum + n))
  done
  echo "$sum"
}

run_clients() { # host:port... → wall seconds; every body must hash to the digest
  local targets=("$@") i start end bad=0
  start=$(date +%s.%N)
  for ((i = 0; i < CLIENTS; i++)); do
    local t=${targets[$((i % ${#targets[@]}))]}
    (curl -sS -f "http://$t/v2/$REPO/blobs/$digest" | sha256 >"$work/body-$i") &
  done
  wait
  end=$(date +%s.%N)
  for ((i = 0; i < CLIENTS; i++)); do
    [[ "sha256:$(cat "$work/body-$i")" == "$digest" ]] || bad=$((bad + 1))
  done
  ((bad == 0)) || { echo "fleet: $bad bodies did not hash to $digest" >&2; exit 1; }
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}'
}

replicas=()
for n in 1 2 3; do
  replicas+=("$(start_berth "replica$n" "$(s3_table fleet '')" 'advertise_url = "@SELF@"')")
done
single=$(start_berth single "$(s3_table single '')")
size=$((MIB * 1024 * 1024))

fleet_wall=$(run_clients "${replicas[@]}")
fleet_bytes=$(upstream_bytes "${replicas[@]}")
single_wall=$(run_clients "$single")
single_bytes=$(upstream_bytes "$single")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

report=$(
  cat <<EOF2
## $CLIENTS concurrent cold clients of one ${MIB} MiB blob, S3 (s3s-fs), 127.0.0.1

| setup | upstream bytes / blob | wall time s |
|---|---|---|
| 3 replicas, one bucket, advertise_url | **$(ratio "$fleet_bytes" "$size")** | $fleet_wall |
| 1 berth | **$(ratio "$single_bytes" "$size")** | $single_wall |

3 replicas vs 1 berth, wall time: $(ratio "$fleet_wall" "$single_wall")×. Every body hashed to $digest.
berth: $BERTH_BIN. A shared 2-core machine is noisy: compare rows of one run.
EOF2
)
echo "$report"
mkdir -p target
echo "$report" >target/bench-fleet.md
