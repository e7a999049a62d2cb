#!/usr/bin/env bash
# Two builds of s3warden side by side: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]   (default 4)
#
# Cache hits over TLS 1.3, HTTP/2 with h2load and HTTP/1.1 with wrk (as `bench/run.sh tls`
# runs them), against one embedded S3; both daemons are pinned to CPU 0 and the load to CPU 1,
# and each round runs them back to back, starting with the other one each time. Prints one JSON
# line per run, then per protocol and size the new build's req/s and CPU per request as ratios
# to the old one's, paired within each round. SIZES="1k 64k" and PROTOS="h2 h1" choose the cases.
#
# To compare a commit with the work tree: build it in a worktree (`git worktree add /tmp/old
# COMMIT && (cd /tmp/old && cargo build --release)`), then
#   bench/ab.sh /tmp/old/target/release/s3warden target/release/s3warden
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
old_bin=$(realpath "${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]}")
new_bin=$(realpath "${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]}")
rounds=${3:-4}
sizes=${SIZES:-1k 64k}
protos=${PROTOS:-h2 h1}
ensure_tools
cargo build --locked --profile no-lto --quiet --example s3_server --example tokens
trap cleanup_processes EXIT
work=$(mktemp -d)
out=$work # bench_h2load keeps its logs here
data="$work/s3/$BENCH_BUCKET"
mkdir -p "$data/bench" "$work/tls" "$work/old" "$work/new"
declare -A bytes=([1k]=1024 [64k]=65536 [1m]=1048576)
for size in $sizes; do
  head -c "${bytes[$size]}" /dev/urandom > "$data/bench/obj-$size.bin"
done
tls_setup "$work/tls"
start_s3 "$work/s3" 19400
write_config "$work/old" 19400 19410 19411 "$TLS_TOML"
write_config "$work/new" 19400 19412 19413 "$TLS_TOML"
sed -i 's|public_url = "http://|public_url = "https://|' "$work"/{old,new}/s3warden.toml
S3WARDEN_BIN=$old_bin start_s3warden "$work/old/s3warden.toml" 19410 0 https
old=$S3WARDEN_PID
S3WARDEN_BIN=$new_bin start_s3warden "$work/new/s3warden.toml" 19412 0 https
new=$S3WARDEN_PID
mapfile -t tok < <(./target/no-lto/examples/tokens bench-hmac-secret-0123456789abcdef0123)
auth="Authorization: Bearer ${tok[0]}"
for size in $sizes; do
  path="/files/bench/obj-$size.bin"
  for port in 19410 19412; do
    curl -fksS -o /dev/null -H "$auth" "https://127.0.0.1:$port$path"
  done
  cases=("old|$old|https://127.0.0.1:19410$path|$auth" "new|$new|https://127.0.0.1:19412$path|$auth")
  for proto in $protos; do
    run_case=bench_case
    [[ $proto == h2 ]] && run_case=bench_h2_case
    for c in "${cases[@]}"; do
      WRK_SECONDS=2 $run_case "$c" "$size" >/dev/null
    done
    for run in $(seq 0 $((rounds - 1))); do
      for i in 0 1; do
        $run_case "${cases[$(((i + run) % 2))]}" "$size" |
          sed "s/^{/{\"proto\": \"$proto\", \"round\": $run, /"
      done
    done
  done
done | tee "$work/runs.jsonl"
python3 - "$work/runs.jsonl" <<'PY'
import json, statistics, sys
from collections import defaultdict
rounds = defaultdict(dict)
for line in open(sys.argv[1]):
    r = json.loads(line)
    rounds[(r["proto"], r["size"], r["round"])][r["system"]] = r
ratios = defaultdict(lambda: ([], []))
for (proto, size, _), pair in sorted(rounds.items()):
    old, new = pair["old"], pair["new"]
    ratios[(proto, size)][0].append(new["rps"] / old["rps"])
    ratios[(proto, size)][1].append((new["cores"] / new["rps"]) / (old["cores"] / old["rps"]))
for (proto, size), (rps, cpu) in ratios.items():
    show = lambda xs: ", ".join(f"{x:.3f}" for x in xs)
    print(f"{proto} {size}: new/old req/s {show(rps)} (median {statistics.median(rps):.3f}); "
          f"CPU per request {show(cpu)} (median {statistics.median(cpu):.3f})")
PY
