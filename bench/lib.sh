# Helpers for bench/run.sh: the embedded S3 and s3warden as separate processes on loopback.
# shellcheck shell=bash

BENCH_ACCESS_KEY=BENCHACCESSKEY
BENCH_SECRET_KEY=bench-secret-key-0123456789
BENCH_BUCKET=bench-bucket
PIDS=()

cleanup_processes() {
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  PIDS=()
}

# wait_for_url URL: until it answers (10 s at most).
wait_for_url() {
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2
  return 1
}

# start_s3 DATA_DIR PORT [CPU]: the embedded S3 in its own process.
start_s3() {
  local dir=$1 port=$2 cpu=${3:-}
  local cmd=(./target/release/examples/s3_server "$dir" "127.0.0.1:$port" "$BENCH_BUCKET")
  [[ -n "$cpu" ]] && cmd=(taskset -c "$cpu" "${cmd[@]}")
  AWS_ACCESS_KEY_ID=$BENCH_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BENCH_SECRET_KEY "${cmd[@]}" >/dev/null &
  PIDS+=($!)
  for _ in $(seq 1 200); do
    [[ -d "$dir/$BENCH_BUCKET" ]] && curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
    sleep 0.05
  done
  echo "embedded S3 did not start" >&2
  return 1
}

# write_config DIR S3_PORT PORT ADMIN_PORT [EXTRA_TOML]: a config for s3warden in DIR.
write_config() {
  local dir=$1 s3_port=$2 port=$3 admin=$4 extra=${5:-}
  printf 'bench-hmac-secret-0123456789abcdef0123' > "$dir/hmac"
  printf 'bench-url-signing-key-0123456789abcdef' > "$dir/url-key"
  cat > "$dir/s3warden.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
public_url = "http://127.0.0.1:$port"
max_connections = 100000

[admin]
listen = "127.0.0.1:$admin"

[s3]
endpoint = "http://127.0.0.1:$s3_port"
region = "us-east-1"
addressing = "path"

[buckets.files]
bucket = "$BENCH_BUCKET"

[auth]
algorithms = ["HS256", "RS256", "ES256"]
hmac_secret_file = "hmac"
public_key_files = ["$PWD/tests/fixtures/rsa_public.pem", "$PWD/tests/fixtures/ec_public.pem"]

[signing]
secret_files = ["url-key"]

[log]
level = "warn"

[[rules]]
bucket = "files"
prefix = "bench/"
methods = ["GET", "PUT"]
allow = "authenticated"

$extra
TOML
}

# start_s3warden CONFIG PORT [CPU]: the daemon, waiting until it answers.
start_s3warden() {
  local config=$1 port=$2 cpu=${3:-}
  local cmd=(./target/release/s3warden serve --config "$config")
  [[ -n "$cpu" ]] && cmd=(taskset -c "$cpu" "${cmd[@]}")
  AWS_ACCESS_KEY_ID=$BENCH_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BENCH_SECRET_KEY "${cmd[@]}" >/dev/null &
  S3WARDEN_PID=$!
  PIDS+=("$S3WARDEN_PID")
  wait_for_url "http://127.0.0.1:$port/_health"
}

# kib PID FIELD: VmRSS or VmHWM of a process, in KiB.
kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# s3warden_cmd ARGS...: the CLI with the bench credentials.
s3warden_cmd() {
  AWS_ACCESS_KEY_ID=$BENCH_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BENCH_SECRET_KEY ./target/release/s3warden "$@"
}
