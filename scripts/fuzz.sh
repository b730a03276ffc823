#!/usr/bin/env bash
# Runs one libFuzzer target over its committed seed corpus, then fuzzes it for SECONDS:
#   scripts/fuzz.sh build-fuzz/fuzz_npy tests/fuzz/corpus/npy 30 [more libFuzzer flags]
# New inputs go to a scratch folder beside the binary (fuzz-out/NAME), never into the committed
# corpus; a crash leaves its input there too (crash-*), and the exit status is non-zero.
set -euo pipefail
target=$1 corpus=$2 seconds=$3
shift 3
name=$(basename "$target")
out=$(dirname "$target")/fuzz-out/$name
mkdir -p "$out"
# -timeout: one input taking 10 s is a hang; -rss_limit_mb: libFuzzer's default, named; the
# targets themselves refuse work above 256 MB (tests/fuzz/fuzz_util.h).
exec "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$out/" "$@" "$out" "$corpus"
