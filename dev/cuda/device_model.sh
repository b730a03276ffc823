#!/usr/bin/env bash
# There, on the GPU machine, in one call: the full build (CLI, library, tests) against the libraries that
# dev/cuda/device_prefix.sh packed here, the GPU tests, compute-sanitizer on the inference path, and the
# inference benchmarks beside the official model's (../shared/official, copied to .official) in the same run.
#   here, once:   dev/cuda/device_prefix.sh
#                 mkdir -p .official && cp -r ../shared/official/. .official/ && echo /.official/ >> .git/info/exclude
#   the call:     carry [".device", ".official"], command: OUT=$OUT bash dev/cuda/device_model.sh [tests] [sanitize] [suite] [bench] [official] [profile] [train] [showit] [dist] [torch]
# Steps run in the order named. tests: the GPU's test programs (with suite: then the whole ctest suite as CI
# runs it); sanitize: compute-sanitizer memcheck and racecheck on the ops, memcheck on the models' tests and on
# training steps; bench, official: the inference figures, ours and the official model's; profile: ncu over
# decode steps; decode: ours and the official decode only (130m, 1.4b); pdl: batch-1 decode with programmatic
# dependent launch off and on; sweep: the scan forward's splits at the drop-in's shapes; racecheck: racecheck's full report on
# the ops; trainprofile: ncu over one training step; train: the training tests; trainbench: the training benchmark beside the official one; showit: the main
# job at the 130m shape on the GPU and selective copying at length 4096; dist: data parallel through NCCL with
# a world of one against the plain run; torch: the PyTorch drop-in's tests and benchmark beside mamba_ssm.
# A call whose tree would pass the 64 MiB carry limit carries only the files its steps read, e.g.
# [".device/prefix.tar.xz", ".official"] for tests/train/bench/official; showit and dist read .device/sotu.tar.xz;
# torch reads .official/src and the modules that official/train built in /tmp/mbuild on a warm machine.
# BUILD_TARGETS="mambacpp test_gpu_train ..." builds only those (a short call).
# Logs go to $OUT: build.txt, tests.txt, sanitizer.txt, bench.jsonl, official.jsonl, train_tests.txt,
# train_bench.jsonl, train_profile.txt, profile.txt, ncu.tar.xz, showit.txt, sotu-130m-log.jsonl, dist.txt, torch.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-tests sanitize bench official}
t0=$(date +%s)
tar -C /tmp -xJf .device/prefix.tar.xz  # → /tmp/prefix
export PATH=/tmp/prefix/bin:$PATH PKG_CONFIG_PATH=/tmp/prefix/lib/pkgconfig LD_LIBRARY_PATH=/tmp/prefix/lib:${LD_LIBRARY_PATH:-}
export PKG_CONFIG=/tmp/prefix/bin/pkgconf
# NCCL for data-parallel training: the toolkit's, or else the nvidia-nccl wheel beside PyTorch.
if ! ls /usr/local/cuda/lib*/libnccl.so* >/dev/null 2>&1; then
  NCCL_ROOT=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null) && export NCCL_ROOT
fi
{
  nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv
  nvcc --version | tail -1
  cmake -S . -B /tmp/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=/tmp/prefix \
    -DPKG_CONFIG_EXECUTABLE=/tmp/prefix/bin/pkgconf -DCMAKE_CUDA_ARCHITECTURES=90 -DMAMBA_CUDA=ON \
    -DPython_EXECUTABLE="$(command -v python3)" \
    -DMAMBA_PYBIND11_INCLUDE="$(python3 -c 'import torch.utils.cpp_extension as e; print(e.include_paths()[0])' 2>/dev/null)"
  cmake --build /tmp/build -j "$(nproc)" ${BUILD_TARGETS:+--target $BUILD_TARGETS} -- -k 0  # a target that fails (another compiler there) stops nothing else
} > "$OUT/build.txt" 2>&1
echo "build: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$OUT/build.txt"
B=/tmp/build
cd_run() { OMP_NUM_THREADS=8 OMP_WAIT_POLICY=PASSIVE "$@"; }
# Random fp16 models of the released shapes, made once per machine.
models() { for m in "$@"; do [ -d /tmp/models/$m ] || $B/mambacpp init --preset $m --out /tmp/models/$m --seed 1 --dtype f16 >/dev/null; done; }
# The official modules in /tmp/mbuild: copied from .official/prebuilt (or built), kept while the machine is warm.
official_modules() { [ -d /tmp/mbuild/ss ] && [ -d /tmp/mbuild/cc ] || python3 .official/build.py >/dev/null 2>&1; }

