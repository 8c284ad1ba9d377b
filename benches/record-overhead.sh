#!/usr/bin/env bash
# The cost of recording every request (pull record, client metrics) on the warm manifest path:
# two release berths, BEFORE and AFTER (paths to binaries), in front of a tiny local upstream
# serving one manifest; 7 interleaved rounds of 5000 sequential GETs on one connection
# (p50/p99) and 20000 GETs by 32 parallel curl transfers (req/s, and berth's CPU time per
# request over them: utime + stime from /proc). Needs curl and python3.
#   benches/record-overhead.sh /path/to/berth-before /path/to/berth-after
set -euo pipefail
BEFORE=$(realpath "$1"); AFTER=$(realpath "$2")
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d); cd "$WORK"
python3 "$HERE/record-overhead-upstream.py" 5190 & UP=$!
B1=""; B2=""
trap 'kill $UP 2>/dev/null; kill $B1 $B2 2>/dev/null || true' EXIT
start() { # bin port dir
  rm -rf $3; mkdir -p $3
  printf '[upstreams."docker.io"]\nurl = "http://127.0.0.1:5190"\ntag_ttl = "1h"\n' > $3/berth.toml
  BERTH_LOG=warn $1 serve --config $3/berth.toml --listen 127.0.0.1:$2 --data-dir $3/data >$3/log 2>&1 &
}
start "$BEFORE" 5191 "$WORK/before"; B1=$!
start "$AFTER" 5192 "$WORK/after"; B2=$!
sleep 1
URL=/v2/library/app/manifests/1
for p in 5191 5192; do curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' http://127.0.0.1:$p$URL; done
mk() { for i in $(seq $2); do echo "url = \"http://127.0.0.1:$1$URL\""; echo 'output = "/dev/null"'; done; }
for p in 5191 5192; do mk $p 5000 > seq-$p.cfg; mk $p 20000 > par-$p.cfg; done
for round in 1 2 3 4 5 6 7; do
  for p in 5191 5192; do
    pid=$B1; [[ $p == 5192 ]] && pid=$B2
    curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' -w '%{time_total}\n' -K seq-$p.cfg > lat-$p-$round.txt
    cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
    t0=$(date +%s.%N)
    curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' --no-progress-meter --parallel --parallel-max 32 -K par-$p.cfg
    t1=$(date +%s.%N)
    cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
    python3 - "$p" "$round" "$t0" "$t1" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" <<'PY'
import sys
p, r, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
cpu_us = (int(sys.argv[6]) - int(sys.argv[5])) / int(sys.argv[7]) * 1e6 / 20000
lat = sorted(float(x) for x in open(f"lat-{p}-{r}.txt") if x.strip())
q = lambda f: lat[min(len(lat)-1, int(f*len(lat)))] * 1e6
name = "before" if p == "5191" else "after "
print(f"round {r} {name}: p50 {q(0.5):7.0f} us  p99 {q(0.99):7.0f} us  (n={len(lat)})  parallel: {20000/(t1-t0):8.0f} req/s, {cpu_us:5.1f} us CPU/request")
PY
  done
done
rm -rf "$WORK"
