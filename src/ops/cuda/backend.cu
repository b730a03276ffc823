#include "ops/cuda/backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/error.h"
#include "ops/cuda/check.h"
#include "ops/cuda/cublas.h"
#include "ops/cuda/conv1d.h"
#include "ops/cuda/ops.h"
#include "ops/cuda/scan.h"

namespace mamba::cuda {

namespace {

constexpr size_t kCublasWorkspace = 32u << 20;  // cuBLAS's own scratch, fixed so that graphs can record it

std::string mib(size_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

class CudaGraph final : public Backend::Graph {
 public:
  explicit CudaGraph(cudaGraphExec_t exec) : exec_(exec) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  cudaGraphExec_t exec() const { return exec_; }

 private:
  cudaGraphExec_t exec_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int index) : index_(index) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) fail("device cuda:", index, ": no usable CUDA GPU (", cudaGetErrorString(err), ")");
    if (index < 0 || index >= count) fail("device cuda:", index, ": this machine has ", count, " CUDA GPU(s)");
    MAMBA_CUDA_CHECK(cudaSetDevice(index_));
    cudaDeviceProp prop{};
    MAMBA_CUDA_CHECK(cudaGetDeviceProperties(&prop, index_));
    name_ = prop.name;
    if (prop.major < 8) {
      fail("device cuda:", index, " (", name_, ", compute capability ", prop.major, ".", prop.minor,
           "): the kernels need 8.0 or newer (A100, H100, H200)");
    }
    MAMBA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    check_cublas(blas::create(&cublas_), "cublasCreate");
    check_cublas(blas::set_stream(cublas_, stream_), "cublasSetStream");
    MAMBA_CUDA_CHECK(cudaMalloc(&cublas_workspace_, kCublasWorkspace));
    check_cublas(blas::set_workspace(cublas_, cublas_workspace_, kCublasWorkspace), "cublasSetWorkspace");
  }

  Device device() const override { return Device{Device::Kind::Cuda, index_}; }
  std::string describe() const override { return "cuda:" + std::to_string(index_) + " (" + name_ + ", cuBLAS)"; }
  bool host_memory() const override { return false; }
  void* native_stream() const override { return stream_; }