step_tests() {
  t0=$(date +%s)
  # The GPU's tests first (they are the new ones), then the whole suite as CI runs it.
  for t in test_backend_ops test_gpu_model test_cuda_scan test_cuda_conv; do cd_run timeout 300 $B/$t 2>&1; done > "$OUT/tests.txt"
  if [[ " $steps " == *" suite "* ]]; then
    (cd $B && cd_run timeout 400 ctest -j 8 --output-on-failure) >> "$OUT/tests.txt" 2>&1
  fi
  grep -E "^\[  (PASSED|FAILED)|tests passed|FAILED  \]|logits vs" "$OUT/tests.txt"
  echo "tests: $(( $(date +%s) - t0 )) s"
}

step_sanitize() {
  t0=$(date +%s)
  SAN='GpuModel.*:AllBackends/BackendOps.*cuda*'
  for tool in memcheck racecheck; do
    timeout 150 compute-sanitizer --tool $tool $B/test_backend_ops --gtest_filter="$SAN" 2>&1 | tail -5
    [ $tool = racecheck ] && continue  # shared memory races live in the ops; the models only chain them
    timeout 150 compute-sanitizer --tool $tool $B/test_gpu_model --gtest_filter="$SAN" 2>&1 | tail -5
    # whole training steps (forward, backward, AdamW) in fp32 and bf16
    timeout 150 compute-sanitizer --tool $tool $B/test_gpu_train \
      --gtest_filter='GpuTraining.TenStepTrajectoryEqualsTheCpus:GpuMixedPrecision.Bf16ResumeIsBitwiseIdentical:*RecomputeLevelsAreBitwiseEqual/hf_f32_L17_k2_untied' 2>&1 | tail -5
  done > "$OUT/sanitizer.txt"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.txt"
  echo "sanitize: $(( $(date +%s) - t0 )) s"
}

step_official() {
  [ -d .official ] || { echo "official: no .official carried"; return; }
  t0=$(date +%s)
  (official_modules && python3 .official/bench.py gen prefill --models 130m,1.4b,2.8b) > "$OUT/official.jsonl" 2>&1
  echo "official: $(( $(date +%s) - t0 )) s"
}

step_bench() {
  t0=$(date +%s)
  models 130m 1.4b 2.8b
  {
    # Decode as the official figures: prompt 128, 256 new tokens, greedy, batch 1 and 64, fp16.
    for m in 130m 1.4b 2.8b; do for b in 1 64; do
      $B/mambacpp bench /tmp/models/$m --device cuda --dtype fp16 --batch $b --prompt 128 --steps 256 --repeats 3
    done; done
    # Prefill: B × 2048 tokens, last-position logits, fp16 and bf16.
    for m in 130m 1.4b; do for d in fp16 bf16; do for b in 1 8; do
      $B/mambacpp bench /tmp/models/$m --device cuda --dtype $d --batch $b --prompt 2048 --steps 1 --repeats 5
    done; done; done
  } > "$OUT/bench.jsonl" 2>&1
  echo "bench: $(( $(date +%s) - t0 )) s"
}

