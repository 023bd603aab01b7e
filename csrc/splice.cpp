// Python bindings of the CUDA splice kernels (module megatron_ponder._C). The Python entry point
// (megatron_ponder/ops/splice.py) validates first and gives the friendlier messages; these checks
// repeat the essentials so that a direct call can never read or write out of bounds.

#include <torch/extension.h>

#include "splice.h"

namespace {

// Every [b, h] row must be one dense run of memory; the distance between rows is free.
void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cuda(), "splice (cuda): ", name, " must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 3, "splice (cuda): ", name, " must be [s, b, h], got ", x.sizes());
  const bool dense_h = x.size(2) <= 1 || x.stride(2) == 1;
  const bool dense_b = x.size(1) <= 1 || x.stride(1) == x.size(2);
  TORCH_CHECK(dense_h && dense_b, "splice (cuda): each [b, h] row of ", name,
              " must be dense (strides ", x.strides(), "); pass .contiguous()");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf ||
                  dtype == at::kDouble,
              "splice (cuda): unsupported dtype ", dtype, " for ", name);
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK(b.dim() == 3, "splice (cuda): ", name, " must be [s, b, h], got ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.device() == b.device(),
              "splice (cuda): ", name, " must match in dtype and device");
  TORCH_CHECK(a.size(1) == b.size(1) && a.size(2) == b.size(2), "splice (cuda): ", name,
              " [b, h] ", b.sizes(), " differs from ", a.sizes());
}

// prev_slots from the row counts, with the same rules as splice._check.
int64_t slots_of(int64_t tokens, int64_t rows, int64_t num_slots) {
  TORCH_CHECK(num_slots >= 1, "splice (cuda): num_slots must be >= 1, got ", num_slots);
  if (tokens == 0) {
    TORCH_CHECK(rows == 0, "splice (cuda): prev has rows but emb has no tokens");
    return num_slots - 1;
  }
  TORCH_CHECK(rows % tokens == 0, "splice (cuda): ", rows, " rows are not whole slots of ",
              tokens, " tokens");
  const int64_t prev_slots = rows / tokens;
  TORCH_CHECK(prev_slots >= num_slots - 1, "splice (cuda): cannot build ", num_slots,
              " slots per token from ", prev_slots);
  return prev_slots;
}

void splice_forward(const at::Tensor& emb, const at::Tensor& prev, const at::Tensor& out,
                    int64_t num_slots) {
  check_rows(emb, "emb");
  check_rows(prev, "prev");
  check_same(emb, prev, "prev");
  check_same(emb, out, "out");
  TORCH_CHECK(out.is_contiguous() && out.size(0) == emb.size(0) * num_slots,
              "splice (cuda): out must be contiguous [", emb.size(0) * num_slots, ", b, h], got ",
              out.sizes());
  const int64_t prev_slots = slots_of(emb.size(0), prev.size(0), num_slots);
  megatron_ponder::splice_forward_cuda(emb, prev, out, num_slots, prev_slots);
}

void splice_backward(const at::Tensor& grad_out, const at::Tensor& grad_prev,
                     int64_t num_slots) {
  check_rows(grad_out, "grad_out");
  check_same(grad_out, grad_prev, "grad_prev");
  TORCH_CHECK(grad_prev.is_contiguous(), "splice (cuda): grad_prev must be contiguous");
  TORCH_CHECK(num_slots >= 1, "splice (cuda): num_slots must be >= 1, got ", num_slots);
  TORCH_CHECK(grad_out.size(0) % num_slots == 0, "splice (cuda): grad_out has ",
              grad_out.size(0), " rows, not a multiple of num_slots ", num_slots);
  const int64_t prev_slots = slots_of(grad_out.size(0) / num_slots, grad_prev.size(0), num_slots);
  megatron_ponder::splice_backward_cuda(grad_out, grad_prev, num_slots, prev_slots);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megatron_ponder CUDA kernels";
  m.def("splice_forward", &splice_forward, "Splice forward into a preallocated out",
        py::arg("emb"), py::arg("prev"), py::arg("out"), py::arg("num_slots"));
  m.def("splice_backward", &splice_backward,
        "Splice backward (shifted gradient of prev) into a preallocated grad_prev",
        py::arg("grad_out"), py::arg("grad_prev"), py::arg("num_slots"));
}
