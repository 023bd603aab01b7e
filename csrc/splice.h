// Shared declarations of the splice kernels (csrc/splice_kernels.cu) and their bindings
// (csrc/splice.cpp). Arguments are validated in splice.cpp; the launchers trust them.
#pragma once

#include <ATen/ATen.h>

namespace megatron_ponder {

// out[t * num_slots + 0] = emb[t]; out[t * num_slots + j] = prev[t * prev_slots + j - 1].
void splice_forward_cuda(const at::Tensor& emb, const at::Tensor& prev, const at::Tensor& out,
                         int64_t num_slots, int64_t prev_slots);

// grad_prev[t * prev_slots + j] = grad_out[t * num_slots + j + 1], zeros for j == num_slots - 1
// (the slot a Jacobi pass drops). The embedding's gradient is a view of grad_out's slot 0.
void splice_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_prev,
                          int64_t num_slots, int64_t prev_slots);

}  // namespace megatron_ponder
