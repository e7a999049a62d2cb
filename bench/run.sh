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
trap 'rm -rf "$out"' EXIT

cargo build --release --quiet --examples --bins

if want sign; then
  echo "== signing: 1,000-key POST /_sign batches" >&2
  ./target/release/examples/sign_batch 300 > "$out/sign.jsonl"
fi

python3 bench/report.py "$out" "${sections[@]}" > bench/RESULTS.md.new
mv bench/RESULTS.md.new bench/RESULTS.md
echo "wrote bench/RESULTS.md" >&2
