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
    curl -fksS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2
  return 1
}

# wait_for_port PORT: until something answers HTTP there, whatever the status (10 s at most).
wait_for_port() {
  for _ in $(seq 1 200); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.05
  done
  echo "nothing answers on port $1" >&2
  return 1
}

# start_s3 DATA_DIR PORT [CPU]: the embedded S3 in its own process.
start_s3() {
  local dir=$1 port=$2 cpu=${3:-}
  local cmd=(./target/no-lto/examples/s3_server "$dir" "127.0.0.1:$port" "$BENCH_BUCKET")
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

# tls_setup DIR: one ECDSA P-256 certificate for 127.0.0.1 in DIR (cert.pem, key.pem), and the
# `[server.tls]` section naming it in $TLS_TOML.
tls_setup() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$1/key.pem"
  openssl req -x509 -new -key "$1/key.pem" -out "$1/cert.pem" -days 2 \
    -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
  TLS_TOML="[server.tls]
cert_file = \"$1/cert.pem\"
key_file = \"$1/key.pem\""
}

# start_s3warden CONFIG PORT [CPU] [SCHEME]: the daemon, waiting until it answers.
start_s3warden() {
  local config=$1 port=$2 cpu=${3:-} scheme=${4:-http}
  local cmd=("${S3WARDEN_BIN:-./target/release/s3warden}" serve --config "$config")
  [[ -n "$cpu" ]] && cmd=(taskset -c "$cpu" "${cmd[@]}")
  AWS_ACCESS_KEY_ID=$BENCH_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BENCH_SECRET_KEY "${cmd[@]}" >/dev/null &
  S3WARDEN_PID=$!
  PIDS+=("$S3WARDEN_PID")
  wait_for_url "$scheme://127.0.0.1:$port/_health"
}

# kib PID FIELD: VmRSS or VmHWM of a process, in KiB.
kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# held_kib PID: VmRSS plus the memory files (memfd) the process holds open, in KiB — large
# cached bodies live in memory files, which VmRSS does not count.
held_kib() {
  local files
  files=$(find "/proc/$1/fd" -lname '/memfd:*' -exec stat -L -c %s {} + 2>/dev/null | awk '{ s += $1 } END { print int(s / 1024) }')
  echo $(($(kib "$1" VmRSS) + ${files:-0}))
}

# s3warden_cmd ARGS...: the CLI with the bench credentials.
s3warden_cmd() {
  AWS_ACCESS_KEY_ID=$BENCH_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BENCH_SECRET_KEY ./target/release/s3warden "$@"
}

# cpu_ticks PID: user + system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# bench_wrk NAME SIZE PID URL [HEADER]: one wrk run against a server pinned to CPU 0, from CPU 1;
# prints a JSON line with req/s, p99 and the server's CPU use (cores).
bench_wrk() {
  local name=$1 size=$2 pid=$3 url=$4 header=${5:-}
  local args=(-t1 -c64 "-d${WRK_SECONDS:-10}s" --latency)
  [[ -n "$header" ]] && args+=(-H "$header")
  [[ -n "${WRK_SCRIPT:-}" ]] && args+=(-s "$WRK_SCRIPT")
  local t0 c0 t1 c1 report
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  report=$(taskset -c 1 wrk "${args[@]}" "$url")
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  if grep -q "Non-2xx" <<<"$report" || grep -q "Socket errors" <<<"$report"; then
    echo "bench $name $size: errors from wrk:" >&2
    echo "$report" >&2
    return 1
  fi
  awk -v name="$name" -v size="$size" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v tck="$(getconf CLK_TCK)" '
    /Requests\/sec/ { rps = $2 }
    $1 == "99%" {
      v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
      p99 = (unit == "us") ? v / 1000 : (unit == "s") ? v * 1000 : (unit == "m") ? v * 60000 : v
    }
    END {
      cores = (c1 - c0) / tck / (t1 - t0)
      printf "{\"system\": \"%s\", \"size\": \"%s\", \"rps\": %s, \"p99_ms\": %.3f, \"cores\": %.3f}\n", name, size, rps, p99, cores
    }' <<<"$report"
}