# Decode only, ours beside the official model's in the same call: 130m and 1.4b at batch 1 and 64 (a quick
# check of a decode change; bench and official give the whole table).
# DECODE_MODELS="130m 1.4b 2.8b" adds the 2.8b (about a minute more).
step_decode() {
  t0=$(date +%s)
  local ms=${DECODE_MODELS:-130m 1.4b}
  models $ms
  {
    for m in $ms; do for b in 1 64; do
      $B/mambacpp bench /tmp/models/$m --device cuda --dtype fp16 --batch $b --prompt 128 --steps 256 --repeats 3
    done; done
    official_modules && python3 .official/bench.py gen --models "$(echo $ms | tr ' ' ,)"
  } > "$OUT/decode.jsonl" 2>&1
  grep -E '"decode"|figure' "$OUT/decode.jsonl" | python3 -c '
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    print(d.get("impl", "mamba.cpp"), d.get("model"), d["batch"], round(d["tokens_per_s"]), "tokens/s")'
  echo "decode: $(( $(date +%s) - t0 )) s"
}

# What programmatic dependent launch is worth: batch-1 decode of the 130m and 1.4b with it off and on.
step_pdl() {
  t0=$(date +%s)
  models 130m 1.4b
  for m in 130m 1.4b; do for pdl in 0 1; do
    MAMBA_CUDA_PDL=$pdl $B/mambacpp bench /tmp/models/$m --device cuda --dtype fp16 --batch 1 --prompt 128 --steps 256 \
      --repeats 3 2>/dev/null | grep '"decode"' | python3 -c '
import json, sys
d = json.loads(sys.stdin.readline())
print(sys.argv[1], "MAMBA_CUDA_PDL=" + sys.argv[2], round(d["tokens_per_s"]), "tokens/s")' $m $pdl
  done; done | tee "$OUT/pdl.txt"
  echo "pdl: $(( $(date +%s) - t0 )) s"
}

# The scan forward's splits and segment counts at the drop-in's batch-1 shape and at its first shape
# (cuda_scan_bench fwdsweep), for the dispatcher's choice of segments at one short sequence.
step_sweep() {
  t0=$(date +%s)
  { timeout 90 $B/cuda_scan_bench fwdsweep one 1 1536 8192 16; timeout 60 $B/cuda_scan_bench fwdsweep one 8 1536 2048 16; } \
    > "$OUT/sweep.txt" 2>&1
  grep -E "auto" "$OUT/sweep.txt"                                # the dispatcher's choice, then the 8 fastest
  grep -E "S=" "$OUT/sweep.txt" | grep -v "fwd+bwd" | sort -b -g -k1,1 | head -8
  echo "sweep: $(( $(date +%s) - t0 )) s"
}

# racecheck's full report on the ops (sanitize keeps only its summary).
step_racecheck() {
  t0=$(date +%s)
  timeout 200 compute-sanitizer --tool racecheck --print-limit 30 $B/test_backend_ops \
    --gtest_filter='AllBackends/BackendOps.*cuda*' > "$OUT/racecheck.txt" 2>&1
  grep -E "^\[ RUN|Race|hazard|SUMMARY|at .*0x|in .*\.cu" "$OUT/racecheck.txt" | grep -B2 -A6 -E "Race|hazard" | head -60
  echo "racecheck: $(( $(date +%s) - t0 )) s"
}

# Where a decode step's time goes: every kernel of 4 steps of the 130m at batch 1 and 64 (graph nodes
# profiled one by one), with the clocks left alone; dev/cuda/profile_summary.py sums them by kernel.
# PROFILE_MODELS (130m), PROFILE_BATCHES ("1 64"); NCU_CACHE=none keeps the caches between kernels (ncu
# flushes them by default: each kernel then starts from DRAM, as it does not in a replayed step).
step_profile() {
  t0=$(date +%s)
  local ms=${PROFILE_MODELS:-130m} bs=${PROFILE_BATCHES:-1 64}
  models $ms
  for m in $ms; do for b in $bs; do
    timeout 200 ncu --clock-control none --cache-control ${NCU_CACHE:-all} --graph-profiling node --csv \
      --metrics gpu__time_duration.sum \
      $B/mambacpp bench /tmp/models/$m --device cuda --dtype fp16 --batch $b --prompt 16 --steps 4 --repeats 1 \
      > "$OUT/ncu-$m-b$b.csv" 2> "$OUT/ncu-$m-b$b.err"
  done; done
  for m in $ms; do for b in $bs; do echo "$m batch $b"; python3 dev/cuda/profile_summary.py "$OUT/ncu-$m-b$b.csv"; done; done \
    > "$OUT/profile.txt" 2>&1
  tar -C "$OUT" -cJf "$OUT/ncu.tar.xz" $(cd "$OUT" && ls ncu-*-b*) && rm -f "$OUT"/ncu-*-b*  # at most 8 files come back
  echo "profile: $(( $(date +%s) - t0 )) s"
}

