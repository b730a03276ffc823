// The selective scan's kernels for other frameworks (the PyTorch drop-in of python/mambacpp/torch.py):
// raw pointers, dense token-major arrays, no framework types. Element (b, t, i) of a (B, L, X) array sits
// at ptr[(b·L + t)·X + i]. u, Δ, z, B, C, y and their gradients share one dtype (fp32 on the CPU; fp32,
// bf16 or fp16 on CUDA); A, D, the Δ bias, the states and every accumulation are fp32.
//
//   h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t,   y_t = (C_t · h_t + D ⊙ u_t) ⊙ SiLU(z_t)
//   with Δ_t = softplus(delta_t + delta_bias) when delta_softplus (paper §3, Algorithm 2).
//
// The forward keeps the state entering every chunk of scan_state_chunk() steps; the backward recomputes
// the states inside each chunk from those (paper §3.3.2) instead of storing all of them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mamba/error.h"

namespace mamba::kernels {

enum class DType { F32, BF16, F16 };
enum class Device { Cpu, Cuda };

struct ScanArgs {
  int batch = 0;   // B
  int seqlen = 0;  // L
  int dim = 0;     // D: channels
  int dstate = 0;  // N
  DType dtype = DType::F32;

  void* y = nullptr;              // (B, L, D) out
  const void* u = nullptr;        // (B, L, D)
  const void* delta = nullptr;    // (B, L, D) Δ before its bias and softplus
  const float* A = nullptr;       // (D, N)
  const void* B = nullptr;        // (B, L, N)
  const void* C = nullptr;        // (B, L, N)
  const float* D = nullptr;       // (D) or null
  const void* z = nullptr;        // (B, L, D) or null
  const float* delta_bias = nullptr;  // (D) or null
  bool delta_softplus = false;
  float* last_state = nullptr;    // (B, D, N) out: h_L, or null
  float* chunk_states = nullptr;  // (B, ⌈L / scan_state_chunk⌉, D, N) out, for the backward; or null
};

// Gradients: those of the activations (du, ddelta, dz, dB, dC) are written; those of the parameters
// (dA, dD, ddelta_bias) are added to (+=), so they start from zeros or from other contributions.
struct ScanGradArgs {
  const void* dy = nullptr;             // (B, L, D)
  const float* dlast_state = nullptr;   // (B, D, N) ∂loss/∂h_L, or null
  void* du = nullptr;                   // (B, L, D)
  void* ddelta = nullptr;               // (B, L, D) w.r.t. delta before its bias and softplus
  void* dz = nullptr;                   // (B, L, D); required when z is given
  void* dB = nullptr;                   // (B, L, N)
  void* dC = nullptr;                   // (B, L, N)
  float* dA = nullptr;                  // (D, N) +=
  float* dD = nullptr;                  // (D) +=; required when D is given
  float* ddelta_bias = nullptr;         // (D) +=; required when delta_bias is given
};

// The steps between the states the forward keeps for the backward.
int scan_state_chunk(Device device);
// Whether this build has the CUDA kernels.
bool cuda_built();

// CPU, fp32, host pointers; runs on the library's threads.
void scan_forward_cpu(const ScanArgs& args);
void scan_backward_cpu(const ScanArgs& args, const ScanGradArgs& grads);

// CUDA: device pointers of the current device, work queued on `stream` (a cudaStream_t; null: the
// default stream), nothing synchronized. `workspace` holds the *_workspace() bytes. Errors (an
// unsupported N, a CUDA failure, a build without CUDA) throw mamba::Error.
size_t scan_forward_cuda_workspace(const ScanArgs& args);
void scan_forward_cuda(const ScanArgs& args, void* workspace, void* stream);
size_t scan_backward_cuda_workspace(const ScanArgs& args, const ScanGradArgs& grads);
void scan_backward_cuda(const ScanArgs& args, const ScanGradArgs& grads, void* workspace, void* stream);

// dst (batch, cols, rows) dense = src (batch, rows, cols), on the GPU: the layout change between mamba_ssm's
// channel-major (batch, X, L) arrays and the kernels' token-major (batch, L, X). src's columns are
// contiguous, its rows src_row_stride and its batches src_batch_stride elements apart; elements of 2 or 4
// bytes. Queued on `stream`.
void transpose_cuda(void* dst, const void* src, int64_t batch, int64_t rows, int64_t cols, int elem_bytes,
                    int64_t src_batch_stride, int64_t src_row_stride, void* stream);

}  // namespace mamba::kernels
