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

// 2-byte elements in pairs: with one 2-byte element a thread, a warp moves 64 bytes of a row per
// instruction on each side, half a 128-byte line, and the transpose runs far below the copy bandwidth
// (dev/notes/gpu-model.md has the figures). Here a 64 × 64 tile: each
// thread reads two neighbouring columns of a source row as one word and writes two neighbouring source
// rows, the destination's neighbouring columns, as one word, so a warp moves 128 bytes a row both ways.
// The tile's rows are 65 elements apart: the write phase's reads of rows 2i and 2i + 1 fall in distinct
// banks across the warp. Needs 4-byte aligned pairs on both sides (dispatcher below).
constexpr int kPairTile = 64;

__global__ void transpose_pairs_kernel(uint16_t* dst, const uint16_t* src, int64_t rows, int64_t cols,
                                       int64_t src_batch, int64_t src_row) {
  __shared__ uint16_t tile[kPairTile][kPairTile + 1];
  const int64_t b = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kPairTile, c0 = static_cast<int64_t>(blockIdx.x) * kPairTile;
  const int j = 2 * threadIdx.x;  // the pair's first column in the tile (read) or row (write)
  const uint16_t* s = src + b * src_batch;
  for (int i = threadIdx.y; i < kPairTile; i += kRowsPerPass) {
    const int64_t r = r0 + i, c = c0 + j;
    if (r >= rows) break;
    if (c + 1 < cols) {
      const uint32_t v = *reinterpret_cast<const uint32_t*>(s + r * src_row + c);
      tile[i][j] = static_cast<uint16_t>(v), tile[i][j + 1] = static_cast<uint16_t>(v >> 16);
    } else if (c < cols) {
      tile[i][j] = s[r * src_row + c];
    }
  }
  __syncthreads();
  uint16_t* d = dst + b * rows * cols;
  for (int i = threadIdx.y; i < kPairTile; i += kRowsPerPass) {
    const int64_t c = c0 + i, r = r0 + j;
    if (c >= cols) break;
    if (r + 1 < rows) {
      *reinterpret_cast<uint32_t*>(d + c * rows + r) = tile[j][i] | static_cast<uint32_t>(tile[j + 1][i]) << 16;
    } else if (r < rows) {
      d[c * rows + r] = tile[j][i];
    }
  }
}

}  // namespace

void transpose(void* dst, const void* src, int64_t batch, int64_t rows, int64_t cols, int elem_bytes,
               int64_t src_batch_stride, int64_t src_row_stride, cudaStream_t stream) {
  if (batch < 0 || rows < 0 || cols < 0 || batch > 65535) throw std::invalid_argument("transpose: bad sizes");
  if (batch == 0 || rows == 0 || cols == 0) return;
  if ((rows + kTile - 1) / kTile > 65535) throw std::invalid_argument("transpose: too many rows");
  const dim3 block(kTile, kRowsPerPass);
  // Pairs: every source pair and destination pair starts on a 4-byte boundary (even strides and row
  // counts, aligned pointers), as for the drop-in's usual (batch, X, L) tensors with even L and X.
  const bool pairs = elem_bytes == 2 && reinterpret_cast<uintptr_t>(src) % 4 == 0 &&
                     reinterpret_cast<uintptr_t>(dst) % 4 == 0 && src_row_stride % 2 == 0 &&
                     src_batch_stride % 2 == 0 && rows % 2 == 0;
  if (pairs) {
    const dim3 grid(static_cast<unsigned>((cols + kPairTile - 1) / kPairTile),
                    static_cast<unsigned>((rows + kPairTile - 1) / kPairTile), static_cast<unsigned>(batch));
    transpose_pairs_kernel<<<grid, block, 0, stream>>>(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src),
                                                       rows, cols, src_batch_stride, src_row_stride);
    MAMBA_CUDA_CHECK_LAUNCH();
    return;
  }
  const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile), static_cast<unsigned>((rows + kTile - 1) / kTile),
                  static_cast<unsigned>(batch));
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
