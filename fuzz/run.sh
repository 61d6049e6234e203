#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after another, and fails if
# any of them finds a crash, a failed assertion, a timeout or an out-of-memory.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      default: 60 seconds, every target
#
# Works on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it take libFuzzer's nightly flags).
# FUZZ_SANITIZER=none skips AddressSanitizer (about twice the executions; the parsers are safe
# Rust, so ASan only watches their dependencies). Needs `cargo install cargo-fuzz --locked`.
# New corpus entries go to fuzz/corpus/<target> (not committed), findings to
# fuzz/artifacts/<target>, logs to fuzz/logs/<target>.log; the seeds in fuzz/seeds/<target> are
# read, never written.
set -euo pipefail

cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
if ! [[ "$secs" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets, so the timed runs measure fuzzing only.
cargo fuzz build --sanitizer "$sanitizer"

mkdir -p logs
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [ -f "dicts/$t.dict" ]; then
        args+=(-dict="dicts/$t.dict")
    fi
    echo "== $t: ${secs}s"
    if cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" \
        >"logs/$t.log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    # libFuzzer's final stats: executions, and the coverage line ("#N DONE cov: ... ft: ...").
    execs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | tail -1 | awk '{print $2}')"
    done_line="$(grep -E "^#[0-9]+[[:space:]]+DONE" "logs/$t.log" | tail -1 | tr -s "\t " " " || true)"
    summary+=("$t: $status, ${execs:-?} execs; ${done_line:-no DONE line (see logs/$t.log)}")
    echo "   $status"
done

echo
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/, logs in fuzz/logs/)" >&2
    exit 1
fi
