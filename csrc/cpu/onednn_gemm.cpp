// See onednn_gemm.h. The op is looked up by name through the dispatcher and called boxed, so no
// oneDNN header or typed signature is compiled in: a torch without the op gets at::mm.
#include "onednn_gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace flashseq {
namespace cpu {

namespace {

const c10::OperatorHandle* linear_pointwise_op() {
  static const std::optional<c10::OperatorHandle> handle =
      c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  return handle.has_value() ? &*handle : nullptr;
}

}  // namespace

at::Tensor mm_transposed_b(const at::Tensor& a, const at::Tensor& b_t) {
  const c10::OperatorHandle* op = linear_pointwise_op();
  if (op == nullptr || a.scalar_type() != at::kFloat || b_t.scalar_type() != at::kFloat ||
      a.numel() == 0 || b_t.numel() == 0) {
    return at::mm(a, b_t.t());
  }
  // (X, W, B, attr, scalars, algorithm): X @ W^T with no bias and no fused activation
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(a);
  stack.emplace_back(b_t);
  stack.emplace_back(c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op->callBoxed(&stack);
  return stack.back().toTensor();
}

}  // namespace cpu
}  // namespace flashseq