step_train() {
  t0=$(date +%s)
  # The training ops against the CPU, then the model's gradients, trajectories, resume and checkpoints,
  # in fp32 and in mixed precision (bf16 and fp16 against the CPU's, test_gpu_train's GpuMixedPrecision.*
  # and GpuGradients.Bf16*).
  {
    cd_run timeout 300 $B/test_backend_ops --gtest_filter='*Backward*:*CrossEntropy*:*AdamW*:*Convert*'
    cd_run timeout 300 $B/test_gpu_train
  } > "$OUT/train_tests.txt" 2>&1
  grep -E "^\[  (PASSED|FAILED)|FAILED  \]" "$OUT/train_tests.txt"
  echo "train: $(( $(date +%s) - t0 )) s"
}

step_trainbench() {
  t0=$(date +%s)
  # The issue's shapes in bf16 mixed precision (the default, what the official AMP bf16 figures compare
  # with; utilization against 989 TFLOP/s of dense bf16) and in fp32 (the exact mode, against an H200's 67).
  {
    # bf16 at each recomputation level (memory for time); fp32 at the default.
    for shape in "130m 8" "370m 8" "1.4b 4"; do set -- $shape
      for r in ${TRAIN_LEVELS:-0 1 2}; do  # TRAIN_LEVELS=1: the default level only (a shorter call)
        $B/mambacpp bench-train --preset $1 --batch $2 --seq-len 2048 --steps 10 --warmup 2 --device cuda --dtype bf16 --recompute $r --peak-tflops 989
      done
      [ -n "${SKIP_FP32:-}" ] || $B/mambacpp bench-train --preset $1 --batch $2 --seq-len 2048 --steps 10 --warmup 2 --device cuda --dtype fp32 --peak-tflops 67
    done
    official_modules && python3 .official/bench.py train
  } > "$OUT/train_bench.jsonl" 2>&1
  cat "$OUT/train_bench.jsonl"
  echo "trainbench: $(( $(date +%s) - t0 )) s"
}

# Where a training step's time goes: every kernel of one 130m × 8 × 2048 bf16 step (forward, backward,
# AdamW, the weight copies), summed by kernel; the step's wall time beside it is in train_bench.jsonl.
step_trainprofile() {
  t0=$(date +%s)
  timeout 240 ncu --clock-control none --csv --metrics gpu__time_duration.sum \
    $B/mambacpp bench-train --preset 130m --batch 8 --seq-len 2048 --steps 1 --warmup 0 --device cuda --dtype bf16 \
    > "$OUT/ncu-train.csv" 2> "$OUT/ncu-train.err"
  python3 dev/cuda/profile_summary.py "$OUT/ncu-train.csv" --all > "$OUT/train_profile.txt" 2>&1
  tail -3 "$OUT/ncu-train.err" >> "$OUT/train_profile.txt"
  head -30 "$OUT/train_profile.txt"
  rm -f "$OUT/ncu-train.csv" "$OUT/ncu-train.err"  # at most 8 files come back
  echo "trainprofile: $(( $(date +%s) - t0 )) s"
}

