// The seam between the model and the hardware. A Backend owns a device's memory and runs the ops, each
// through the one contract of ops/<op>.h that every backend shares (the same params struct, layouts and
// dtypes). The model is written once against this class; the CPU backend (ops/cpu/) is the fp32 oracle
// for every other (ops/cuda/), and tests/test_backend_ops.cpp runs each op on each backend against it.
// The CPU also takes bf16 and fp16 activations, by widening them to fp32, running its fp32 kernel and
// rounding the outputs (ops/cpu/half.h): the reference for the GPU's mixed precision, not a fast path.
//
// Memory: pointers in op params are device pointers of the backend that runs the op (host memory for the
// CPU). Nothing is allocated inside an op: what an op needs beyond its arguments (its workspace) is asked
// for with *_workspace() and passed in by the caller. Work is queued in order on the backend; download()
// and synchronize() wait for it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "core/dtype.h"
#include "ops/adamw.h"
#include "ops/conv1d.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/scan.h"
#include "ops/xent.h"

namespace mamba {

struct Device {
  enum class Kind { Cpu, Cuda };
  Kind kind = Kind::Cpu;
  int index = 0;  // which GPU

  // "cpu", "cuda" (GPU 0) or "cuda:N"; fails naming the text otherwise.
  static Device parse(std::string_view text);
  std::string name() const;  // as parse() reads it
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }  // C++17: nvcc includes this
};

// What `Backend::unsupported` is asked about: one op with its types and the sizes that decide support.
enum class Op {
  Embedding, RmsNorm, Matmul, Conv1d, Scan, Argmax,                // inference
  EmbeddingBwd, RmsNormBwd, MatmulBwd, Conv1dBwd, ScanBwd, Xent, SsmA, AdamW,  // training
  Convert,  // mixed-precision training: the low-precision copies of the fp32 weights (dtype: the copies')
};
struct OpQuery {
  Op op = Op::Matmul;
  DType dtype = DType::F32;   // the activations'
  DType weight = DType::F32;  // Matmul, Embedding: the weight's stored type
  bool bc_per_channel = false;  // Scan: the LTI form
  int dstate = 0;               // Scan: N
  int width = 0;                // Conv1d: K
};

class Backend {
 public:
  virtual ~Backend() = default;

  // The process's backend for `device`, made on first use and kept until exit (a device is a process-wide
  // resource: its memory, streams and library handles). Fails with the reason when the device cannot be
  // used: a build without CUDA, no GPU, an index out of range.
  static Backend& get(Device device);
  static Backend& cpu() { return get(Device{}); }

  virtual Device device() const = 0;
  // One line for logs and benchmarks: the device's name and what this build uses on it.
  virtual std::string describe() const = 0;
  // True when device pointers are host pointers (the CPU): the model's weights and the caller's buffers
  // are then used in place, with no copies.
  virtual bool host_memory() const = 0;
  // The queue every op of this backend runs on, for libraries that queue beside it (NCCL): a cudaStream_t
  // on CUDA; null on the CPU, where ops run as they are called.
  virtual void* native_stream() const { return nullptr; }

