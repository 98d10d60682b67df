#!/usr/bin/env bash
# Builds the fuzz crate in the current directory and runs each TARGET (default: every one of ALL_TARGETS) for
# SECONDS (default 600) from corpus/TARGET with a 256 MB RSS limit, printing libFuzzer's final statistics and any
# finding (written to artifacts/). Used by models/fuzz/run.sh and runtime/fuzz/run.sh after they seed the corpora.
#
# usage: run_targets.sh "ALL_TARGETS" [SECONDS] [TARGET ...]
set -euo pipefail
read -ra all_targets <<< "$1"
seconds="${2:-600}"
shift 2 || shift $#
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
# libFuzzer's instrumentation needs unstable compiler flags; RUSTC_BOOTSTRAP allows them on a stable toolchain.
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
for target in "${targets[@]}"; do
    echo "== $target: $seconds s"
    # Larger than any seed (each under 100 KB).
    max_len=$((1 << 20))
    cargo fuzz run -s none "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=256 \
        -max_len="$max_len" -timeout=30 -print_final_stats=1 2>&1 |
        grep -E '^(stat::|==[0-9]+== ERROR|SUMMARY|Done|artifact_prefix|Test unit written)' || true
done
