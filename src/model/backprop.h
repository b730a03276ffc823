// The whole model's forward and backward over a batch for training, on a backend (ops/backend.h): the
// forward keeps what the backward needs (per layer, in one allocation), the backward calls the ops'
// backward in exact reverse order and accumulates parameter gradients into a buffer laid out like the
// parameters. The scan keeps only its chunk-boundary states (paper §3.3.2) and recomputes inside each
// chunk.
//
// Precision (docs/training.md, "Mixed precision"): in fp32 everything is fp32. In bf16 or fp16 (as PyTorch's
// autocast does it) the parameters stay fp32 (the masters the optimizer updates) and the matrices (the
// embedding / LM head and the in, x, dt and out projections) are read from low-precision copies of them;
// the mixer's activations and their gradients are kept in that type, while the residual stream and its
// gradient, A, D, the Δ bias, the conv and norm weights, the scan's states, the loss with its softmax and
// every parameter gradient stay fp32. The same code runs on every backend: the CPU widens bf16 and fp16 to
// fp32 inside each op (ops/cpu/half.h), the reference for the GPU.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace mamba {

class Backprop {
 public:
  // Buffers for batches of B sequences of L tokens on `backend`; `scan_chunk` steps between saved scan
  // states; activations in `dtype` (F32, or BF16 / F16 for mixed precision). Fails naming the op when the
  // backend cannot train this model so.
  // `recompute`: what the backward recomputes instead of keeping per layer (0 nothing; 1 the conv's output and
  // Δ; 2 also the scan's forward, its chunk states and y; 3 also the norm's output, from the fp32 residual;
  // 4 also in_proj's output xz, from the norm's): memory for time, the gradients the same.
  Backprop(const Config& config, int B, int L, int scan_chunk = 256, Backend& backend = Backend::cpu(),
           DType dtype = DType::F32, int recompute = 1);
  static constexpr int kMaxRecompute = 4;

  // Mean cross-entropy of targets (B, L) given inputs (B, L) (host memory), over targets ≠ ignore_index.
  // params (and grads) are fp32 on the backend's device, laid out by param_specs. With `grads`, also runs
  // the backward and ADDS d(loss)/d(params). Every sequence starts from the zero state. Allocates nothing
  // once the buffers exist.
  // divisor > 0: the loss and gradients are divided by it instead of this batch's count of targets
  // (a data-parallel shard of a larger batch: ops/xent.h). loss_scale multiplies the gradients, not the
  // loss (fp16's loss scaling: the caller divides it out again, AdamW's grad_scale).
  // In bf16 and fp16 the low-precision copies of the matrices are made from `params` at the first call
  // with them; a caller that changes them in place (the optimizer) calls update_weights() after.
  double step(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
              int ignore_index = -100, int64_t divisor = 0, float loss_scale = 1.0f);
  // The same work without waiting for it: the mean loss is written to `loss`, one float on the backend's
  // device, and nothing is brought back (the trainer reads a step's losses and norm in one download).
  void forward_backward(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
                        int ignore_index, float* loss, int64_t divisor = 0, float loss_scale = 1.0f);
  // The low-precision copies of the matrices, made again from the fp32 `params` (Backend::convert,
  // queued): after every optimizer step. Nothing to do in fp32.
  void update_weights(const float* params);

  // Called during the backward as parameter gradients become final: with layer l once layer l's backward
  // has been queued (its parameters' gradients, and those of every later layer, are complete once the
  // queued work runs), then with −1 after the embedding's (all of them). Data-parallel training starts
  // reducing a layer's gradients there, while the earlier layers still compute. Empty: none.
  void set_on_grads_ready(std::function<void(int layer)> callback) { on_grads_ready_ = std::move(callback); }

  // Bytes a Backprop of these sizes allocates on the CPU, its own buffers (the low-precision copies of
  // the matrices among them), the ops' workspace and the scan backward's per-call buffers, computed
  // without overflow for any sizes (core/limits.h saturates them): checked before building one.
  static int64_t bytes_needed(const Config& config, int64_t B, int64_t L, int64_t scan_chunk,
                              DType dtype = DType::F32, int recompute = 1);
  // Bytes of saved activations and scratch (for the memory formula in docs/training.md).
  int64_t activation_bytes() const { return static_cast<int64_t>(saved_.bytes() + scratch_.bytes()); }
  // Bytes of the matrices' low-precision copies (0 in fp32).
  int64_t weight_copy_bytes() const { return static_cast<int64_t>(copies_.bytes()); }
  Backend& backend() const { return backend_; }
  DType dtype() const { return dtype_; }
  int recompute() const { return recompute_; }
  int batch() const { return B_; }
  int seqlen() const { return L_; }

 private:
  // Activations in dtype_ (marked t) or fp32.
  struct LayerSaved {
    float* residual;     // (M, d) fp32: the residual stream entering this layer's norm
    void* normed;        // (M, d) t
    void* xz;            // (M, 2·Di) t
    void* xc;            // (M, Di) t: SiLU(conv(x)), the scan's u; from recompute 1, one buffer for every layer
    void* xdbl;          // (M, R + 2N) t
    void* delta;         // (M, Di) t, before the bias and softplus; shared from recompute 1, as xc
    void* y;             // (M, Di) t: gated scan output; shared from recompute 2
    float* checkpoints;  // (B, ⌈L / chunk⌉, Di, N) fp32; shared from recompute 2
  };

  Config config_;
  std::vector<ParamSpec> specs_;
  Backend& backend_;
  int B_, L_, chunk_;
  DType dtype_;
  int recompute_;
  Buffer saved_;  // every LayerSaved view, then the final residual and norm
  std::vector<LayerSaved> layers_;
  float* residual_f_;  // (M, d) fp32
  void* normed_f_;     // (M, d) t
  Buffer scratch_;     // forward temporaries and backward gradients, reused per layer
  void* hidden_;    // (M, d) t: the embedding's and each mixer's output
  float* dresid_;   // (M, d) fp32: the residual stream's gradient
  void* dhidden_;   // (M, d) t: dresid_ rounded, out_proj's dout (bf16 and fp16 only; dresid_ itself in fp32)
  void* dnormed_;   // (M, d) t
  void* dxz_;       // (M, 2·Di) t
  void* dxc_;       // (M, Di) t
  void* dxdbl_;     // (M, R + 2N) t
  void* ddelta_;    // (M, Di) t
  void* dy_;        // (M, Di) t
  float* dA_;       // (Di, N) fp32
  float* A_;        // (Di, N) fp32
  float* tail_;     // (B, d_conv − 1, Di) fp32 zeros: training sequences start from the zero state
  float* loss_;     // (1) the mean loss
  int32_t* inputs_;   // (M) the batch's ids on the device (unused on the CPU, which reads the caller's)
  int32_t* targets_;  // (M)
  void* workspace_;   // the ops' workspace, the largest any of them needs
  // bf16 and fp16: the matrices' low-precision copies, one view per matrix spec (byte offsets; -1 for the
  // fp32 parameters, read from the masters).
  Buffer copies_;
  std::vector<int64_t> copy_at_;
  // Views of the parameters and of their gradients, bound on first use of each buffer.
  const float* bound_params_ = nullptr;
  const float* bound_grads_ = nullptr;
  Weights w_, g_;
  std::function<void(int layer)> on_grads_ready_;
};

}  // namespace mamba
