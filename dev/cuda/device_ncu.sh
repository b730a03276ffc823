#!/usr/bin/env bash
# Build as device_run.sh does (tests skipped), then profile one launch of a kernel (default: the
# forward) at one shape (default: the first anchor).  usage: dev/cuda/device_ncu.sh ["B D L N"] [kernel-regex]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=/tmp/mb_ncu; rm -rf $B; mkdir -p $B
NVCC="nvcc -std=c++20 -O3 --use_fast_math -lineinfo -arch=sm_90 -I src"
for f in src/ops/cuda/*.cu bench/cuda_scan_bench.cu; do $NVCC -c $f -o $B/$(basename $f .cu).o & done; wait
nvcc -arch=sm_90 -o $B/bench $B/*.o
SHAPE=${1:-"8 1536 2048 16"}; KERNEL=${2:-scan_fwd_kernel}
ncu --kernel-name regex:$KERNEL --launch-skip 2 --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section ComputeWorkloadAnalysis --section InstructionStats --section LaunchStats --section SourceCounters \
  $B/bench one $SHAPE > $OUT/ncu.txt 2>&1
grep -vE "^\s*$|----" $OUT/ncu.txt | grep -vE "^==PROF==" | cut -c1-150 | tail -120
