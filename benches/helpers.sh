# Helpers for the bench scripts, sourced by common.sh and by the scripts that set up their own
# upstream (cold-shaped.sh): free ports, waiting for a listener, hashing, medians, a blob upload.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # any HTTP(S) answer on $1 within 20 s
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://$1/" && return 0
    curl -sk -o /dev/null "https://$1/" && return 0
    sleep 0.1
  done
  echo "bench: nothing listening on $1" >&2; exit 1
}
# SHA-256 of stdin, hex. openssl's uses the CPU's SHA extensions (≈1.2 GB/s here); coreutils'
# sha256sum does not (≈0.1 GB/s) and would be what a many-client bench measures.
sha256() { openssl dgst -sha256 -r | cut -d' ' -f1; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
med() { printf '%s\n' "$@" | median; }         # the median of the arguments
list() { local IFS=,; echo "$*" | sed 's/,/, /g'; } # the arguments as "a, b, c"

push_blob() { # registry URL (or host:port), repository, file, digest[, curl options]: one
  # monolithic blob upload
  local base=$1 location
  [[ $base == http* ]] || base=http://$base
  location=$(curl -sS "${@:5}" -D - -o /dev/null -X POST "$base/v2/$2/blobs/uploads/" |
    awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
  [[ $location == http* ]] || location="$base$location"
  curl -sS -f "${@:5}" -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary @"$3" "$location&digest=$4"
}

upstream_certificate() { # IP: $work/upstream-ca.pem and a leaf for IP it signs
  # ($work/upstream-cert.pem, upstream-key.pem). rustls takes no self-signed CA certificate as
  # a server's own, hence the two.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$work/upstream-ca-key.pem" -out "$work/upstream-ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" \
    -keyout "$work/upstream-key.pem" -out "$work/upstream.csr" 2>/dev/null
  openssl x509 -req -in "$work/upstream.csr" -days 2 -CA "$work/upstream-ca.pem" \
    -CAkey "$work/upstream-ca-key.pem" -CAcreateserial -out "$work/upstream-cert.pem" \
    -extfile <(printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\n' "$1") 2>/dev/null
}
