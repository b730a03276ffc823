// The CPU's dense matrix products: fp32 GEMMs in row-major order, and products of bf16 matrices with
// fp32 sums where the CPU multiplies bf16 natively. oneDNN does them when the build found it (Debian's
// libdnnl-dev), else OpenBLAS's cblas_sgemm. oneDNN picks its kernels from the CPU's features by itself;
// OpenBLAS's can be forced by OPENBLAS_CORETYPE, which containers set for reasons of their own (Haswell on
// an AVX-512 machine halves the fp32 rate: docs/performance.md), so the products do not go through it
// when oneDNN is there.
#pragma once

#include <cstdint>
#include <string>

namespace mamba::cpu {

// What does the products here: "oneDNN 2.6.3 GEMMs, bf16 products off", or OpenBLAS's configuration.
std::string gemm_describe();

// C (M, N) = alpha · op(A) · op(B) + beta · C, every matrix row-major with the leading dimension given;
// op(X) = Xᵀ when trans_x.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Whether gemm_bf16 runs here: a build with oneDNN, a CPU with AVX-512 BF16 (vdpbf16ps), and the SIMD
// kernels not held below AVX-512 (MAMBA_CPU_TARGET, cpu::restrict_simd), so forcing AVX2 turns it off.
bool bf16_gemm_available();

// out (M, N) fp32, row stride ldo = inp (M, K) · weightᵀ, inp bf16 with row stride ldi, weight (N, K)
// bf16 contiguous: products of bf16 values summed in fp32. Fails when !bf16_gemm_available().
void gemm_bf16(float* out, int64_t ldo, const uint16_t* inp, int64_t ldi, const uint16_t* weight, int64_t M, int K,
               int N);

}  // namespace mamba::cpu