  void* allocate(size_t bytes) override {
    use();
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free allocation error
      size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      fail("out of GPU memory on cuda:", index_, ": ", mib(bytes), " asked for, ", mib(free), " free of ", mib(total));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[p] = bytes;
    current_ += static_cast<int64_t>(bytes);
    peak_ = std::max(peak_, current_);
    return p;
  }
  void release(void* ptr) noexcept override {
    cudaSetDevice(index_);
    cudaFree(ptr);
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = sizes_.find(ptr); it != sizes_.end()) {
      current_ -= static_cast<int64_t>(it->second);
      sizes_.erase(it);
    }
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    use();
    // From pageable memory the copy returns once the source has been staged, so the caller may reuse it.
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void download(void* dst, const void* src, size_t bytes) override {
    use();
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    use();
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void fill_zero(void* dst, size_t bytes) override {
    use();
    MAMBA_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
  }
  void synchronize() override {
    use();
    MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::string unsupported(const OpQuery& q) const override {
    if (q.dtype != DType::F32 && q.dtype != DType::BF16 && q.dtype != DType::F16) {
      return "CUDA activations are F32, BF16 or F16";
    }
    if ((q.op == Op::Matmul || q.op == Op::Embedding || q.op == Op::MatmulBwd || q.op == Op::Xent) &&
        q.weight != q.dtype) {
      return "on CUDA the weights take the activations' type (" + std::string(dtype_name(q.dtype)) + "), not " +
             std::string(dtype_name(q.weight));
    }
    if (q.op == Op::Scan && q.bc_per_channel) {
      return "the LTI form of the scan (\"ssm_mode\": \"lti\") runs on the CPU only";
    }
    if (q.op == Op::Scan && (q.dstate < 1 || q.dstate > 256)) {
      return "the CUDA scan holds 1 to 256 states per channel, not " + std::to_string(q.dstate);
    }
    if (q.op == Op::ScanBwd && q.dstate > 64) return "the CUDA scan's backward holds at most 64 states per channel";
    if ((q.op == Op::Conv1d || q.op == Op::Conv1dBwd) && (q.width < 1 || q.width > kMaxConvWidth)) {
      return "the CUDA convolution takes widths 1 to " + std::to_string(kMaxConvWidth) + ", not " +
             std::to_string(q.width);
    }
    return {};
  }

  void embedding(const EmbeddingParams& p) override {
    use();
    embedding_fwd(p, stream_);
  }
  size_t rmsnorm_workspace(const RmsNormParams&) const override { return 0; }
  void rmsnorm(const RmsNormParams& p, void*) override {
    use();
    rmsnorm_fwd(p, stream_);
  }
  size_t matmul_workspace(const MatmulParams& p) const override { return cuda::matmul_workspace(p); }
  void matmul(const MatmulParams& p, void* workspace) override {
    use();
    matmul_fwd(cublas_, p, stream_, workspace);
  }

  // The decode step updates its tail in place; the sequence kernel writes the new tail apart from the old,
  // so an in-place call reads a copy of the old one from the workspace.
  size_t conv1d_workspace(const Conv1dParams& p) const override {
    if (decode_conv(p) || !p.tail_in || p.tail_in != p.tail_out) return 0;
    return sizeof(float) * static_cast<size_t>(p.batch) * (p.width - 1) * p.dim;
  }
  void conv1d(const Conv1dParams& p, void* workspace) override {
    use();
    if (decode_conv(p)) {
      conv1d_silu_step(p.out, p.tail_out, p.x, p.x_stride, p.weight, p.bias, p.batch, p.dim, p.width, p.dtype, stream_);
      return;
    }
    Conv1dParams q = p;
    if (p.tail_in && p.tail_in == p.tail_out) {
      MAMBA_CUDA_CHECK(cudaMemcpyAsync(workspace, p.tail_in, conv1d_workspace(p), cudaMemcpyDeviceToDevice, stream_));
      q.tail_in = static_cast<const float*>(workspace);
    }
    conv1d_silu_fwd(q, stream_);
  }

  int scan_state_chunk(int) const override { return kCudaStateChunk; }
  // A decode step of a few sequences computes a low-rank Δ (delta_proj) in its kernel; more sequences
  // (where the product's weight is better read once for all of them) and a sequence run the product
  // first, into the front of the workspace.
  size_t scan_workspace(const ScanParams& p) const override {
    if (decode_scan(p)) return p.delta_proj && p.batch > kFusedDeltaBatch ? delta_product_bytes(p) : 0;
    if (p.delta_proj) return delta_product_bytes(p) + selective_scan_fwd_workspace(over_delta_product(p, nullptr));
    return selective_scan_fwd_workspace(p);
  }
  void scan(const ScanParams& p, void* workspace) override {
    use();
    if (decode_scan(p) && p.delta_proj && p.batch > kFusedDeltaBatch) {
      matmul_fwd(cublas_, delta_product(p, workspace), stream_, nullptr);
      selective_scan_step(over_delta_product(p, workspace), p.state_out, stream_);
    } else if (decode_scan(p)) {
      selective_scan_step(p, p.state_out, stream_);
    } else if (p.delta_proj) {
      matmul_fwd(cublas_, delta_product(p, workspace), stream_, nullptr);
      selective_scan_fwd(over_delta_product(p, workspace), static_cast<char*>(workspace) + delta_product_bytes(p), stream_);
    } else {
      selective_scan_fwd(p, workspace, stream_);
    }
  }

  void argmax(int32_t* ids, const float* x, int64_t M, int N) override {
    use();
    argmax_fwd(ids, x, M, N, stream_);
  }

  // The backward, the loss and the optimizer.
  size_t embedding_bwd_workspace(const EmbeddingBwdParams& p) const override { return cuda::embedding_bwd_workspace(p); }
  void embedding_bwd(const EmbeddingBwdParams& p, void* workspace) override {
    use();
    cuda::embedding_bwd(p, workspace, stream_);
  }
  size_t rmsnorm_bwd_workspace(const RmsNormBwdParams& p) const override { return cuda::rmsnorm_bwd_workspace(p); }
  void rmsnorm_bwd(const RmsNormBwdParams& p, void* workspace) override {
    use();
    cuda::rmsnorm_bwd(p, workspace, stream_);
  }
  size_t matmul_bwd_workspace(const MatmulBwdParams&) const override { return 0; }
  void matmul_bwd(const MatmulBwdParams& p, void*) override {
    use();
    cuda::matmul_bwd(cublas_, p, stream_);
  }
  size_t xent_workspace(const XentParams& p) const override { return cuda::xent_workspace(p); }
  void xent(const XentParams& p, void* workspace) override {
    use();
    cuda::xent(cublas_, p, workspace, stream_);
  }
  size_t conv1d_bwd_workspace(const Conv1dBwdParams& p) const override { return conv1d_silu_bwd_workspace(p); }
  void conv1d_bwd(const Conv1dBwdParams& p, void* workspace) override {
    use();
    conv1d_silu_bwd(p, workspace, stream_);
  }
  size_t scan_bwd_workspace(const ScanBwdParams& p) const override { return selective_scan_bwd_workspace(p); }
  void scan_bwd(const ScanBwdParams& p, void* workspace) override {
    if (p.fwd.delta_proj) fail("scan backward: Δ as a product (delta_proj) is for the forward only");
    use();
    selective_scan_bwd(p, workspace, stream_);
  }
  void ssm_A(float* A, const float* A_log, int64_t n) override {
    use();
    ssm_A_fwd(A, A_log, n, stream_);
  }
  void ssm_dA_log(float* dA_log, const float* dA, const float* A, int64_t n) override {
    use();
    ssm_dA_log_bwd(dA_log, dA, A, n, stream_);
  }

  size_t adamw_workspace(const AdamWParams& p) const override { return cuda::adamw_workspace(p); }
  void adamw(const AdamWParams& p, void* workspace) override {
    use();
    cuda::adamw(p, workspace, stream_);
  }
  void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) override {
    use();
    cuda::convert(dst, dst_dtype, src, src_dtype, n, stream_);
  }

  int64_t peak_allocated() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_ = current_;
  }

