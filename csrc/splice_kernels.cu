// CUDA kernels of the splice. Both directions are row copies: every tensor is a sequence of rows
// of b * h dense elements (one row per slot), so one kernel template copies whole rows, and the
// direction only decides which source row feeds which destination row. The copy is done in raw
// bytes with the widest vector (16/8/4/2 bytes) that every pointer, row length and row stride
// allows, so the same code serves fp32, bf16, fp16 and fp64 bit-exactly and any hidden size.

#include "splice.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>

namespace megatron_ponder {
namespace {

constexpr int kThreads = 256;  // per block, arranged (threads_x along a row) x (rows per block)
constexpr int kUnroll = 4;     // vectors per thread kept in flight before the first store

// Forward: destination row r = (token, slot) of out.
struct ForwardRows {
  const char* emb;
  const char* prev;
  char* out;
  int64_t emb_stride;   // bytes between rows
  int64_t prev_stride;  // bytes between rows
  int64_t row_bytes;
  int64_t num_slots;
  int64_t prev_slots;
  int64_t num_rows;     // tokens * num_slots

  __device__ __forceinline__ void locate(int64_t row, const char*& src, char*& dst) const {
    const int64_t token = row / num_slots;
    const int64_t slot = row - token * num_slots;
    src = slot == 0 ? emb + token * emb_stride
                    : prev + (token * prev_slots + slot - 1) * prev_stride;
    dst = out + row * row_bytes;
  }
};

// Backward: destination row r = (token, j) of grad_prev; its source is grad_out slot j + 1, or
// zeros for the slot a Jacobi/final pass drops (j == num_slots - 1, only when
// prev_slots == num_slots). grad_emb is a view of grad_out's slot 0 and is not copied.
struct BackwardRows {
  const char* grad_out;
  char* grad_prev;
  int64_t grad_out_stride;  // bytes between rows; grad_prev is contiguous
  int64_t row_bytes;
  int64_t num_slots;
  int64_t prev_slots;
  int64_t num_rows;         // tokens * prev_slots

  __device__ __forceinline__ void locate(int64_t row, const char*& src, char*& dst) const {
    const int64_t token = row / prev_slots;
    const int64_t j = row - token * prev_slots;
    src = j + 1 < num_slots ? grad_out + (token * num_slots + j + 1) * grad_out_stride : nullptr;
    dst = grad_prev + row * row_bytes;
  }
};

// blockIdx.x * blockDim.y + threadIdx.y picks the row, blockIdx.y the chunk of the row: the row's
// source is decided once per thread, with no division per element. A null source writes zeros.
template <typename Vec, typename Rows>
__global__ void __launch_bounds__(kThreads) copy_rows_kernel(const Rows rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows.num_rows) return;
  const char* src;
  char* dst;
  rows.locate(row, src, dst);
  const Vec* __restrict__ in = reinterpret_cast<const Vec*>(src);
  Vec* __restrict__ out = reinterpret_cast<Vec*>(dst);
  const int64_t row_vecs = rows.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const int64_t first = static_cast<int64_t>(blockIdx.y) * blockDim.x * kUnroll + threadIdx.x;

  Vec v[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t c = first + static_cast<int64_t>(u) * blockDim.x;
    v[u] = Vec{};
    if (in != nullptr && c < row_vecs) v[u] = in[c];
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t c = first + static_cast<int64_t>(u) * blockDim.x;
    if (c < row_vecs) out[c] = v[u];
  }
}

template <typename Vec, typename Rows>
void launch_width(const Rows& rows) {
  const int64_t row_vecs = rows.row_bytes / static_cast<int64_t>(sizeof(Vec));
  // Short rows (small b * h) share a block so that no block is mostly idle threads.
  int threads_x = 32;
  while (threads_x < kThreads && static_cast<int64_t>(threads_x) * kUnroll < row_vecs) {
    threads_x *= 2;
  }
  const int threads_y = kThreads / threads_x;
  const int64_t grid_x = (rows.num_rows + threads_y - 1) / threads_y;
  const int64_t per_block = static_cast<int64_t>(threads_x) * kUnroll;
  const int64_t grid_y = (row_vecs + per_block - 1) / per_block;
  TORCH_CHECK(grid_x <= std::numeric_limits<int32_t>::max() && grid_y <= 65535,
              "splice (cuda): tensor too large for the launch grid (rows ", rows.num_rows,
              ", row bytes ", rows.row_bytes, ")");
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  const dim3 block(threads_x, threads_y);
  copy_rows_kernel<Vec, Rows><<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Widest access every address can use: all base pointers, the row length and the row strides
// must be multiples of it (an odd hidden size in bf16 drops to 2-byte accesses, still correct).
int vector_width(std::initializer_list<int64_t> values) {
  int width = 16;
  for (int64_t value : values) {
    while (width > 1 && value % width != 0) width /= 2;
  }
  return width;
}

template <typename Rows>
void launch(const Rows& rows, int width) {
  switch (width) {
    case 16: launch_width<uint4>(rows); break;
    case 8: launch_width<uint2>(rows); break;
    case 4: launch_width<uint32_t>(rows); break;
    case 2: launch_width<uint16_t>(rows); break;
    default: launch_width<uint8_t>(rows); break;
  }
}

int64_t addr(const at::Tensor& t) { return reinterpret_cast<int64_t>(t.data_ptr()); }

}  // namespace

void splice_forward_cuda(const at::Tensor& emb, const at::Tensor& prev, const at::Tensor& out,
                         int64_t num_slots, int64_t prev_slots) {
  const int64_t element = emb.element_size();
  ForwardRows rows;
  rows.emb = static_cast<const char*>(emb.data_ptr());
  rows.prev = static_cast<const char*>(prev.data_ptr());
  rows.out = static_cast<char*>(out.data_ptr());
  rows.emb_stride = emb.stride(0) * element;
  rows.prev_stride = prev.stride(0) * element;
  rows.row_bytes = emb.size(1) * emb.size(2) * element;
  rows.num_slots = num_slots;
  rows.prev_slots = prev_slots;
  rows.num_rows = emb.size(0) * num_slots;
  if (rows.num_rows == 0 || rows.row_bytes == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  launch(rows, vector_width({addr(emb), addr(prev), addr(out), rows.emb_stride, rows.prev_stride,
                             rows.row_bytes}));
}

void splice_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_prev,
                          int64_t num_slots, int64_t prev_slots) {
  const int64_t element = grad_out.element_size();
  BackwardRows rows;
  rows.grad_out = static_cast<const char*>(grad_out.data_ptr());
  rows.grad_prev = static_cast<char*>(grad_prev.data_ptr());
  rows.grad_out_stride = grad_out.stride(0) * element;
  rows.row_bytes = grad_prev.size(1) * grad_prev.size(2) * element;
  rows.num_slots = num_slots;
  rows.prev_slots = prev_slots;
  rows.num_rows = grad_prev.size(0);
  if (rows.num_rows == 0 || rows.row_bytes == 0) return;
  const c10::cuda::CUDAGuard guard(grad_out.device());
  launch(rows, vector_width({addr(grad_out), addr(grad_prev), rows.grad_out_stride,
                             rows.row_bytes}));
}

}  // namespace megatron_ponder
