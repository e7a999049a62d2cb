#!/usr/bin/env bash
# Benchmarks, regenerating bench/RESULTS.md. Every figure is compared with a baseline measured
# in the same run, because these machines are shared and noisy.
#
#   bench/run.sh                      # everything (about 30 minutes)
#   bench/run.sh throughput misses    # some sections: build throughput tls misses cost memory sign upload
#
# Installs wrk, nginx, libnginx-mod-http-js, nghttp2-client (h2load) and openssl from apt when
# they are missing (needs root).
# Servers run pinned to CPU 0 (taskset), wrk to CPU 1; each hit case runs five times, and the
# median is reported.
set -euo pipefail
cd "$(dirname "$0")/.."

sections=("${@:-all}")
want() { [[ " ${sections[*]} " == *" all "* || " ${sections[*]} " == *" $1 "* ]]; }

out=$(mktemp -d)
date -u '+%Y-%m-%d %H:%M UTC' > "$out/started"
git rev-parse --short HEAD > "$out/commit"
# shellcheck source=bench/lib.sh
source bench/lib.sh
# BENCH_KEEP=DIR keeps the raw figures there (python3 bench/report.py DIR renders them again).
trap 'cleanup_processes; [[ -n "${BENCH_KEEP:-}" ]] && cp -r "$out" "$BENCH_KEEP"; rm -rf "$out"' EXIT

# What is measured (s3warden, the bare-hyper ceiling, the batch signer) is built as users build
# it, `--release` (fat LTO); the helpers (embedded S3, clients, token minting) with the default
# release settings (`--profile no-lto`), and s3warden too: the throughput section compares
# the two builds.
cargo build --profile no-lto --quiet --examples --bin s3warden
cargo build --release --quiet --bin s3warden --example ceiling --example sign_batch
RUNS=${RUNS:-5}
RUNS_TLS=${RUNS_TLS:-3}

if want sign; then
  echo "== signing: 1,000-key POST /_sign batches" >&2
  ./target/release/examples/sign_batch 300 > "$out/sign.jsonl"
fi

if want throughput || want misses || want memory; then
  ensure_tools
fi

