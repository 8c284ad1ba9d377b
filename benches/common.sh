# Shared by the bench scripts: temp dir and child cleanup, free ports, a docker-registry upstream
# holding one random blob, an s3s-fs server, berth processes. Source it after setting MIB,
# BERTH_BIN and REPO. UPSTREAM_TLS=1 serves the upstream over HTTPS (a fresh self-signed
# certificate berth trusts by `ca_file`): $upstream is its URL either way, $curl_upstream the
# curl options that reach it.

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # start_berth runs in $(…), a subshell: its berth's pid is in a file, not in pids.
  for f in "$work"/*/pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=benches/helpers.sh
source "$(dirname "${BASH_SOURCE[0]}")/helpers.sh"

# The blob, and the upstream registry holding it (monolithic blob upload).
head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$work/blob"
digest="sha256:$(sha256 <"$work/blob")"
reg=127.0.0.1:$(free_port)
upstream=http://$reg curl_upstream=() registry_tls=
if [[ ${UPSTREAM_TLS:-} == 1 ]]; then
  upstream_certificate 127.0.0.1
  upstream=https://$reg curl_upstream=(--cacert "$work/upstream-ca.pem")
  registry_tls="  tls: {certificate: $work/upstream-cert.pem, key: $work/upstream-key.pem}"
fi
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $reg
  secret: berth-bench-secret
$registry_tls
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
wait_http "$reg"
push_blob "$upstream" "$REPO" "$work/blob" "$digest" "${curl_upstream[@]}"

# The S3 server.
s3=127.0.0.1:$(free_port)
mkdir -p "$work/s3/berth-bench"
s3s-fs --host 127.0.0.1 --port "${s3#*:}" --access-key bench --secret-key bench-secret \
  "$work/s3" >"$work/s3.log" 2>&1 &
pids+=($!)
wait_http "$s3"

start_berth() { # name, extra tables[, top-level keys] → prints host:port; @SELF@ = its URL
  local name=$1 extra=$2 top=${3:-} addr
  addr=127.0.0.1:$(free_port)
  mkdir -p "$work/$name"
  # Top-level keys before any table ([server] in `top` would otherwise swallow them).
  # The upstream table's keys beyond its URL: the CA for a TLS upstream, then UPSTREAM_KEYS.
  local upstream_keys=
  [[ ${UPSTREAM_TLS:-} == 1 ]] && upstream_keys="ca_file = \"$work/upstream-ca.pem\""
  upstream_keys+=$'\n'"${UPSTREAM_KEYS:-}"
  printf 'default_upstream = "docker.io"\n%s\n\n[upstreams."docker.io"]\nurl = "%s"\n%s\n\n%s\n' \
    "${top//@SELF@/http://$addr}" "$upstream" "$upstream_keys" "$extra" >"$work/$name/berth.toml"
  BERTH_LOG=warn "$BERTH_BIN" serve --config "$work/$name/berth.toml" --listen "$addr" \
    --data-dir "$work/$name/data" >"$work/$name/log" 2>&1 &
  echo $! >"$work/$name/pid"
  wait_http "$addr"
  echo "$addr"
}
stop_berth() { # name
  kill "$(cat "$work/$1/pid")" 2>/dev/null || true
  rm -f "$work/$1/pid"
}
s3_table() { # prefix, extra keys
  printf '[store]\nkind = "s3"\nbucket = "berth-bench"\nendpoint = "http://%s"\nallow_http = true\naccess_key_id = "bench"\nsecret_access_key = "bench-secret"\nprefix = "%s"\n%s\n' "$s3" "$1" "$2"
}
