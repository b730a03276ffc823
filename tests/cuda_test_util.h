// Helpers shared by the CUDA tests: whether a GPU is present, the host side of the input dtypes (rounding
// fp32 to bf16 / fp16 bits and back, as the kernels read them), and device arrays in and out.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "ops/cuda/check.h"
#include "ops/cuda/scan.h"

namespace mamba::cuda::test {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

inline uint16_t bf16_bits(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_value(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f16_bits(float f) {  // round to nearest even (cuda_fp16.h's conversions run on the host too)
  return static_cast<__half_raw>(__float2half_rn(f)).x;
}
inline float f16_value(uint16_t u) {
  __half_raw r;
  r.x = u;
  return __half2float(__half(r));
}

inline const char* dtype_label(DType dtype) {
  return dtype == DType::BF16 ? "bf16" : dtype == DType::F16 ? "f16" : "f32";
}

// Rounds `host` in place to what a `dtype` array holds and returns those 16-bit values (empty for fp32).
inline std::vector<uint16_t> round_to(std::vector<float>& host, DType dtype) {
  std::vector<uint16_t> bits;
  if (dtype == DType::F32) return bits;
  bits.resize(host.size());
  for (size_t i = 0; i < host.size(); i++) {
    bits[i] = dtype == DType::BF16 ? bf16_bits(host[i]) : f16_bits(host[i]);
    host[i] = dtype == DType::BF16 ? bf16_value(bits[i]) : f16_value(bits[i]);
  }
  return bits;
}

// A device copy of a host array, in fp32 or (rounded) bf16 or fp16; the host array is rounded in place so
// that the oracle sees exactly what the GPU sees. Or `bytes` of NaN (0xff bytes in every dtype), so that
// an output element the kernel leaves unwritten fails the comparison.
struct DeviceArray {
  void* ptr = nullptr;
  DeviceArray() = default;
  DeviceArray(std::vector<float>& host, DType dtype) {
    const std::vector<uint16_t> bits = round_to(host, dtype);
    if (dtype != DType::F32) upload(bits.data(), bits.size() * 2);
    else upload(host.data(), host.size() * 4);
  }
  explicit DeviceArray(size_t bytes) {
    MAMBA_CUDA_CHECK(cudaMalloc(&ptr, bytes ? bytes : 1));
    MAMBA_CUDA_CHECK(cudaMemset(ptr, 0xff, bytes));
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : ptr(o.ptr) { o.ptr = nullptr; }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr, o.ptr);
    return *this;
  }
  ~DeviceArray() {
    if (ptr) cudaFree(ptr);
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr); }

 private:
  void upload(const void* src, size_t bytes) {
    MAMBA_CUDA_CHECK(cudaMalloc(&ptr, bytes ? bytes : 1));
    MAMBA_CUDA_CHECK(cudaMemcpy(ptr, src, bytes, cudaMemcpyHostToDevice));
  }
};

// `count` elements of a device array of `dtype`, as fp32.
inline std::vector<float> download(const void* ptr, size_t count, DType dtype) {
  std::vector<float> out(count);
  if (dtype != DType::F32) {
    std::vector<uint16_t> bits(count);
    MAMBA_CUDA_CHECK(cudaMemcpy(bits.data(), ptr, count * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < count; i++) out[i] = dtype == DType::BF16 ? bf16_value(bits[i]) : f16_value(bits[i]);
  } else {
    MAMBA_CUDA_CHECK(cudaMemcpy(out.data(), ptr, count * 4, cudaMemcpyDeviceToHost));
  }
  return out;
}

}  // namespace mamba::cuda::test
