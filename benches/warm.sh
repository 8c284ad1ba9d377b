#!/usr/bin/env bash
# Warm blob reads side by side, in one run on 127.0.0.1: berth (disk store), Debian's
# docker-registry as a pull-through proxy (distribution's proxy) and nginx serving the same
# file with `sendfile on` (the physical reference) — plain HTTP, and HTTPS over HTTP/1.1 and
# HTTP/2 for berth and nginx with the same certificate. Per server and round: one curl GET to
# /dev/null, GETS times (MB/s over them) and the server's CPU time over them (utime + stime from
# /proc) per GiB served.
# Rounds interleave the servers so machine drift hits every row alike; the table gives
# medians and each row's ratio to nginx. Writes target/bench-warm.md.
#
#   benches/warm.sh                 # 200 MiB blob, 7 rounds
#   MIB=50 ROUNDS=5 benches/warm.sh
#   SERVERS="berth nginx" GETS=15 benches/warm.sh   # plain HTTP only
#   CONNS=4 SERVERS="berth proxy nginx" benches/warm.sh   # wrk, 4 connections, 5 s per round
#
# Sequential curl GETs are bound by curl's own receive on loopback; CONNS=N instead runs
# `wrk -t2 -cN` for SECONDS_PER_ROUND (5) per server and round: clients and server share the two cores,
# so a server's CPU per GiB shows in the throughput. HTTP/1 only (wrk speaks no HTTP/2).
#
# Needs docker-registry, nginx (Debian's nginx-light: installed here when missing, as root),
# curl, openssl, python3, s3s-fs (benches/common.sh starts one).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-200}
ROUNDS=${ROUNDS:-7}
GETS=${GETS:-5} # per server and round
BERTH_BIN=${BERTH_BIN:-target/release/berth}
REPO=library/bench

if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  [[ $(id -u) -eq 0 ]] || { echo "warm: needs nginx (apt-get install nginx-light)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in docker-registry s3s-fs curl python3 openssl; do
  command -v "$tool" >/dev/null || { echo "warm: needs $tool (see scripts/test)" >&2; exit 1; }
done
[[ -x $BERTH_BIN ]] || cargo build --release --bin berth

# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

# One certificate for both TLS servers.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

plain=$(start_berth berth-plain "")
tls=$(start_berth berth-tls "" "$(printf '[server]\ntls_cert_file = "%s"\ntls_key_file = "%s"' "$work/cert.pem" "$work/key.pem")")

# distribution's proxy: docker-registry pulling through from the upstream registry.
proxy=127.0.0.1:$(free_port)
cat >"$work/proxy.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/proxy}}
http: {addr: $proxy, secret: berth-bench-proxy}
proxy: {remoteurl: "http://$reg"}
EOF
docker-registry serve "$work/proxy.yml" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_http "$proxy"

# nginx, sendfile on, the same bytes as a static file.
nginx_plain=127.0.0.1:$(free_port)
nginx_tls=127.0.0.1:$(free_port)
mkdir -p "$work/nginx/www" "$work/nginx/tmp"
# nginx's workers drop root (to nobody): they need to reach the file through mktemp's 0700 dir.
chmod 755 "$work"
cp "$work/blob" "$work/nginx/www/blob"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on; tcp_nopush on;
  client_body_temp_path $work/nginx/tmp;
  server { listen $nginx_plain; root $work/nginx/www; }
  server { listen $nginx_tls ssl http2; root $work/nginx/www;
           ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; }
}
EOF
"$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" >"$work/nginx/out.log" 2>&1 &
pids+=($!)
wait_http "$nginx_plain"

