// Python binding of one compiled backward instantiation of the persistent CUDA kernels
// (csrc/fused/fused_rnn_bwd.cu, built per plan by flashseq/kernels/fused_rnn/cuda.py beside the
// forward's module). Checks the tensors, fills the raw-pointer parameters and launches on the
// current stream; outputs and work buffers are allocated by the Python side, and d(r), d(b) are
// one GEMM / sum over all steps there (from the saved states and d(rh)).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "../fused/launch_bwd.h"

namespace {

using flashseq::fused::BwdParams;
using flashseq::fused::FwdLaunch;

template <int N>
void strides(const at::Tensor& t, long long (&out)[N], const char* name) {
  TORCH_CHECK(t.dim() == N, name, " must have ", N, " dimensions; got shape ", t.sizes());
  for (int i = 0; i < N; ++i) out[i] = t.stride(i);
}

void check(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device(),
              "; got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, "; got ", t.scalar_type());
}

// [grid_x, grid_y, threads, smem_bytes, blocks_per_head, BB, DHP, cluster]
std::vector<int64_t> launch_shape(int64_t batch, int64_t heads) {
  const FwdLaunch s = flashseq::fused::bwd_launch_shape(static_cast<int>(batch), static_cast<int>(heads));
  return {s.grid_x, s.grid_y, s.threads, s.smem_bytes, s.blocks_per_head, s.tile_b,
          s.padded_head_dim, s.cluster};
}

// rp [G, NH, DHP, DHP] (r zero-padded, not transposed, contiguous); save_gates fp32
// [T, kNumSaved, B, NH, DH] (empty when the cell saves nothing) and save_states fp32
// [T, S, B, NH, DH] from the forward's save mode; states0 [S, B, NH, DH]; lengths [B] int64 or
// None; dh [B, T, NH, DH]; dlast [S, B, NH, DH]; written: dwx [B, T, G, NH, DH], drh fp32
// [B, T, G, NH, DH], dstates0 [S, B, NH, DH]; xpart fp32 [2, NH, P, tiles*BB, DHP] and barrier
// int32 [tiles*NH] zeros (split heads without a cluster; otherwise any tensors, unused).
void backward(const at::Tensor& rp, const at::Tensor& save_gates, const at::Tensor& save_states,
              const at::Tensor& states0, const c10::optional<at::Tensor>& lengths,
              const at::Tensor& dh, const at::Tensor& dlast, at::Tensor& dwx, at::Tensor& drh,
              at::Tensor& dstates0, at::Tensor& xpart, at::Tensor& barrier) {
  TORCH_CHECK(rp.is_cuda(), "r must be a CUDA tensor; got ", rp.device());
  const auto dt = rp.scalar_type();
  for (auto [t, name] : {std::pair{&states0, "states0"}, {&dh, "dh"}, {&dlast, "dlast"},
                         {&dwx, "dwx"}, {&dstates0, "dstates0"}})
    check(*t, rp, dt, name);
  check(save_states, rp, at::kFloat, "save_states");
  check(drh, rp, at::kFloat, "drh");
  TORCH_CHECK(rp.is_contiguous() && save_states.is_contiguous() && save_gates.is_contiguous(),
              "r (padded), save_gates and save_states must be contiguous");
  const c10::cuda::CUDAGuard guard(rp.device());
  BwdParams p = {};
  p.batch = static_cast<int>(dwx.size(0));
  p.steps = static_cast<int>(dwx.size(1));
  p.heads = static_cast<int>(dwx.size(3));
  p.head_dim = static_cast<int>(dwx.size(4));
  const int64_t per_step = static_cast<int64_t>(p.batch) * p.heads * p.head_dim;
  TORCH_CHECK(save_states.numel() == per_step * p.steps * states0.size(0),
              "save_states must be [T, S, B, NH, DH]; got ", save_states.sizes());
  if (save_gates.numel() > 0) {
    check(save_gates, rp, at::kFloat, "save_gates");
    TORCH_CHECK(save_gates.numel() % std::max<int64_t>(per_step * p.steps, 1) == 0,
                "save_gates must be [T, kNumSaved, B, NH, DH]; got ", save_gates.sizes());
    p.save_gates = save_gates.data_ptr<float>();
  }
  p.r = rp.data_ptr();
  p.save_states = save_states.numel() > 0 ? save_states.data_ptr<float>() : nullptr;
  p.states0 = states0.data_ptr();
  strides<4>(states0, p.states0_stride, "states0");
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->is_cuda() && lengths->scalar_type() == at::kLong && lengths->is_contiguous(),
                "lengths must be a contiguous int64 CUDA tensor");
    p.lengths = reinterpret_cast<const long long*>(lengths->data_ptr<int64_t>());
  }
  p.dh = dh.data_ptr();
  strides<4>(dh, p.dh_stride, "dh");
  p.dlast = dlast.data_ptr();
  strides<4>(dlast, p.dlast_stride, "dlast");
  p.dwx = dwx.data_ptr();
  strides<5>(dwx, p.dwx_stride, "dwx");
  p.drh = drh.data_ptr<float>();
  strides<5>(drh, p.drh_stride, "drh");
  p.dstates0 = dstates0.data_ptr();
  strides<4>(dstates0, p.dstates0_stride, "dstates0");
  const FwdLaunch shape = flashseq::fused::bwd_launch_shape(p.batch, p.heads);
  TORCH_CHECK(rp.size(2) == shape.padded_head_dim && rp.size(3) == shape.padded_head_dim,
              "r (padded) must be [G, NH, ", shape.padded_head_dim, ", ", shape.padded_head_dim,
              "]; got ", rp.sizes());
  TORCH_CHECK(rp.numel() < (int64_t(1) << 31), "r has over 2^31 elements (32-bit offsets)");
  if (shape.blocks_per_head > 1 && !shape.cluster) {
    check(xpart, rp, at::kFloat, "xpart");
    TORCH_CHECK(xpart.is_contiguous() &&
                    xpart.numel() >= int64_t(2) * p.heads * shape.blocks_per_head * shape.grid_y *
                                         shape.tile_b * shape.padded_head_dim,
                "xpart must be contiguous float32 [2, NH, P, tiles*BB, DHP]");
    TORCH_CHECK(barrier.is_cuda() && barrier.scalar_type() == at::kInt && barrier.is_contiguous() &&
                    barrier.numel() >= int64_t(shape.grid_y) * p.heads,
                "barrier must be contiguous int32 [tiles*NH] zeros");
    p.xpart = xpart.data_ptr<float>();
    p.barrier = reinterpret_cast<unsigned*>(barrier.data_ptr<int>());
  }
  const cudaError_t err = flashseq::fused::launch_fused_rnn_bwd(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "fused_rnn CUDA backward launch failed: ", cudaGetErrorString(err));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("launch_shape", &launch_shape, "grid_x, grid_y, threads, smem, blocks/head, BB, DHP, cluster");
  m.def("backward", &backward, "persistent fused_rnn backward (one plan's instantiation)");
}
