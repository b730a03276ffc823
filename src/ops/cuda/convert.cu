// Conversions between F32, BF16 and F16 arrays (Backend::convert): mixed-precision training's
// low-precision copies of its fp32 weights, made after every optimizer step, and its gradients between the
// fp32 residual stream and the activations' type. Narrowing rounds to nearest even (__float2bfloat16_rn,
// __float2half_rn), as the CPU's conversions (core/dtype.h) do.
#include <algorithm>
#include <stdexcept>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

constexpr int kThreads = 256;

template <typename To, typename From>
__global__ void __launch_bounds__(kThreads) convert_kernel(To* dst, const From* src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    dst[i] = from_float<To>(to_float(src[i]));
  }
}

}  // namespace

void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  auto typed = [](DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; };
  if (!typed(dst_dtype) || !typed(src_dtype)) throw std::invalid_argument("convert: F32, BF16 or F16 only");
  if (dst_dtype == src_dtype) {
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * dtype_size(dst_dtype), cudaMemcpyDeviceToDevice,
                                     stream));
    return;
  }
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 20));
  with_dtype(dst_dtype, [&](auto to) {
    with_dtype(src_dtype, [&](auto from) {
      using To = decltype(to);
      using From = decltype(from);
      convert_kernel<To, From><<<grid, kThreads, 0, stream>>>(static_cast<To*>(dst), static_cast<const From*>(src), n);
    });
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda
