#!/usr/bin/env bash
# The chaos soak: bench/soak.sh [DURATION] [--keep DIR]   (default 10m; e.g. 2m, 90s, 1h)
#
# Two s3warden daemons (HTTP/1.1 plain, HTTP/2 over TLS) against the embedded S3 behind a
# fault-injecting proxy, with many clients, faults, reloads, secret rotations and purges all
# the time; every answer is checked (bench/soak/main.rs says what). Prints a summary and exits
# non-zero on any violation. --keep DIR keeps the daemons' logs and configs.
#
# The daemon is the release build, the binary users run; SOAK_PROFILE=dev soaks the debug build
# (overflow checks and debug assertions on).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10m}
shift || true
profile=${SOAK_PROFILE:-release}
cargo build --locked --profile "$profile" --quiet --bin s3warden --example soak
dir=target/$([[ $profile == dev ]] && echo debug || echo "$profile")
exec "$dir/examples/soak" --bin "$dir/s3warden" --duration "$duration" "$@"
