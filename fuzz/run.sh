#!/usr/bin/env bash
# Fuzzes s3warden with AFL++: fuzz/run.sh [TARGET|all] [SECONDS] (default: all, 600 s each).
#
# Builds the targets (cargo afl build --release), runs each for SECONDS from fuzz/seeds/TARGET
# (a later run resumes from fuzz/out/TARGET: delete it to start from the seeds again, as after
# adding one), then lists the crashes found and copies each into fuzz/regressions/TARGET, where
# `cargo test --lib fuzzing` replays it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
which="${1:-all}"
seconds="${2:-600}"
targets=()
for bin in src/bin/*.rs; do
    name="$(basename "$bin" .rs)"
    if [[ "$which" == all || "$which" == "$name" ]]; then
        targets+=("$name")
    fi
done
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "no target $which; the targets are: $(basename -s .rs src/bin/*.rs | tr '\n' ' ')" >&2
    exit 2
fi

# cargo-afl and the AFL++ runtime it builds for this rustc, on a fresh machine.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-afl >/dev/null; then
    cargo install cargo-afl --locked --version 0.18.2
fi
if ! built="$(cargo afl config --build 2>&1)"; then
    # Asked again, it refuses: "already built" is the answer wanted.
    if ! grep -q "already built" <<<"$built"; then
        echo "$built" >&2
        exit 1
    fi
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
cargo afl build --release

# No CPU frequency governor to check in a VM or container; crashes are found by the fuzzer's
# own fork server, so a core_pattern that pipes cores elsewhere does not matter; share the
# cores with whatever else runs; plain log lines instead of the screen UI.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_TRY_AFFINITY=1 AFL_NO_UI=1
# A second run continues from the first one's queue.
export AFL_AUTORESUME=1

for target in "${targets[@]}"; do
    echo "== $target: $seconds s"
    mkdir -p "out/$target"
    cargo afl fuzz -i "seeds/$target" -o "out/$target" -V "$seconds" \
        "$CARGO_TARGET_DIR/release/$target" >"out/$target/fuzz.log" 2>&1 ||
        { tail -20 "out/$target/fuzz.log" >&2; exit 1; }
done

echo
echo "target               execs/s   corpus  crashes  hangs"
# One value of a fuzzer_stats file.
stat_of() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1"; }
found=0
for target in "${targets[@]}"; do
    stats="out/$target/default/fuzzer_stats"
    printf '%-20s %8s %8s %8s %6s\n' "$target" "$(stat_of "$stats" execs_per_sec)" \
        "$(stat_of "$stats" corpus_count)" "$(stat_of "$stats" saved_crashes)" \
        "$(stat_of "$stats" saved_hangs)"
    for crash in "out/$target"/default/crashes/id:*; do
        [[ -e "$crash" ]] || continue
        kept="regressions/$target/crash-$(sha256sum "$crash" | cut -c1-16)"
        cp "$crash" "$kept"
        echo "  crash: $kept"
        found=$((found + 1))
    done
done
if [[ $found -gt 0 ]]; then
    cat <<EOF

$found crash input(s) copied into fuzz/regressions/. Each now fails \`cargo test --lib fuzzing\`
until it is understood: reproduce one with
    $CARGO_TARGET_DIR/release/TARGET < fuzz/regressions/TARGET/crash-…
(or the test's panic message), then fix s3warden if it is a bug, or the property in
src/fuzzing.rs if the property was wrong. Keep the file either way: it replays in every test
run from then on.
EOF
fi
