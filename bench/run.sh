#!/usr/bin/env bash
# Benchmarks, regenerating bench/RESULTS.md. Every figure is compared with a baseline measured
# in the same run, because these machines are shared and noisy.
#
#   bench/run.sh            # everything
#   bench/run.sh sign       # only the signing section
set -euo pipefail
cd "$(dirname "$0")/.."

sections=("${@:-all}")
want() { [[ " ${sections[*]} " == *" all "* || " ${sections[*]} " == *" $1 "* ]]; }

out=$(mktemp -d)
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap 'cleanup_processes; rm -rf "$out"' EXIT

cargo build --release --quiet --examples --bins

if want sign; then
  echo "== signing: 1,000-key POST /_sign batches" >&2
  ./target/release/examples/sign_batch 300 > "$out/sign.jsonl"
fi

if want upload; then
  echo "== upload: 256 MiB through s3warden vs a pre-signed PUT straight to S3" >&2
  work=$(mktemp -d -p "$out")
  start_s3 "$work/s3" 19100
  write_config "$work" 19100 19101 19102 $'[upload]\nmax_size = "1GiB"'
  start_s3warden "$work/s3warden.toml" 19101
  token=$(s3warden_cmd token --config "$work/s3warden.toml" --sub bench --ttl 1h)
  head -c $((256 * 1024 * 1024)) /dev/urandom > "$work/object.bin"
  sleep 0.5
  rss_before=$(kib "$S3WARDEN_PID" VmRSS)
  for run in 1 2 3; do
    direct=$(s3warden_cmd sign --config "$work/s3warden.toml" --kind s3 --method PUT "files/bench/direct-$run.bin")
    t_direct=$(curl -fsS -o /dev/null -w '%{time_total}' -T "$work/object.bin" "$direct")
    t_proxy=$(curl -fsS -o /dev/null -w '%{time_total}' -T "$work/object.bin" \
      -H "Authorization: Bearer $token" "http://127.0.0.1:19101/files/bench/proxied-$run.bin")
    cmp -s "$work/object.bin" "$work/s3/$BENCH_BUCKET/bench/proxied-$run.bin" || { echo "upload $run differs" >&2; exit 1; }
    echo "{\"run\": $run, \"direct_s\": $t_direct, \"proxy_s\": $t_proxy}" >> "$out/upload.jsonl"
    rm -f "$work/s3/$BENCH_BUCKET/bench/"*.bin
  done
  hwm=$(kib "$S3WARDEN_PID" VmHWM)
  echo "{\"rss_before_kib\": $rss_before, \"peak_rss_kib\": $hwm, \"bytes\": $((256 * 1024 * 1024))}" > "$out/upload_rss.json"
  cleanup_processes
fi

python3 bench/report.py "$out" "${sections[@]}" > bench/RESULTS.md.new
mv bench/RESULTS.md.new bench/RESULTS.md
echo "wrote bench/RESULTS.md" >&2
