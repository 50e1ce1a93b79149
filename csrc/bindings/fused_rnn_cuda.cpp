// Python binding of one compiled forward instantiation of the persistent CUDA kernels
// (csrc/fused/fused_rnn_fwd.cu, built per plan by flashseq/kernels/fused_rnn/cuda.py). Checks
// the tensors, fills the raw-pointer parameters and launches on the current stream; the
// allocation of outputs and work buffers is the Python side's.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "../fused/launch.h"

namespace {

using flashseq::fused::FwdLaunch;
using flashseq::fused::FwdParams;

template <int N>
void strides(const at::Tensor& t, long long (&out)[N], const char* name) {
  TORCH_CHECK(t.dim() == N, name, " must have ", N, " dimensions; got shape ", t.sizes());
  for (int i = 0; i < N; ++i) out[i] = t.stride(i);
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device(),
              "; got ", t.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must be ", like.scalar_type(),
              "; got ", t.scalar_type());
}

// [grid_x, grid_y, threads, smem_bytes, blocks_per_head, BB, DHP, cluster]
std::vector<int64_t> launch_shape(int64_t batch, int64_t heads) {
  const FwdLaunch s = flashseq::fused::fwd_launch_shape(static_cast<int>(batch), static_cast<int>(heads));
  return {s.grid_x, s.grid_y, s.threads, s.smem_bytes, s.blocks_per_head, s.tile_b,
          s.padded_head_dim, s.cluster};
}

// wx [B, T, G, NH, DH], rt [G, NH, DHP, DHP] (transposed, zero-padded, contiguous), b [G, NH, DH],
// states0 [S, B, NH, DH], lengths [B] int64 or None, h [B, T, NH, DH] and last [S, B, NH, DH]
// (written), xchg [2, NH, tiles*BB, DHP] and barrier [tiles*NH] int32 zeros (split heads
// without a cluster; otherwise any tensors, unused); save_gates / save_states: the save mode
// for the backward (both or neither), fp32 contiguous [T, kNumSaved, B, NH, DH] (may be empty
// when the cell saves nothing) and [T, S, B, NH, DH] (csrc/fused/layout_bwd.h saved_offset).
void forward(const at::Tensor& wx, const at::Tensor& rt, const at::Tensor& b,
             const at::Tensor& states0, const c10::optional<at::Tensor>& lengths, at::Tensor& h,
             at::Tensor& last, at::Tensor& xchg, at::Tensor& barrier,
             const c10::optional<at::Tensor>& save_gates, const c10::optional<at::Tensor>& save_states) {
  TORCH_CHECK(wx.is_cuda(), "wx must be a CUDA tensor; got ", wx.device());
  for (auto [t, name] : {std::pair{&rt, "rt"}, {&b, "b"}, {&states0, "states0"}, {&h, "h"},
                         {&last, "last_states"}})
    check(*t, wx, name);
  TORCH_CHECK(rt.is_contiguous(), "rt must be contiguous");
  const c10::cuda::CUDAGuard guard(wx.device());
  FwdParams p = {};
  p.wx = wx.data_ptr();
  strides<5>(wx, p.wx_stride, "wx");
  p.rt = rt.data_ptr();
  p.bias = b.data_ptr();
  strides<3>(b, p.bias_stride, "b");
  p.states0 = states0.data_ptr();
  strides<4>(states0, p.states0_stride, "states0");
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->is_cuda() && lengths->scalar_type() == at::kLong && lengths->is_contiguous(),
                "lengths must be a contiguous int64 CUDA tensor");
    p.lengths = reinterpret_cast<const long long*>(lengths->data_ptr<int64_t>());
  }
  p.h = h.data_ptr();
  strides<4>(h, p.h_stride, "h");
  p.last_states = last.data_ptr();
  strides<4>(last, p.last_stride, "last_states");
  p.batch = static_cast<int>(wx.size(0));
  p.steps = static_cast<int>(wx.size(1));
  p.heads = static_cast<int>(wx.size(3));
  p.head_dim = static_cast<int>(wx.size(4));
  const FwdLaunch shape = flashseq::fused::fwd_launch_shape(p.batch, p.heads);
  TORCH_CHECK(rt.size(2) == shape.padded_head_dim && rt.size(3) == shape.padded_head_dim,
              "rt must be [G, NH, ", shape.padded_head_dim, ", ", shape.padded_head_dim, "]; got ",
              rt.sizes());
  TORCH_CHECK(rt.numel() < (int64_t(1) << 31), "rt has over 2^31 elements (32-bit offsets)");
  if (shape.blocks_per_head > 1 && !shape.cluster) {
    check(xchg, wx, "xchg");
    TORCH_CHECK(xchg.is_contiguous() &&
                    xchg.numel() >= int64_t(2) * p.heads * shape.grid_y * shape.tile_b * shape.padded_head_dim,
                "xchg must be contiguous [2, NH, tiles*BB, DHP]");
    TORCH_CHECK(barrier.is_cuda() && barrier.scalar_type() == at::kInt && barrier.is_contiguous() &&
                    barrier.numel() >= int64_t(shape.grid_y) * p.heads,
                "barrier must be contiguous int32 [tiles*NH] zeros");
    p.xchg = xchg.data_ptr();
    p.barrier = reinterpret_cast<unsigned*>(barrier.data_ptr<int>());
  }
  TORCH_CHECK(save_gates.has_value() == save_states.has_value(),
              "save_gates and save_states go together (the backward needs both)");
  if (save_states.has_value()) {
    const int64_t per_step = static_cast<int64_t>(p.batch) * p.heads * p.head_dim;
    for (auto [t, name] : {std::pair{&*save_gates, "save_gates"}, {&*save_states, "save_states"}}) {
      TORCH_CHECK(t->is_cuda() && t->device() == wx.device() && t->scalar_type() == at::kFloat &&
                      t->is_contiguous() && t->numel() % (per_step * std::max(p.steps, 1)) == 0,
                  name, " must be a contiguous float32 [T, X, B, NH, DH] tensor on ", wx.device());
    }
    TORCH_CHECK(save_states->numel() >= per_step * p.steps * last.size(0),
                "save_states must be [T, S, B, NH, DH]");
    p.save_gates = save_gates->numel() > 0 ? save_gates->data_ptr<float>() : nullptr;
    p.save_states = save_states->data_ptr<float>();
  }
  const cudaError_t err = flashseq::fused::launch_fused_rnn_fwd(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "fused_rnn CUDA forward launch failed: ", cudaGetErrorString(err));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("launch_shape", &launch_shape, "grid_x, grid_y, threads, smem, blocks/head, BB, DHP, cluster");
  m.def("forward", &forward, "persistent fused_rnn forward (one plan's instantiation)");
}