# core_ticks: busy clock ticks of CPU 0 and CPU 1 (user, nice, system, interrupts, softirqs).
core_ticks() { awk '$1 == "cpu0" || $1 == "cpu1" { printf "%d ", $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# bench_fixed NAME SIZE PID URL [HEADER]: a fixed offered load, the same for every server
# (h2load over HTTP/1.1 from CPU 1: 16 connections, 100 requests a second each, 5 s); prints a
# JSON line with the requests answered, the server's CPU time and each core's busy time. On
# loopback the receiving side's kernel work runs on whichever core sent the packets, so the two
# cores together are the fair total: the client's work is the same whatever answers it.
bench_fixed() {
  local name=$1 size=$2 pid=$3 url=$4 header=${5:-}
  local args=(--h1 -t1 -c16 --rps=100 -D5)
  [[ -n "$header" ]] && args+=(-H "$header")
  local c0 c1 k0 k1 report
  c0=$(cpu_ticks "$pid"); k0=$(core_ticks)
  report=$(taskset -c 1 h2load "${args[@]}" "$url")
  c1=$(cpu_ticks "$pid"); k1=$(core_ticks)
  if ! grep -q ' 0 failed, 0 errored' <<<"$report" || ! grep -q 'status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx' <<<"$report"; then
    echo "bench $name $size (fixed load): errors from h2load:" >&2
    echo "$report" >&2
    return 1
  fi
  local done_
  done_=$(awk '/^requests:/ { print $8 }' <<<"$report")
  python3 - "$name" "$size" "$done_" "$c0" "$c1" "$(getconf CLK_TCK)" $k0 $k1 <<'PY'
import json, sys
name, size, n, c0, c1, tck, a0, b0, a1, b1 = sys.argv[1:]
n, tck = int(n), int(tck)
us = lambda ticks: round(ticks / tck * 1e6 / n, 1)
print(json.dumps({"system": name, "size": size, "requests": n,
                  "server_us": us(int(c1) - int(c0)), "cpu0_us": us(int(a1) - int(a0)),
                  "cpu1_us": us(int(b1) - int(b0))}))
PY
}

# bench_fixed_case "NAME|PID|URL|HEADER" SIZE: bench_fixed for one entry of a list of cases.
bench_fixed_case() {
  local name pid url header
  IFS='|' read -r name pid url header <<<"$1"
  bench_fixed "$name" "$2" "$pid" "$url" "$header"
}

# bench_case "NAME|PID|URL|HEADER" SIZE: bench_wrk for one entry of a list of cases.
bench_case() {
  local name pid url header
  IFS='|' read -r name pid url header <<<"$1"
  bench_wrk "$name" "$2" "$pid" "$url" "$header"
}

# bench_h2_case "NAME|PID|URL|HEADER" SIZE: bench_h2load for one entry of a list of cases.
bench_h2_case() {
  local name pid url header
  IFS='|' read -r name pid url header <<<"$1"
  bench_h2load "$name" "$2" "$pid" "$url" "$header"
}

# ensure_tools: wrk, nginx with njs, h2load and openssl, from apt when missing.
ensure_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || missing+=(nginx)
  [[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ]] || missing+=(libnginx-mod-http-js)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# nginx_conf TEMPLATE OUT DIR PORT DATA S3PORT: fills in a config template.
nginx_conf() {
  sed -e "s|@DIR@|$3|g" -e "s|@PORT@|$4|g" -e "s|@DATA@|$5|g" -e "s|@S3PORT@|$6|g" \
      -e "s|@BUCKET@|$BENCH_BUCKET|g" -e "s|@BENCH@|$PWD/bench|g" "$1" > "$2"
}

# bench_h2load NAME SIZE PID URL [HEADER]: like bench_wrk, over HTTP/2 with h2load (64
# connections of 10 concurrent streams, TLS); p99 from h2load's per-request log.
bench_h2load() {
  local name=$1 size=$2 pid=$3 url=$4 header=${5:-}
  local args=(-t1 -c64 -m10 "-D${WRK_SECONDS:-10}" --warm-up-time=1 --log-file="$out/h2load.log")
  rm -f "$out/h2load.log"
  [[ -n "$header" ]] && args+=(-H "$header")
  local t0 c0 t1 c1 report
  # The warm-up second is not measured: CPU is counted from its end.
  (sleep 1.2; cpu_ticks "$pid" > "$out/h2load.c0"; date +%s.%N > "$out/h2load.t0") &
  local sampler=$!
  report=$(taskset -c 1 h2load "${args[@]}" "$url")
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  wait "$sampler"
  c0=$(<"$out/h2load.c0"); t0=$(<"$out/h2load.t0")
  if ! grep -q ' 0 failed, 0 errored' <<<"$report"; then
    echo "bench $name $size: errors from h2load:" >&2
    echo "$report" >&2
    return 1
  fi
  printf '%s\n' "$report" > "$out/h2load.report"
  python3 - "$name" "$size" "$c0" "$c1" "$t0" "$t1" "$(getconf CLK_TCK)" "$out/h2load.log" "$out/h2load.report" <<'PY'
import json, re, sys
name, size, c0, c1, t0, t1, tck, log, report = sys.argv[1:]
report = open(report).read()
rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", report).group(1))
statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", report)
if statuses and any(int(n) for n in statuses.groups()[1:]):
    sys.exit(f"bench {name} {size}: non-2xx answers: {statuses.group(0)}")
durations = sorted(int(l.split("\t")[2]) for l in open(log) if l.strip())
p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))] / 1000
cores = (int(c1) - int(c0)) / int(tck) / (float(t1) - float(t0))
print(json.dumps({"system": name, "size": size, "rps": rps, "p99_ms": round(p99, 3), "cores": round(cores, 3)}))
PY
}