if want throughput; then
  echo "== throughput: cache hits vs the ceiling, nginx static, nginx proxy_cache and an nginx S3 gateway" >&2
  work=$(mktemp -d -p "$out")
  data="$work/s3/$BENCH_BUCKET"
  mkdir -p "$data/bench"
  declare -A bytes=([1k]=1024 [64k]=65536 [1m]=1048576)
  for size in 1k 64k 1m; do
    head -c "${bytes[$size]}" /dev/urandom > "$data/bench/obj-$size.bin"
  done
  start_s3 "$work/s3" 19300
  ./target/no-lto/examples/s3_server "$work/s3" 127.0.0.1:19301 "$BENCH_BUCKET" anonymous >/dev/null &
  PIDS+=($!)
  write_config "$work" 19300 19310 19311
  start_s3warden "$work/s3warden.toml" 19310 0
  s3w=$S3WARDEN_PID
  # The same daemon without fat LTO (the default release settings).
  mkdir -p "$work/no-lto"
  write_config "$work/no-lto" 19300 19312 19313
  S3WARDEN_BIN=./target/no-lto/s3warden start_s3warden "$work/no-lto/s3warden.toml" 19312 0
  s3w_release=$S3WARDEN_PID
  mapfile -t tok < <(./target/no-lto/examples/tokens bench-hmac-secret-0123456789abcdef0123)
  nginx_conf bench/nginx/static.conf "$work/static.conf" "$work" 19320 "$data" 0
  nginx_conf bench/nginx/proxy_cache.conf "$work/cache.conf" "$work" 19321 "$data" 19301
  nginx_conf bench/nginx/s3_gateway.conf "$work/gateway.conf" "$work" 19322 "$data" 19300
  taskset -c 0 nginx -c "$work/static.conf" -p "$work" & PIDS+=($!); static_pid=$!
  # A second, identical nginx static: how far two equal servers differ in one run.
  mkdir -p "$work/control"
  nginx_conf bench/nginx/static.conf "$work/control/static.conf" "$work/control" 19323 "$data" 0
  taskset -c 0 nginx -c "$work/control/static.conf" -p "$work/control" & PIDS+=($!); control_pid=$!
  taskset -c 0 nginx -c "$work/cache.conf" -p "$work" & PIDS+=($!); cache_master=$!
  AWS_ACCESS_KEY_ID=$BENCH_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BENCH_SECRET_KEY \
    taskset -c 0 nginx -c "$work/gateway.conf" -p "$work" & PIDS+=($!); gateway_master=$!
  wait_for_url "http://127.0.0.1:19320/files/bench/obj-1k.bin"
  sleep 0.5
  cache_pid=$(pgrep -P "$cache_master" | head -1)
  gateway_pid=$(pgrep -P "$gateway_master" | head -1)
  static_worker=$(pgrep -P "$static_pid" | head -1)
  control_worker=$(pgrep -P "$control_pid" | head -1)
  for size in 1k 64k 1m; do
    path="/files/bench/obj-$size.bin"
    # Warm the caches.
    for port in 19310 19312 19321 19321 19322 19322; do
      curl -fsS -o /dev/null -H "Authorization: Bearer ${tok[0]}" "http://127.0.0.1:$port$path"
    done
    signed=$(s3warden_cmd sign --config "$work/s3warden.toml" "files/bench/obj-$size.bin")
    taskset -c 0 ./target/release/examples/ceiling 127.0.0.1:19330 "${bytes[$size]}" >/dev/null &
    ceiling=$!
    wait_for_url "http://127.0.0.1:19330/"
    cases=(
      "ceiling|$ceiling|http://127.0.0.1:19330$path|"
      "nginx_static|$static_worker|http://127.0.0.1:19320$path|"
      "nginx_static_control|$control_worker|http://127.0.0.1:19323$path|"
      "nginx_proxy_cache_njs|$cache_pid|http://127.0.0.1:19321$path|Authorization: Bearer ${tok[0]}"
      "nginx_s3_gateway_njs|$gateway_pid|http://127.0.0.1:19322$path|Authorization: Bearer ${tok[0]}"
      "s3warden_hs256|$s3w|http://127.0.0.1:19310$path|Authorization: Bearer ${tok[0]}"
      "s3warden_rs256|$s3w|http://127.0.0.1:19310$path|Authorization: Bearer ${tok[1]}"
      "s3warden_es256|$s3w|http://127.0.0.1:19310$path|Authorization: Bearer ${tok[2]}"
      "s3warden_signed_url|$s3w|$signed|"
      "s3warden_release|$s3w_release|http://127.0.0.1:19312$path|Authorization: Bearer ${tok[0]}"
    )
    # A short unrecorded run of each first: 64 fresh connections, and the machine settled.
    for c in "${cases[@]}"; do
      WRK_SECONDS=2 bench_case "$c" "$size" >/dev/null
    done
    # Each run starts one case later, so no system always follows the same one (the machine's
    # speed drifts); the report takes the median per system.
    for run in $(seq 0 $((RUNS - 1))); do
      for i in $(seq 0 $((${#cases[@]} - 1))); do
        bench_case "${cases[$(( (i + run) % ${#cases[@]} ))]}" "$size"
      done
    done >> "$out/throughput.jsonl"
    if [[ $size == 1m ]]; then
      # The same offered load for each (wrk above drives every server as fast as it goes, so
      # their req/s differ): where the machine's CPU goes per 1 MiB answer.
      fixed=("${cases[0]}" "${cases[1]}" "${cases[5]}") # the ceiling, nginx static, s3warden HS256
      for run in $(seq 0 $((RUNS - 1))); do
        for i in $(seq 0 $((${#fixed[@]} - 1))); do
          bench_fixed_case "${fixed[$(( (i + run) % ${#fixed[@]} ))]}" "$size"
        done
      done >> "$out/fixed.jsonl"
    fi
    kill "$ceiling"; wait "$ceiling" 2>/dev/null || true
  done
  cleanup_processes
fi

if want tls; then
  echo "== tls: hits over TLS 1.3, HTTP/1.1 (wrk) and HTTP/2 (h2load), vs nginx static and the ceiling" >&2
  ensure_tools
  work=$(mktemp -d -p "$out")
  data="$work/s3/$BENCH_BUCKET"
  mkdir -p "$data/bench" "$work/tls"
  declare -A bytes=([1k]=1024 [64k]=65536 [1m]=1048576)
  for size in 1k 64k 1m; do
    head -c "${bytes[$size]}" /dev/urandom > "$data/bench/obj-$size.bin"
  done
  # One ECDSA P-256 certificate for all three servers.
  tls_setup "$work/tls"
  start_s3 "$work/s3" 19700
  write_config "$work" 19700 19710 19711 "$TLS_TOML"
  sed -i 's|public_url = "http://|public_url = "https://|' "$work/s3warden.toml"
  start_s3warden "$work/s3warden.toml" 19710 0 https
  s3w=$S3WARDEN_PID
  mapfile -t tok < <(./target/no-lto/examples/tokens bench-hmac-secret-0123456789abcdef0123)
  nginx_conf bench/nginx/static_tls.conf "$work/static_tls.conf" "$work" 19720 "$data" 0
  taskset -c 0 nginx -c "$work/static_tls.conf" -p "$work" & PIDS+=($!); tls_master=$!
  wait_for_url "https://127.0.0.1:19720/files/bench/obj-1k.bin"
  tls_worker=$(pgrep -P "$tls_master" | head -1)
  for size in 1k 64k 1m; do
    path="/files/bench/obj-$size.bin"
    curl -fksS -o /dev/null -H "Authorization: Bearer ${tok[0]}" "https://127.0.0.1:19710$path"
    taskset -c 0 ./target/release/examples/ceiling 127.0.0.1:19730 "${bytes[$size]}" \
      "$work/tls/cert.pem" "$work/tls/key.pem" >/dev/null &
    ceiling=$!
    wait_for_url "https://127.0.0.1:19730/"
    cases=(
      "ceiling|$ceiling|https://127.0.0.1:19730$path|"
      "nginx_static|$tls_worker|https://127.0.0.1:19720$path|"
      "s3warden_hs256|$s3w|https://127.0.0.1:19710$path|Authorization: Bearer ${tok[0]}"
    )
    for proto in h1 h2; do
      run_case=bench_case
      [[ $proto == h2 ]] && run_case=bench_h2_case
      for c in "${cases[@]}"; do
        WRK_SECONDS=2 $run_case "$c" "$size" >/dev/null
      done
      for run in $(seq 0 $((RUNS_TLS - 1))); do
        for i in $(seq 0 $((${#cases[@]} - 1))); do
          $run_case "${cases[$(( (i + run) % ${#cases[@]} ))]}" "$size"
        done
      done >> "$out/tls_$proto.jsonl"
    done
    kill "$ceiling"; wait "$ceiling" 2>/dev/null || true
  done
  cleanup_processes
fi

if want misses; then
  echo "== misses: a cold key per request, and 1,000 concurrent requests for one cold key" >&2
  work=$(mktemp -d -p "$out")
  data="$work/s3/$BENCH_BUCKET"
  mkdir -p "$data/bench/cold"
  python3 - "$data/bench/cold" <<'PY'
import os, sys
block = os.urandom(1024)
for i in range(120000):
    with open(os.path.join(sys.argv[1], "%05d.bin" % i), "wb") as f:
        f.write(block)
PY
  head -c 65536 /dev/urandom > "$data/bench/one-cold.bin"
  start_s3 "$work/s3" 19400
  ./target/no-lto/examples/s3_server "$work/s3" 127.0.0.1:19401 "$BENCH_BUCKET" anonymous >/dev/null &
  PIDS+=($!)
  s3_anon=$!
  write_config "$work" 19400 19410 19411
  start_s3warden "$work/s3warden.toml" 19410 0
  mapfile -t tok < <(./target/no-lto/examples/tokens bench-hmac-secret-0123456789abcdef0123)
  # Each run reads its own range of 40,000 keys (more than a run reaches), so every s3warden
  # request is a miss (checked from its metrics afterwards). The baseline is the same requests
  # straight to the S3.
  for run in 1 2 3; do
    export COLD_KEYS=120000 COLD_START=$(( (run - 1) * 40000 )) WRK_SCRIPT=bench/wrk_cold.lua WRK_SECONDS=2
    COLD_PREFIX="/$BENCH_BUCKET/bench/cold/" \
      bench_wrk s3_direct_unsigned 1k "$s3_anon" "http://127.0.0.1:19401/" >> "$out/misses.jsonl"
    COLD_PREFIX="/files/bench/cold/" \
      bench_wrk s3warden_miss 1k "$S3WARDEN_PID" "http://127.0.0.1:19410/" "Authorization: Bearer ${tok[0]}" >> "$out/misses.jsonl"
  done
  unset COLD_KEYS COLD_START WRK_SCRIPT WRK_SECONDS
  curl -fsS http://127.0.0.1:19411/metrics | awk '$1 ~ /^s3warden_cache_(hits|misses)_total$/ { print $1, $2 }' > "$out/misses_counts.txt"
  ./target/no-lto/examples/coalesce "http://127.0.0.1:19410/files/bench/one-cold.bin" "${tok[0]}" \
    http://127.0.0.1:19411 > "$out/coalesce.json"
  cleanup_processes
fi

if want memory; then
  echo "== memory: a working set of 3x the cache capacity, and a 1 GiB stream" >&2
  work=$(mktemp -d -p "$out")
  data="$work/s3/$BENCH_BUCKET"
  mkdir -p "$data/bench/ws"
  for i in $(seq 0 191); do head -c 1048576 /dev/urandom > "$data/bench/ws/$i.bin"; done
  head -c $((1024 * 1024 * 1024)) /dev/zero > "$data/bench/huge.bin"
  start_s3 "$work/s3" 19500
  write_config "$work" 19500 19510 19511 $'[cache]\ncapacity = "64MiB"\nmax_object_size = "1MiB"'
  start_s3warden "$work/s3warden.toml" 19510
  token=$(s3warden_cmd token --config "$work/s3warden.toml" --sub bench --ttl 1h)
  sleep 0.3
  before=$(held_kib "$S3WARDEN_PID")
  # Sampled after every request: RSS plus memory files has no kernel-kept peak.
  ws_peak=0
  for round in 1 2; do
    for i in $(seq 0 191); do
      curl -fsS -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:19510/files/bench/ws/$i.bin"
      held=$(held_kib "$S3WARDEN_PID")
      ((held > ws_peak)) && ws_peak=$held
    done
  done
  hwm=$(kib "$S3WARDEN_PID" VmHWM)
  ((hwm > ws_peak)) && ws_peak=$hwm
  cached=$(curl -fsS http://127.0.0.1:19511/metrics | awk '$1 == "s3warden_cache_bytes" { print $2 }')
  cleanup_processes
  # A fresh process for the stream, so its peak is the stream's alone.
  start_s3 "$work/s3" 19500
  start_s3warden "$work/s3warden.toml" 19510
  sleep 0.3
  stream_before=$(kib "$S3WARDEN_PID" VmRSS)
  t=$(curl -fsS -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $token" "http://127.0.0.1:19510/files/bench/huge.bin")
  stream_peak=$(kib "$S3WARDEN_PID" VmHWM)
  printf '{"capacity_kib": %d, "ws_before_kib": %d, "ws_peak_kib": %d, "cached_bytes": %d, "stream_before_kib": %d, "stream_peak_kib": %d, "stream_s": %s}\n' \
    65536 "$before" "$ws_peak" "$cached" "$stream_before" "$stream_peak" "$t" > "$out/memory.json"
  cleanup_processes
fi

if want upload; then
  echo "== upload: 256 MiB through s3warden vs a pre-signed PUT straight to S3" >&2
  # S3 stands for a service on other machines: it gets CPU 1 to itself, and curl and
  # s3warden share CPU 0, so s3warden's work competes with the client's and not with S3's.
  work=$(mktemp -d -p "$out")
  start_s3 "$work/s3" 19100 1
  s3_pid=${PIDS[-1]}
  write_config "$work" 19100 19101 19102 $'[upload]\nmax_size = "1GiB"'
  start_s3warden "$work/s3warden.toml" 19101 0
  token=$(s3warden_cmd token --config "$work/s3warden.toml" --sub bench --ttl 1h)
  head -c $((256 * 1024 * 1024)) /dev/urandom > "$work/object.bin"
  sleep 0.5
  rss_before=$(kib "$S3WARDEN_PID" VmRSS)
  for run in 1 2 3 4 5; do
    # The pre-signed PUT fixes the type and ACL as signed headers: the upload sends them.
    direct=$(s3warden_cmd sign --config "$work/s3warden.toml" --kind s3 --method PUT \
      --content-type application/octet-stream --acl private "files/bench/direct-$run.bin")
    s3_0=$(cpu_ticks "$s3_pid")
    t_direct=$(taskset -c 0 curl -fsS -o /dev/null -w '%{time_total}' -T "$work/object.bin" \
      -H 'Content-Type: application/octet-stream' -H 'x-amz-acl: private' "$direct")
    s3_1=$(cpu_ticks "$s3_pid"); w_1=$(cpu_ticks "$S3WARDEN_PID")
    t_proxy=$(taskset -c 0 curl -fsS -o /dev/null -w '%{time_total}' -T "$work/object.bin" \
      -H "Authorization: Bearer $token" "http://127.0.0.1:19101/files/bench/proxied-$run.bin")
    s3_2=$(cpu_ticks "$s3_pid"); w_2=$(cpu_ticks "$S3WARDEN_PID")
    cmp -s "$work/object.bin" "$work/s3/$BENCH_BUCKET/bench/proxied-$run.bin" || { echo "upload $run differs" >&2; exit 1; }
    printf '{"run": %d, "direct_s": %s, "proxy_s": %s, "s3_direct_ticks": %d, "s3_proxy_ticks": %d, "s3warden_ticks": %d, "clk_tck": %d}\n' \
      "$run" "$t_direct" "$t_proxy" $((s3_1 - s3_0)) $((s3_2 - s3_1)) $((w_2 - w_1)) "$(getconf CLK_TCK)" >> "$out/upload.jsonl"
    rm -f "$work/s3/$BENCH_BUCKET/bench/"*.bin
  done
  hwm=$(kib "$S3WARDEN_PID" VmHWM)
  echo "{\"rss_before_kib\": $rss_before, \"peak_rss_kib\": $hwm, \"bytes\": $((256 * 1024 * 1024))}" > "$out/upload_rss.json"
  cleanup_processes
fi

if want cost; then
  echo "== cost: one Zipf trace with a scan, s3warden vs nginx proxy_cache vs an exact LRU, 64 MiB each" >&2
  ensure_tools
  work=$(mktemp -d -p "$out")
  data="$work/s3/$BENCH_BUCKET"
  mkdir -p "$data"
  capacity=$((64 * 1024 * 1024))
  python3 bench/trace.py make "$data" "$work/trace.txt" "$capacity" > "$out/cost_trace.json"
  # Two S3 processes on the same data, each counting the body bytes its GETs sent: a signed
  # one for s3warden, an anonymous one for nginx.
  S3_STATS_FILE="$work/s3warden.s3bytes" start_s3 "$work/s3" 19600
  S3_STATS_FILE="$work/nginx.s3bytes" ./target/no-lto/examples/s3_server "$work/s3" 127.0.0.1:19601 "$BENCH_BUCKET" anonymous >/dev/null &
  PIDS+=($!)
  write_config "$work" 19600 19610 19611 $'[cache]\ncapacity = "64MiB"\nmax_object_size = "1MiB"\nttl = "1h"'
  start_s3warden "$work/s3warden.toml" 19610
  nginx_conf bench/nginx/trace_cache.conf "$work/trace.conf" "$work" 19620 "$data" 19601
  sed -i "s|@CAPACITY@|$capacity|" "$work/trace.conf"
  nginx -c "$work/trace.conf" -p "$work" & PIDS+=($!)
  token=$(s3warden_cmd token --config "$work/s3warden.toml" --sub bench --ttl 1h)
  wait_for_port 19601
  wait_for_port 19620
  python3 bench/trace.py replay http://127.0.0.1:19610/files "$work/trace.txt" "$out/cost_s3warden.jsonl" \
    "Authorization: Bearer $token" > "$out/cost_s3warden_time.json"
  # nginx's cache manager trims to max_size after the fact: sample what the cache holds.
  ( while sleep 0.25; do du -sb "$work/nginx-trace-cache" 2>/dev/null | cut -f1; done ) > "$out/cost_nginx_held.txt" &
  sampler=$!
  python3 bench/trace.py replay http://127.0.0.1:19620/files "$work/trace.txt" "$out/cost_nginx.jsonl" > "$out/cost_nginx_time.json"
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  sleep 0.3
  printf '{"s3warden_s3_bytes": %d, "nginx_s3_bytes": %d, "capacity": %d, "s3warden_cache_bytes": %d}\n' \
    "$(<"$work/s3warden.s3bytes")" "$(<"$work/nginx.s3bytes")" "$capacity" \
    "$(curl -fsS http://127.0.0.1:19611/metrics | awk '$1 == "s3warden_cache_bytes" { print $2 }')" > "$out/cost.json"
  python3 bench/trace.py lru "$work/trace.txt" "$capacity" > "$out/cost_lru.json"
  python3 bench/trace.py tinylfu "$work/trace.txt" "$capacity" > "$out/cost_tinylfu.json"
  python3 bench/trace.py lfu "$work/trace.txt" "$capacity" > "$out/cost_lfu.json"
  python3 bench/trace.py oracle "$work/trace.txt" "$capacity" > "$out/cost_oracle.json"
  cleanup_processes
fi

python3 bench/report.py "$out" "${sections[@]}" > bench/RESULTS.md.new
mv bench/RESULTS.md.new bench/RESULTS.md
echo "wrote bench/RESULTS.md" >&2