  bool can_capture() const override { return true; }
  void begin_capture() override {
    use();
    MAMBA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  }
  std::unique_ptr<Graph> end_capture() override {
    cudaGraph_t graph = nullptr;
    MAMBA_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    MAMBA_CUDA_CHECK(err);
    return std::make_unique<CudaGraph>(exec);
  }
  void replay(Graph& graph) override {
    use();
    MAMBA_CUDA_CHECK(cudaGraphLaunch(static_cast<CudaGraph&>(graph).exec(), stream_));
  }

 private:
  static constexpr int kFusedDeltaBatch = 8;  // the most sequences whose Δ the step kernel computes itself
  // One token of sequences whose conv tail / SSM state is updated in place: the step kernels.
  static bool decode_conv(const Conv1dParams& p) {
    return p.seqlen == 1 && p.tail_in && p.tail_in == p.tail_out && p.out_stride == p.dim;
  }
  static bool decode_scan(const ScanParams& p) {
    return p.seqlen == 1 && p.state_in && p.state_in == p.state_out && !p.chunk_states;
  }
  static void check_cublas(cublasStatus_t status, const char* what) {
    if (status != CUBLAS_STATUS_SUCCESS) fail(what, ": ", blas::status_string(status));
  }
  // Every call runs on this backend's GPU, whichever the calling thread last used.
  void use() const {
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess || current != index_) MAMBA_CUDA_CHECK(cudaSetDevice(index_));
  }

  int index_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_workspace_ = nullptr;
  // What allocate() holds, for peak_allocated() (cuBLAS's workspace, allocated apart, not counted).
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  int64_t current_ = 0, peak_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_backend(int index) { return std::make_unique<CudaBackend>(index); }

}  // namespace mamba::cuda