  // ---- memory ----
  // Fails (Error) naming the bytes asked for and the device's free memory.
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* ptr) noexcept = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;  // waits for queued work
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;           // device to device
  virtual void fill_zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() = 0;

  // ---- ops: the contracts are in ops/<op>.h ----
  // Empty when this backend runs the op with these types and sizes, otherwise why not (the model turns it
  // into an error before running anything).
  virtual std::string unsupported(const OpQuery& query) const = 0;

  virtual void embedding(const EmbeddingParams& p) = 0;
  virtual size_t rmsnorm_workspace(const RmsNormParams& p) const = 0;
  virtual void rmsnorm(const RmsNormParams& p, void* workspace) = 0;
  virtual size_t matmul_workspace(const MatmulParams& p) const = 0;
  virtual void matmul(const MatmulParams& p, void* workspace) = 0;
  virtual size_t conv1d_workspace(const Conv1dParams& p) const = 0;
  virtual void conv1d(const Conv1dParams& p, void* workspace) = 0;
  virtual size_t scan_workspace(const ScanParams& p) const = 0;
  // The interval at which this backend's scan keeps chunk states (ScanParams::state_chunk), given the one
  // a caller would like: the CPU takes any; the CUDA scan keeps its own (kCudaStateChunk).
  virtual int scan_state_chunk(int wanted) const { return wanted; }
  virtual void scan(const ScanParams& p, void* workspace) = 0;
  // ids (M) = the index of each row's largest value in x (M, N) fp32 (the first on ties): greedy decoding
  // without moving the logits off the device.
  virtual void argmax(int32_t* ids, const float* x, int64_t M, int N) = 0;

  // ---- training: the backward ops (activation gradients written, parameter gradients accumulated) ----
  virtual size_t embedding_bwd_workspace(const EmbeddingBwdParams& p) const = 0;
  virtual void embedding_bwd(const EmbeddingBwdParams& p, void* workspace) = 0;
  virtual size_t rmsnorm_bwd_workspace(const RmsNormBwdParams& p) const = 0;
  virtual void rmsnorm_bwd(const RmsNormBwdParams& p, void* workspace) = 0;
  virtual size_t matmul_bwd_workspace(const MatmulBwdParams& p) const = 0;
  virtual void matmul_bwd(const MatmulBwdParams& p, void* workspace) = 0;
  virtual size_t conv1d_bwd_workspace(const Conv1dBwdParams& p) const = 0;
  virtual void conv1d_bwd(const Conv1dBwdParams& p, void* workspace) = 0;
  virtual size_t scan_bwd_workspace(const ScanBwdParams& p) const = 0;
  virtual void scan_bwd(const ScanBwdParams& p, void* workspace) = 0;
  virtual size_t xent_workspace(const XentParams& p) const = 0;
  virtual void xent(const XentParams& p, void* workspace) = 0;
  // The SSM's A from its parameter, and the parameter's gradient from A's (Op::SsmA):
  // A = −exp(A_log) and dA_log += dA ⊙ A, over n fp32 values.
  virtual void ssm_A(float* A, const float* A_log, int64_t n) = 0;
  virtual void ssm_dA_log(float* dA_log, const float* dA, const float* A, int64_t n) = 0;
  // The optimizer step (ops/adamw.h, Op::AdamW): scale, global norm, clipping and AdamW, on the device.
  virtual size_t adamw_workspace(const AdamWParams& p) const = 0;
  virtual void adamw(const AdamWParams& p, void* workspace) = 0;
  // dst (n) in dst_dtype = src (n) in src_dtype, each of F32, BF16 and F16 (Op::Convert), rounded to
  // nearest even where dst is narrower (as torch's .to() and CUDA's __float2bfloat16_rn): mixed-precision
  // training makes the low-precision copies of its fp32 weights with it, and converts gradients between
  // the fp32 residual stream and the low-precision activations.
  virtual void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) = 0;

  // ---- memory accounting ----
  // The most bytes this backend's allocate() has held at once since the last reset_peak(), or -1 where
  // it does not count them (the CPU: its peak resident memory says more).
  virtual int64_t peak_allocated() const { return -1; }
  virtual void reset_peak() {}

  // ---- recorded work (CUDA graphs) ----
  // Between begin_capture() and end_capture() the queued ops are recorded, not run; replay() runs the
  // recording again, on the same addresses: a decode step becomes one launch instead of hundreds. Only
  // ops may be queued while recording (no upload, download or synchronize). Backends that cannot record
  // say so in can_capture(), and the model then runs the work as it comes.
  class Graph {
   public:
    virtual ~Graph() = default;
  };
  virtual bool can_capture() const { return false; }
  virtual void begin_capture();
  virtual std::unique_ptr<Graph> end_capture();
  virtual void replay(Graph& graph);
};

// For backends that do not fuse the Δ product of a scan (ScanParams::delta_proj), in two steps: the matmul
// that writes the product into `product` (delta_product_bytes(p)), and the params of the plain scan over it.
MatmulParams delta_product(const ScanParams& p, void* product);
ScanParams over_delta_product(const ScanParams& p, void* product);

// Bytes on a backend's device, released with the object. Move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend& backend, size_t bytes) : backend_(&backend), data_(bytes ? backend.allocate(bytes) : nullptr), bytes_(bytes) {}
  ~Buffer() { reset(); }
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      reset();
      backend_ = other.backend_;
      data_ = other.data_;
      bytes_ = other.bytes_;
      other.data_ = nullptr;
      other.bytes_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  size_t bytes() const { return bytes_; }
  Backend* backend() const { return backend_; }
  void reset() {
    if (data_) backend_->release(data_);
    data_ = nullptr;
    bytes_ = 0;
  }

 private:
  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace mamba