# The main job at a size the CPU cannot reach: the 130m shape, byte-level, on the State of the Union
# corpus (.device/sotu.tar.xz), a few minutes on the GPU, then generation from its checkpoint on the CPU;
# and the paper's selective copying at length 4096 on the GPU (its CPU time is in docs/results.md).
step_showit() {
  t0=$(date +%s)
  mkdir -p /tmp/data && tar -C /tmp/data -xJf .device/sotu.tar.xz
  {
    timeout -s INT 240 $B/mambacpp train --data /tmp/data/sotu --device cuda --d-model 768 --n-layer 24 --seq-len 2048 \
      --batch 8 --steps 400 --lr 1e-3 --warmup 40 --eval-every 50 --eval-batches 8 --save-every 100 --seed 1 \
      --progress off --out /tmp/runs/sotu-130m
    cp /tmp/runs/sotu-130m/log.jsonl "$OUT/sotu-130m-log.jsonl"
    OMP_NUM_THREADS=16 $B/mambacpp generate /tmp/runs/sotu-130m --device cpu \
      -p "Fellow-Citizens of the Senate and House of Representatives: " -n 400 --temperature 0.8 --seed 1
    timeout -s INT 150 $B/mambacpp tasks train selective-copying --out /tmp/runs/sc4096 --length 4096 --steps 200 \
      --batch 8 --lr 1e-3 --lr-min 2e-5 --warmup 10 --eval-every 100 --eval-sequences 32 --seed 31 --device cuda
  } > "$OUT/showit.txt" 2>&1
  tail -25 "$OUT/showit.txt"
  echo "showit: $(( $(date +%s) - t0 )) s"
}

# Data parallel through NCCL with a world of one (the kinds with several GPUs are not lent): the same run
# as the plain one, bitwise (losses and the saved model), and the data-parallel path's overhead.
step_dist() {
  t0=$(date +%s)
  mkdir -p /tmp/data && [ -d /tmp/data/sotu ] || tar -C /tmp/data -xJf .device/sotu.tar.xz
  args="--data /tmp/data/sotu --d-model 768 --n-layer 24 --seq-len 2048 --batch 8 --steps 30 --warmup 5 --eval-every 0
        --eval-batches 1 --seed 1 --progress off --device cuda"
  {
    grep -E "NCCL" "$OUT/build.txt"
    $B/mambacpp train $args --out /tmp/runs/plain
    rm -f /tmp/rendezvous.id
    RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 $B/mambacpp train $args --rendezvous /tmp/rendezvous.id --out /tmp/runs/nccl1
    cmp /tmp/runs/plain/model.safetensors /tmp/runs/nccl1/model.safetensors && echo "model: bitwise equal"
    python3 - <<'PY'
import json
def steps(p): return [json.loads(l) for l in open(p) if '"loss"' in l]
a, b = steps('/tmp/runs/plain/log.jsonl'), steps('/tmp/runs/nccl1/log.jsonl')
print('losses bitwise equal:', [x['loss'] for x in a] == [y['loss'] for y in b], len(a), len(b))
print('tokens/s plain %.0f, NCCL world 1 %.0f' % (a[-1]['tokens_per_s'], b[-1]['tokens_per_s']))
PY
  } > "$OUT/dist.txt" 2>&1
  cat "$OUT/dist.txt"
  echo "dist: $(( $(date +%s) - t0 )) s"
}

# The PyTorch drop-in (mambacpp.torch.selective_scan_fn) on the GPU: its tests against the CPU path and
# mamba_ssm (the official modules from .official), then both side by side (bench/torch_scan_bench.py).
step_torch() {
  t0=$(date +%s)
  official_modules
  export PYTHONPATH=$B/python:/tmp/mbuild/ss:$PWD/.official/src/mamba
  {
    ls $B/python/mambacpp/ || grep -E "Python package" "$OUT/build.txt"
    gcc -shared -fPIC -o /tmp/segv.so dev/python/segv_backtrace.c
    python3 dev/python/exception_probe.py /tmp/segv.so  # errors raised from C++, each in a child process
    timeout 300 python3 -X faulthandler -m pytest -v -p no:cacheprovider python/tests/test_torch.py 2>&1 | tail -80
    timeout 300 python3 bench/torch_scan_bench.py
  } > "$OUT/torch.txt" 2>&1
  cat "$OUT/torch.txt"
  echo "torch: $(( $(date +%s) - t0 )) s"
}

# The steps run in the order the command line names them, so the most wanted come first.
for step in $steps; do
  [ "$step" = suite ] && continue  # a modifier of tests
  if declare -F "step_$step" >/dev/null; then "step_$step"; else echo "unknown step: $step"; fi
done
