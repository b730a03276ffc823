// The whole model's forward and backward over a batch for training, on a backend (ops/backend.h): the
// forward keeps what the backward needs (per layer, in one allocation), the backward calls the ops'
// backward in exact reverse order and accumulates parameter gradients into a buffer laid out like the
// parameters. The scan keeps only its chunk-boundary states (paper §3.3.2) and recomputes inside each
// chunk.
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
  // states. Fails naming the op when the backend cannot train this model.
  Backprop(const Config& config, int B, int L, int scan_chunk = 256, Backend& backend = Backend::cpu());

  // Mean cross-entropy of targets (B, L) given inputs (B, L) (host memory), over targets ≠ ignore_index.
  // params (and grads) are fp32 on the backend's device, laid out by param_specs. With `grads`, also runs
  // the backward and ADDS d(loss)/d(params). Every sequence starts from the zero state. Allocates nothing
  // once the buffers exist.
  // divisor > 0: the loss and gradients are divided by it instead of this batch's count of targets
  // (a data-parallel shard of a larger batch: ops/xent.h).
  double step(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
              int ignore_index = -100, int64_t divisor = 0);
  // The same work without waiting for it: the mean loss is written to `loss`, one float on the backend's
  // device, and nothing is brought back (the trainer reads a step's losses and norm in one download).
  void forward_backward(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
                        int ignore_index, float* loss, int64_t divisor = 0);

  // Called during the backward as parameter gradients become final: with layer l once layer l's backward
  // has been queued (its parameters' gradients, and those of every later layer, are complete once the
  // queued work runs), then with −1 after the embedding's (all of them). Data-parallel training starts
  // reducing a layer's gradients there, while the earlier layers still compute. Empty: none.
  void set_on_grads_ready(std::function<void(int layer)> callback) { on_grads_ready_ = std::move(callback); }

  // Bytes a Backprop of these sizes allocates, its own buffers and the scan backward's per-call ones,
  // computed without overflow for any sizes (core/limits.h saturates them): checked before building one.
  static int64_t bytes_needed(const Config& config, int64_t B, int64_t L, int64_t scan_chunk);
  // Bytes of saved activations and scratch (for the memory formula in docs/training.md).
  int64_t activation_bytes() const { return static_cast<int64_t>(saved_.bytes() + scratch_.bytes()); }
  Backend& backend() const { return backend_; }
  int batch() const { return B_; }
  int seqlen() const { return L_; }

 private:
  struct LayerSaved {
    float* residual;     // (M, d) the residual stream entering this layer's norm
    float* normed;       // (M, d)
    float* xz;           // (M, 2·Di)
    float* xc;           // (M, Di) SiLU(conv(x)): the scan's u
    float* xdbl;         // (M, R + 2N)
    float* delta;        // (M, Di)
    float* y;            // (M, Di) gated scan output
    float* checkpoints;  // (B, ⌈L / chunk⌉, Di, N)
  };

  Config config_;
  std::vector<ParamSpec> specs_;
  Backend& backend_;
  int B_, L_, chunk_;
  Buffer saved_;  // every LayerSaved view, then the final residual and norm
  std::vector<LayerSaved> layers_;
  float* residual_f_;  // (M, d)
  float* normed_f_;    // (M, d)
  Buffer scratch_;     // forward temporaries and backward gradients, reused per layer
  float* hidden_;   // (M, d)
  float* dresid_;   // (M, d)
  float* dnormed_;  // (M, d)
  float* dxz_;      // (M, 2·Di)
  float* dxc_;      // (M, Di)
  float* dxdbl_;    // (M, R + 2N)
  float* ddelta_;   // (M, Di)
  float* dy_;       // (M, Di)
  float* dA_;       // (Di, N)
  float* A_;        // (Di, N)
  float* tail_;     // (B, d_conv − 1, Di) zeros: training sequences start from the zero state
  float* loss_;     // (1) the mean loss
  int32_t* inputs_;   // (M) the batch's ids on the device (unused on the CPU, which reads the caller's)
  int32_t* targets_;  // (M)
  void* workspace_;   // the ops' workspace, the largest any of them needs
  // Views of the parameters and of their gradients, bound on first use of each buffer.
  const float* bound_params_ = nullptr;
  const float* bound_grads_ = nullptr;
  Weights w_, g_;
  std::function<void(int layer)> on_grads_ready_;
};

}  // namespace mamba
