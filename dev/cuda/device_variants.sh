#!/usr/bin/env bash
# Times compile-time variants of the bf16 forward at the anchor shapes: each variant rebuilds
# scan_fwd_bf16.cu and the dispatcher (scan_fwd.cu) with its -D flags (knobs an experimental kernel reads, as v6 in dev/notes/scan.md did)
# and relinks the benchmark against device_run.sh's other objects (run that first, in the same call).
#   usage: [BENCH_ARGS=fwdsweep] dev/cuda/device_variants.sh "NAME:-DFLAG=1 -DOTHER=2" ...
set -uo pipefail
OUT=${OUT:-/tmp/out}; B=/tmp/mb
NVCC="nvcc -std=c++20 -O3 --use_fast_math -lineinfo -arch=sm_90 -I src"
OBJS=$(for f in src/ops/cuda/*.cu; do n=$(basename $f .cu); [ $n != scan_fwd_bf16 ] && [ $n != scan_fwd ] && echo $B/$n.o; done)
for v in "$@"; do
  name=${v%%:*}; flags=${v#*:}
  ( $NVCC $flags -c src/ops/cuda/scan_fwd_bf16.cu -o $B/v_$name.o && $NVCC $flags -c src/ops/cuda/scan_fwd.cu -o $B/vd_$name.o &&
    nvcc -arch=sm_90 -o $B/bench_$name $B/cuda_scan_bench.o $B/v_$name.o $B/vd_$name.o $OBJS ) &
done
wait
for v in "$@"; do
  name=${v%%:*}
  echo "== $name: ${v#*:}"
  timeout 120 $B/bench_$name ${BENCH_ARGS:-} | grep -E "^[0-9]+,|kC="
done 2>&1 | tee $OUT/variants.txt
