#!/usr/bin/env bash
# One device call: build the CUDA kernels, tests and benchmark without the CPU library's system
# packages (the GPU image has no OpenBLAS, gtest, ...), run the tests, compute-sanitizer on small
# cases, and the benchmark. Logs go to $OUT (at most 8 files come back: log.txt, test.txt,
# sanitizer.txt, bench.txt, sass.txt, and ncu_*.txt from device_ncu.sh). Needs
# build-cuda/deps/googletest carried (a copy of Debian's /usr/src/googletest/googletest).
#   usage: dev/cuda/device_run.sh [test-filter] [bench-args] [skip-sanitizers: 1]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
FILTER=${1:-*}; BENCH_ARGS=${2:-}; NO_SAN=${3:-0}
B=/tmp/mb; mkdir -p $B
NVCC="nvcc -std=c++20 -O3 --use_fast_math -lineinfo -arch=sm_90 -I src"
GT=build-cuda/deps/googletest
LOG=$OUT/log.txt
{
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv
  nvcc --version | tail -1
} 2>&1 | tee $LOG
t0=$(date +%s)
(
  g++ -O2 -std=c++20 -march=native -fopenmp -I src -I dev/cuda/stub -c src/ops/cpu/ops.cpp -o $B/ops.o &
  g++ -O2 -std=c++20 -I dev/cuda/stub -c dev/cuda/cblas_stub.cpp -o $B/cblas_stub.o &
  g++ -O2 -I $GT/include -I $GT -c $GT/src/gtest-all.cc -o $B/gtest-all.o &
  g++ -O2 -I $GT/include -I $GT -c $GT/src/gtest_main.cc -o $B/gtest_main.o &
  for f in src/ops/cuda/*.cu; do $NVCC -Xptxas -v -c $f -o $B/$(basename $f .cu).o 2>$B/$(basename $f .cu).ptxas & done
  for f in tests/test_cuda_*.cu; do $NVCC -I $GT/include -c $f -o $B/$(basename $f .cu).o & done
  for f in bench/cuda_*.cu; do $NVCC -c $f -o $B/$(basename $f .cu).o & done
  wait
) > $B/build.txt 2>&1; cat $B/build.txt >> $LOG; grep -E "error" $B/build.txt
CUDA_OBJS=$(for f in src/ops/cuda/*.cu; do echo $B/$(basename $f .cu).o; done)
TESTS=$(for f in tests/test_cuda_*.cu; do basename $f .cu; done)
for n in $TESTS; do nvcc -arch=sm_90 -o $B/$n $B/$n.o $CUDA_OBJS $B/ops.o $B/cblas_stub.o $B/gtest-all.o $B/gtest_main.o -lgomp -lpthread 2>&1 | tee -a $LOG; done
for f in bench/cuda_*.cu; do n=$(basename $f .cu); nvcc -arch=sm_90 -o $B/$n $B/$n.o $CUDA_OBJS 2>&1 | tee -a $LOG; done
for f in $B/*.ptxas; do echo "== $(basename $f)"; grep -E "Compiling entry|registers|spill" $f | paste - - - | sed -E 's/ptxas info\s*://g' | cut -c1-260; done >> $LOG
echo "build: $(( $(date +%s) - t0 )) s" | tee -a $LOG
t0=$(date +%s)
for n in $TESTS; do OMP_NUM_THREADS=16 timeout 180 $B/$n --gtest_filter="$FILTER" 2>&1; done | tee $OUT/test.txt | grep -vE "^\s+B=" | grep -E "FAIL|OK|PASS|Failure|error|rel" | tail -40
awk '/ y rel /{dt=($0 ~ / bf16 /)?"bf16":($0 ~ / f16 /)?"f16":"f32"; for(i=1;i<=NF;i++){if($i=="rel"&&$(i-1)=="y"&&$(i+1)>my[dt])my[dt]=$(i+1); if($i=="rel"&&$(i-1)=="h"&&$(i+1)>mh[dt])mh[dt]=$(i+1)}; n[dt]++} END{for(k in n) printf "%s: %d cases, max y rel %s, max state rel %s\n", k, n[k], my[k], mh[k]}' $OUT/test.txt | tee -a $LOG
echo "tests: $(( $(date +%s) - t0 )) s" | tee -a $LOG
if [ "$NO_SAN" != 1 ]; then
  t0=$(date +%s)
  SAN_FILTER='CudaScan.NoSoftplus*:CudaScan.EverySplitSmall:CudaScan.Backward:CudaScan.BadArguments:CudaConv.*'
  for n in $TESTS; do timeout 150 compute-sanitizer --tool memcheck $B/$n --gtest_filter="$SAN_FILTER"; done > $B/memcheck.txt 2>&1
  for n in $TESTS; do timeout 150 compute-sanitizer --tool racecheck $B/$n --gtest_filter="$SAN_FILTER"; done > $B/racecheck.txt 2>&1
  cat $B/memcheck.txt $B/racecheck.txt > $OUT/sanitizer.txt
  echo "memcheck: $(grep -E 'ERROR SUMMARY' $B/memcheck.txt | tr '\n' ' ')" | tee -a $LOG
  echo "racecheck: $(grep -E 'RACECHECK SUMMARY' $B/racecheck.txt | tr '\n' ' ')" | tee -a $LOG
  echo "sanitizers: $(( $(date +%s) - t0 )) s" | tee -a $LOG
fi
for f in bench/cuda_*.cu; do n=$(basename $f .cu); timeout 300 $B/$n $BENCH_ARGS 2>&1 | tee $OUT/bench.txt; done
{ cuobjdump -sass $B/scan_fwd_bf16.o; cuobjdump -sass $B/scan_bwd_bf16.o; } > $OUT/sass.txt 2>&1