blob_path=/v2/$REPO/blobs/$digest
declare -A URL=(
  [berth]="http://$plain$blob_path"
  [proxy]="http://$proxy$blob_path"
  [nginx]="http://$nginx_plain/blob"
  [berth-h1]="https://$tls$blob_path"
  [berth-h2]="https://$tls$blob_path"
  [nginx-h1]="https://$nginx_tls/blob"
  [nginx-h2]="https://$nginx_tls/blob"
)
declare -A CURL_OPTS=(
  [berth-h1]="--http1.1" [nginx-h1]="--http1.1" [berth-h2]="--http2" [nginx-h2]="--http2"
)
pid_of() { # server → the pid whose CPU counts
  case $1 in
    berth) cat "$work/berth-plain/pid" ;;
    berth-*) cat "$work/berth-tls/pid" ;;
    proxy) pgrep -f "docker-registry serve $work/proxy.yml" | head -1 ;;
    nginx*) pgrep -f "nginx: worker process" -P "$(cat "$work/nginx/nginx.pid")" | head -1 ;;
  esac
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# SERVERS="berth nginx" measures only those (each row needs its nginx reference in the list).
read -ra servers <<<"${SERVERS:-berth proxy nginx berth-h1 nginx-h1 berth-h2 nginx-h2}"

# Warm every server (the fills, the proxy's pull-through, the page cache) and check the bytes.
for s in "${servers[@]}"; do
  # shellcheck disable=SC2086
  got="sha256:$(curl -sS -f -k ${CURL_OPTS[$s]:-} "${URL[$s]}" | sha256)"
  [[ $got == "$digest" ]] || { echo "warm: $s served wrong bytes" >&2; exit 1; }
done
sleep 1 # berth's commit and the proxy's write-behind after the first GET

if [[ -n ${CONNS:-} ]]; then
  command -v wrk >/dev/null || { echo "warm: CONNS needs wrk (apt-get install wrk)" >&2; exit 1; }
  for s in "${servers[@]}"; do
    [[ $s != *-h2 ]] || { echo "warm: wrk speaks no HTTP/2; leave $s out of SERVERS" >&2; exit 1; }
  done
fi
# wrk's "N requests in Ts, X.YYGB read": the bytes read, partial responses included.
wrk_bytes() { awk '/requests in/ {match($5, /^[0-9.]+/); n=substr($5, 1, RLENGTH); u=substr($5, RLENGTH+1)
  m=(u=="TB")?2^40:(u=="GB")?2^30:(u=="MB")?2^20:(u=="KB")?2^10:1; printf "%.0f", n*m}'; }
for round in $(seq "$ROUNDS"); do
  for s in "${servers[@]}"; do
    pid=$(pid_of "$s")
    before=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    if [[ -n ${CONNS:-} ]]; then
      bytes=$(wrk -t2 -c"$CONNS" -d"${SECONDS_PER_ROUND:-5}s" "${URL[$s]}" | wrk_bytes)
    else
      for _ in $(seq "$GETS"); do
        # shellcheck disable=SC2086
        curl -sS -f -k ${CURL_OPTS[$s]:-} -o /dev/null "${URL[$s]}"
      done
      bytes=$((GETS * MIB * 1048576))
    fi
    t1=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    echo "$s $round $t0 $t1 $((after - before)) $bytes" >>"$work/runs"
  done
done

how=${CONNS:+wrk -t2 -c$CONNS for ${SECONDS_PER_ROUND:-5} s}
python3 - "$work/runs" "$MIB" "$TICK" "$ROUNDS" "${how:-$GETS curl GETs}" <<'PY' | tee target/bench-warm.md
import sys, statistics
runs, mib, tick, rounds, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = {}
for line in open(runs):
    s, r, t0, t1, ticks, served = line.split()
    served = int(served)
    rows.setdefault(s, []).append(
        (served / (float(t1) - float(t0)) / 1e6, int(ticks) / tick / (served / 2**30)))
def med(s, i):
    return statistics.median(v[i] for v in rows[s])
ref = {"berth": "nginx", "proxy": "nginx", "nginx": "nginx", "berth-h1": "nginx-h1",
       "nginx-h1": "nginx-h1", "berth-h2": "nginx-h2", "nginx-h2": "nginx-h2"}
print(f"Warm {mib} MiB blob, {how} per server and round, medians of {rounds} interleaved rounds\n")
print("| server | MB/s | CPU-s per GiB | throughput vs nginx | CPU vs nginx |")
print("|---|---|---|---|---|")
for s in [s for s in ref if s in rows]:
    r = ref[s]
    print(f"| {s} | {med(s,0):,.0f} | {med(s,1):.2f} | {med(s,0)/med(r,0):.2f}× | {med(s,1)/med(r,1):.2f}× |")
PY
