#!/usr/bin/env bash
# Builds dev/gemm/gemm_compare.cpp against each GEMM library Debian packages (OpenBLAS's OpenMP build, BLIS's
# OpenMP build, oneDNN; `apt-get install libopenblas0-openmp libblis-dev libblis4-openmp libdnnl-dev`) and
# runs them interleaved, with oneDNN's bf16 matmul beside them (BLIS exports the CBLAS interface: the same header serves), with 2 threads, with and without OPENBLAS_CORETYPE=Haswell. JSON lines on stdout.
#   dev/gemm/run.sh [130m|1.4b] [tokens (512)] [rounds (3)]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
lib=/usr/lib/x86_64-linux-gnu
flags=(-O2 -std=c++20 -fopenmp)
g++ "${flags[@]}" -DLIB_NAME='"openblas"' -I/usr/include/x86_64-linux-gnu/openblas-pthread "$here/gemm_compare.cpp" \
  -o "$out/openblas" "$lib/openblas-openmp/libopenblas.so.0" -Wl,-rpath,"$lib/openblas-openmp"
g++ "${flags[@]}" -DLIB_NAME='"blis"' -I/usr/include/x86_64-linux-gnu/openblas-pthread "$here/gemm_compare.cpp" -o "$out/blis" \
  "$lib/blis-openmp/libblis.so.4" -Wl,-rpath,"$lib/blis-openmp"
g++ "${flags[@]}" -DLIB_NAME='"onednn"' -DUSE_DNNL "$here/gemm_compare.cpp" -o "$out/onednn" -ldnnl
g++ "${flags[@]}" -DLIB_NAME='"onednn-bf16"' -DUSE_DNNL_BF16 "$here/gemm_compare.cpp" -o "$out/onednn-bf16" -ldnnl
export OMP_NUM_THREADS=2 BLIS_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
for round in $(seq "${3:-3}"); do
  # OpenBLAS's own choice of kernels, whatever the environment says; then the forced Haswell ones.
  for exe in openblas blis onednn onednn-bf16; do env -u OPENBLAS_CORETYPE "$out/$exe" "${1:-130m}" "${2:-512}"; done
  OPENBLAS_CORETYPE=Haswell "$out/openblas" "${1:-130m}" "${2:-512}" | sed 's/"openblas"/"openblas-Haswell"/'
done
