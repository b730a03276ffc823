// Batched transpose through shared memory: the PyTorch drop-in's layout change between mamba_ssm's
// channel-major (batch, X, L) arrays and the kernels' token-major (batch, L, X). A copy that walks the
// destination in order reads the source a column at a time; a 32 × 32 tile read by rows and written by
// rows keeps both sides coalesced.
#include <cstdint>
#include <stdexcept>

#include "ops/cuda/check.h"
#include "ops/cuda/ops.h"

namespace mamba::cuda {
namespace {

constexpr int kTile = 32, kRowsPerPass = 8;

// dst (batch, cols, rows) dense = src (batch, rows, cols), src rows `src_row` elements apart and batches
// `src_batch` apart (its columns contiguous).
template <typename T>
__global__ void transpose_kernel(T* dst, const T* src, int64_t rows, int64_t cols, int64_t src_batch,
                                 int64_t src_row) {
  __shared__ T tile[kTile][kTile + 1];  // + 1: the column reads fall in distinct banks
  const int64_t b = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const T* s = src + b * src_batch;
  for (int i = threadIdx.y; i < kTile; i += kRowsPerPass) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = s[r * src_row + c];
  }
  __syncthreads();
  T* d = dst + b * rows * cols;
  for (int i = threadIdx.y; i < kTile; i += kRowsPerPass) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;
    if (r < rows && c < cols) d[c * rows + r] = tile[threadIdx.x][i];
  }
}

}  // namespace

void transpose(void* dst, const void* src, int64_t batch, int64_t rows, int64_t cols, int elem_bytes,
               int64_t src_batch_stride, int64_t src_row_stride, cudaStream_t stream) {
  if (batch < 0 || rows < 0 || cols < 0 || batch > 65535) throw std::invalid_argument("transpose: bad sizes");
  if (batch == 0 || rows == 0 || cols == 0) return;
  if ((rows + kTile - 1) / kTile > 65535) throw std::invalid_argument("transpose: too many rows");
  const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile), static_cast<unsigned>((rows + kTile - 1) / kTile),
                  static_cast<unsigned>(batch));
  const dim3 block(kTile, kRowsPerPass);
  switch (elem_bytes) {
    case 2:
      transpose_kernel<<<grid, block, 0, stream>>>(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src),
                                                   rows, cols, src_batch_stride, src_row_stride);
      break;
    case 4:
      transpose_kernel<<<grid, block, 0, stream>>>(static_cast<uint32_t*>(dst), static_cast<const uint32_t*>(src),
                                                   rows, cols, src_batch_stride, src_row_stride);
      break;
    default:
      throw std::invalid_argument("transpose: elements of 2 or 4 bytes");
  }
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda
