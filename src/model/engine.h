// Runs a Model over tokens on a backend: the parallel path for prefill and scoring (the whole chunk
// through each layer at once) and the recurrent step for generation (one token per sequence, constant
// time and memory). Both carry the recurrent State, so a sequence can be fed in pieces of any size.
// Written once against the backend seam (ops/backend.h): the same code runs on the CPU and the GPU.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "model/model.h"
#include "model/state.h"
#include "ops/backend.h"

namespace mamba {

enum class Logits { All, Last, None };

struct EngineOptions {
  Device device;  // the CPU by default
  // The activations' dtype. The CPU computes in fp32 by default (its weights stay in the model's type;
  // bf16 or fp16 activations there go through its fp32 kernels, a reference for the GPU's); on the GPU the
  // weights are converted to this type once, and it defaults to the model's weight dtype.
  std::optional<DType> dtype;
  int64_t max_tokens = 2048;  // bounds B × chunk length per pass, and with it the activation memory
  // Decode steps recorded once per batch shape and replayed (CUDA graphs), where the backend can.
  bool graphs = true;
};

class Engine {
 public:
  // Checks that the backend runs every op of this model with these types (an Error naming the reason
  // otherwise, before anything runs) and puts the weights on the device once (in place on the CPU).
  explicit Engine(const Model& model, const EngineOptions& options = {});
  Engine(const Model& model, int64_t max_tokens) : Engine(model, EngineOptions{Device{}, std::nullopt, max_tokens}) {}

  // Runs tokens (B, L) (host memory) from `state` (batch B, on this engine's device), leaving the final
  // state there. Writes host logits (B, L, V) for Logits::All, (B, V) of the last position for
  // Logits::Last. Ids are checked first.
  void forward(const int32_t* tokens, int B, int L, State& state, float* logits, Logits which = Logits::All);
  // One token for each of B sequences: logits (B, V). Allocates nothing once buffers exist.
  void step(const int32_t* tokens, int B, State& state, float* logits) {
    forward(tokens, B, 1, state, logits, Logits::All);
  }
  // One token for each of B sequences, and the id of each one's largest logit (greedy decoding), found
  // on the device: only B ids come back.
  void step_greedy(const int32_t* tokens, int B, State& state, int32_t* next);

  // Called between the passes of a forward() longer than one pass (never within step()): it may throw
  // to abandon the call, the state then holding the tokens of the passes done. Frontends use it for
  // cancellation (Ctrl-C in Python). Empty: none.
  void set_interrupt(std::function<void()> check) { interrupt_ = std::move(check); }

  // A zero state for B sequences on this engine's device.
  State new_state(int batch) const { return State(model_.config(), batch, backend_); }

  const Model& model() const { return model_; }
  Backend& backend() const { return backend_; }
  DType dtype() const { return dtype_; }
  int64_t activation_bytes() const { return static_cast<int64_t>(arena_.bytes()); }
  int64_t weight_bytes() const;  // the weights as this engine reads them (on the device for a GPU)

 private:
  // Activations for B sequences of L tokens (and the ops' workspace for that shape).
  void reserve(int B, int L);
  void check_ids(const int32_t* tokens, int64_t n) const;
  void check_state(const State& state, int B) const;
  // One chunk of tokens (B, Lc), already in chunk_tokens_. Logits of every position (all) or of the last
  // (last_only) go to `logits`, sequence b's rows at logits + b·ld_seq (a device pointer; null: none).
  void run_chunk(int B, int Lc, State& state, float* logits, int64_t ld_seq, bool last_only);
  // The layers and the head over the chunk whose ids are at `ids` on the device.
  void run_layers(const int32_t* ids, int B, int Lc, State& state, float* logits, int64_t ld_seq, bool last_only);
  // One token per sequence (in chunk_tokens_) to logits_ on the device, through a recorded graph when
  // graphs are on (made on the first step of each (batch, state) pair, replayed after), else the same
  // kernels launched one by one.
  void decode_on_device(int B, State& state);
  bool use_graphs() const { return graphs_enabled_ && backend_.can_capture(); }

  const Model& model_;
  Backend& backend_;
  DType dtype_;
  int64_t max_tokens_;
  Weights weights_;            // the model's (host) or the uploaded copy's (device) views
  Buffer device_weights_;      // the uploaded weights, when the device is not the host
  const float* A_ = nullptr;   // (n_layer, Di, N) A = −exp(A_log), on the device
  int64_t rows_ = 0;           // capacity of the activations below, in tokens
  Buffer arena_;               // every activation, one allocation
  std::vector<int32_t> chunk_tokens_;  // (rows) host
  // Views into arena_ (M = rows; d = d_model, Di = d_inner, R = dt_rank), in dtype_ unless marked fp32.
  void* hidden_ = nullptr;     // (M, d) a layer's output, the embedding at first
  float* residual_ = nullptr;  // (M, d) fp32: the residual stream
  void* normed_ = nullptr;     // (M, d)
  void* xz_ = nullptr;         // (M, 2·Di) in_proj output: x | z
  void* xc_ = nullptr;         // (M, Di) SiLU(conv1d(x))
  void* xdbl_ = nullptr;       // (M, R + 2N) x_proj output: δ | B | C
  void* delta_ = nullptr;      // (M, Di) dt_proj(δ), before bias and softplus
  void* y_ = nullptr;          // (M, Di) scan output, gated
  void* last_ = nullptr;       // (B, d) normed last positions for Logits::Last
  int32_t* tokens_ = nullptr;  // (M) the chunk's ids on the device
  int32_t* ids_ = nullptr;     // (M) argmax output on the device
  float* logits_ = nullptr;    // (M, V) fp32 logits on the device (unless it is the host)
  void* workspace_ = nullptr;  // the ops' workspace
  size_t workspace_bytes_ = 0;
  // Recorded decode steps: each reads and writes the arena and one state's buffers, so it is kept per
  // (batch, state address) and dropped when the arena moves.
  struct DecodeGraph {
    int batch;
    const float* conv;
    const float* ssm;
    std::unique_ptr<Backend::Graph> graph;
  };
  bool graphs_enabled_;
  std::vector<DecodeGraph> graphs_;
  std::function<void()> interrupt_;
};

}  // namespace mamba
