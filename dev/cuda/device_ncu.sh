#!/usr/bin/env bash
# Profile one launch of a kernel (default: the forward) at one shape (default: the first anchor) with
# Nsight Compute. Reuses the benchmark device_run.sh built (in /tmp/mb) when there is one.
#   usage: dev/cuda/device_ncu.sh ["B D L N"] [kernel-regex] [output name] [launches]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SHAPE=${1:-"8 1536 2048 16"}; KERNEL=${2:-scan_fwd_kernel}; NAME=${3:-ncu}; COUNT=${4:-1}
BENCH=/tmp/mb/cuda_scan_bench
if [ ! -x $BENCH ]; then
  B=/tmp/mb_ncu; rm -rf $B; mkdir -p $B
  NVCC="nvcc -std=c++20 -O3 --use_fast_math -lineinfo -arch=sm_90 -I src"
  for f in src/ops/cuda/*.cu bench/cuda_scan_bench.cu; do $NVCC -c $f -o $B/$(basename $f .cu).o & done; wait
  nvcc -arch=sm_90 -o $B/bench $B/*.o
  BENCH=$B/bench
fi
ncu --clock-control none --print-details all --kernel-name regex:$KERNEL --launch-skip 2 --launch-count $COUNT \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section ComputeWorkloadAnalysis --section InstructionStats --section LaunchStats --section SourceCounters \
  $BENCH one $SHAPE > $OUT/$NAME.txt 2>&1
grep -vE "^\s*$|----" $OUT/$NAME.txt | grep -vE "^==PROF==" | cut -c1-150 | grep -E "Duration|Issued|Eligible|Active Warps|Executed Ipc|Stall|Registers|Theoretical Occ|Achieved Occ|Warp Cycles|Pipe" | head -40
