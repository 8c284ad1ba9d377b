#!/usr/bin/env bash
# Cold pull over a link that is the bottleneck: Debian's docker-registry in a network namespace
# behind a veth whose upstream → host direction is shaped with tbf (400 Mbit/s by default), berth
# on the host. Rounds alternate a direct GET of the blob over the shaped link and the same GET
# through a fresh berth (empty cache); the ratio is taken round by round. On this path the link,
# not berth's CPU, sets the pace: the ratio says what berth costs a real cold pull.
# Writes target/bench-cold-shaped.md.
#
#   sudo benches/cold-shaped.sh                   # 200 MiB, 5 rounds, 400mbit
#   MIB=100 ROUNDS=3 RATE=1gbit sudo benches/cold-shaped.sh
#   UPSTREAM_TLS=1 sudo benches/cold-shaped.sh    # the upstream over HTTPS, as the public ones
#
# Needs root (a namespace, tc), docker-registry, curl, openssl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-200}
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-400mbit}
BERTH_BIN=${BERTH_BIN:-target/release/berth}
REPO=library/bench
[[ $(id -u) -eq 0 ]] || { echo "cold-shaped: needs root (network namespace, tc)" >&2; exit 1; }
for tool in docker-registry curl openssl python3 tc; do
  command -v "$tool" >/dev/null || { echo "cold-shaped: needs $tool" >&2; exit 1; }
done
[[ -x $BERTH_BIN ]] || cargo build --release --bin berth

ns=bshape$$
host_if=vsh$$ ns_if=vsn$$
up=10.98.0.2:5000
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=benches/helpers.sh
source "$(dirname "$0")/helpers.sh"

ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if" netns "$ns"
ip addr add 10.98.0.1/24 dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" addr add 10.98.0.2/24 dev "$ns_if"
ip -n "$ns" link set "$ns_if" up
ip -n "$ns" link set lo up
# The bottleneck: what the upstream sends toward the host.
ip netns exec "$ns" tc qdisc add dev "$ns_if" root tbf rate "$RATE" burst 256kb latency 50ms

head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$work/blob"
digest="sha256:$(sha256 <"$work/blob")"
scheme=http tls= curl_tls=() ca=
if [[ ${UPSTREAM_TLS:-} == 1 ]]; then
  upstream_certificate "${up%:*}"
  scheme=https curl_tls=(--cacert "$work/upstream-ca.pem") ca="ca_file = \"$work/upstream-ca.pem\""
  tls="tls: {certificate: $work/upstream-cert.pem, key: $work/upstream-key.pem}"
fi
cat >"$work/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $up, secret: berth-bench-secret, $tls}
EOF
ip netns exec "$ns" docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
wait_http "$up"
push_blob "$scheme://$up" "$REPO" "$work/blob" "$digest" "${curl_tls[@]}"

path="/v2/$REPO/blobs/$digest"
get() { curl -sS -f -o "$work/got" -w '%{time_total}\n' "${@:2}" "$1$path"; }
check() { [[ "sha256:$(sha256 <"$work/got")" == "$digest" ]] ||
  { echo "cold-shaped: $1 served wrong bytes" >&2; exit 1; }; }
direct=() via=() ratios=()
for round in $(seq "$ROUNDS"); do
  d=$(get "$scheme://$up" "${curl_tls[@]}"); check direct
  addr=127.0.0.1:$(free_port)
  mkdir -p "$work/berth-$round"
  printf '[upstreams."docker.io"]\nurl = "%s://%s"\n%s\n' "$scheme" "$up" "$ca" >"$work/berth-$round/berth.toml"
  BERTH_LOG=warn "$BERTH_BIN" serve --config "$work/berth-$round/berth.toml" --listen "$addr" \
    --data-dir "$work/berth-$round/data" >"$work/berth-$round/log" 2>&1 &
  bpid=$!
  wait_http "$addr"
  b=$(get "http://$addr"); check berth
  kill "$bpid"; wait "$bpid" 2>/dev/null || true
  rm -rf "$work/berth-$round"
  direct+=("$d") via+=("$b") ratios+=("$(awk -v b="$b" -v d="$d" 'BEGIN {printf "%.3f", b / d}')")
  echo "round $round: direct ${d}s, through berth ${b}s" >&2
done
report=$(
  cat <<EOF
## Cold pull of a ${MIB} MiB blob over a ${RATE} link ($scheme upstream), $ROUNDS rounds (seconds)

| GET | median s | rounds (s) |
|---|---|---|
| straight from docker-registry over the link | **$(med "${direct[@]}")** | $(list "${direct[@]}") |
| through berth (cold cache) over the link | **$(med "${via[@]}")** | $(list "${via[@]}") |

berth / direct, round by round: median **$(med "${ratios[@]}")×** ($(list "${ratios[@]}")).
EOF
)
echo "$report"
mkdir -p target
echo "$report" >target/bench-cold-shaped.md
