// CUDA selective scan (paper §3.3, Algorithm 2): the host API. Raw device pointers, shapes and strides;
// no framework types. Memory order is the model's, token-major, as in ops/scan.h: element
// (b, t, i) of a (B, L, X) array sits at ptr[(b * L + t) * stride + i], so u, Δ, z and B, C can be column
// slices of wider projection outputs. u, Δ, z, B, C and y share one dtype (fp32, bf16 or fp16); A, D, the Δ
// bias, the states and every accumulation are fp32. All indexing is 64-bit.
//
// Every function checks each CUDA call and throws std::runtime_error on failure. Work is queued on
// `stream`; nothing synchronizes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "ops/scan.h"

namespace mamba::cuda {

// The shared contract (ops/scan.h): u, Δ, z, B, C and y in p.dtype (F32, BF16 or F16); the LTI form
// (bc_per_channel) is refused; chunk_states, when given, hold h every kStateChunk steps.
using mamba::DType;
using mamba::ScanParams;

// The forward can keep h at every kStateChunk-th step; the backward starts each 16-step sub-tile from
// those, so it never rescans. They take L·D·N/16 floats per sequence: at N = 16 as much as u in fp32.
constexpr int kStateChunk = kCudaStateChunk;

inline int64_t state_chunks(int seqlen) { return (seqlen + kStateChunk - 1) / kStateChunk; }

// The split of the work, normally left to the dispatcher (0 = its choice); the benchmark sweeps it.
struct ScanTuning {
  int states_per_thread = 0;  // 1, 2, 4, 8 or 16 state indices n held in each thread's registers
  int segments = 0;           // pieces of L scanned in parallel (two passes when more than one)
  int channels_per_thread = 0;  // forward only: 1, 2 or 4 channels whose states each thread holds (0: 1)
  // Forward only, N = 16: the single-pass kernel with one state per lane (scan_fwd_lanes.cu), which the
  // dispatcher takes for long sequences of very few channels (B·D ≤ 2.5·SMs) instead of cutting L into
  // many short segments. 1: always (N must be 16; the fields above must be 0), −1: never, 0: the
  // dispatcher's choice.
  int one_state_per_lane = 0;
  // Forward only, the blocked kernel: u, Δ, z, y, B and C moved 16 bytes at a time where their rows
  // allow (each pointer and stride a multiple of 16 bytes, D and N of 16 bytes' elements, N filling
  // the split's states; the results are bitwise the same). 0: where they allow, −1: never (one element
  // at a time, for comparisons).
  int vector_rows = 0;
};

// Bytes of device scratch memory that selective_scan_fwd needs: 0 unless L is cut into segments (few
// long sequences; not for the one-state-per-lane kernel), then 4·B·L·D bytes for the staged Δ plus 4·B·S·D·(2N + 1) for the segments' states and their flags.
size_t selective_scan_fwd_workspace(const ScanParams& p, ScanTuning tuning = {});

// y (and state_out, chunk_states) from the inputs. `workspace` holds selective_scan_fwd_workspace bytes.
void selective_scan_fwd(const ScanParams& p, void* workspace, cudaStream_t stream, ScanTuning tuning = {});

// The backward (ops/scan.h's ScanBwdParams): deterministic, no floating-point atomics; sums over channels
// and batch go through partial buffers in a fixed order. N ≤ 64 (larger N throws std::invalid_argument);
// fwd.chunk_states every kStateChunk steps is required.
using mamba::ScanBwdParams;

// tuning.segments as in the forward (0: the dispatcher's choice); states_per_thread is fixed at 4 (0 or 4;
// anything else throws std::invalid_argument).
size_t selective_scan_bwd_workspace(const ScanBwdParams& p, ScanTuning tuning = {});
void selective_scan_bwd(const ScanBwdParams& p, void* workspace, cudaStream_t stream, ScanTuning tuning = {});

}  // namespace mamba::cuda
