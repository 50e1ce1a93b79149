// Python bindings of the compiled CPU loop (module flashseq._C, or the JIT-built twin of
// flashseq/_jit.py). The torch.library custom ops, their shape functions and autograd live in
// flashseq/kernels/fused_rnn/cpu.py and call these functions.
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "big_alloc.h"
#include "fused_rnn_cpu.h"
#include "fused_rnn_extras.h"
#include "pointwise_avx512.h"
#include "row_gemv_avx512.h"
#include "step_gemm.h"
#include "vec_lanes.h"
#include "weight_grad.h"

// setup.py passes the build key of flashseq/_jit.py (torch version, flags, sources) so that an
// install-time build left over after the sources changed is recognised as stale and not used.
#define FLASHSEQ_STRINGIFY_(x) #x
#define FLASHSEQ_STRINGIFY(x) FLASHSEQ_STRINGIFY_(x)
#if defined(FLASHSEQ_SOURCE_KEY)
constexpr const char* kSourceKey = FLASHSEQ_STRINGIFY(FLASHSEQ_SOURCE_KEY);
#else
constexpr const char* kSourceKey = "";
#endif

namespace {

// tanh as the pointwise loops compute it (SIMD lanes in the AVX2 build), for the accuracy test.
at::Tensor lanes_tanh(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              "_lanes_tanh: x must be a float32 CPU tensor");
  using L = flashseq::cpu::Lanes<float>;
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  for (int64_t i = 0, n = x.numel(); i < n; i += L::kWidth) {
    const int64_t count = std::min<int64_t>(L::kWidth, n - i);
    L::store(flashseq::cells::tanh_of(L::load(src + i, count)), dst + i, count);
  }
  return y;
}

// How many distinct threads ran the iterations of one at::parallel_for over `iterations` items
// (grain 1). For the test that the extension's loops really run on torch's threads: compiled
// without -fopenmp, ATen's OpenMP parallel_for silently runs serially.
int64_t parallel_for_threads(int64_t iterations) {
  std::vector<int> ran(static_cast<size_t>(std::max<int64_t>(iterations, 0)), -1);
  at::parallel_for(0, iterations, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) ran[i] = at::get_thread_num();
  });
  std::sort(ran.begin(), ran.end());
  return std::unique(ran.begin(), ran.end()) - ran.begin();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "flashseq compiled CPU kernels";
  m.attr("source_key") = kSourceKey;
  m.def("fused_rnn_forward", &flashseq::cpu::fused_rnn_forward,
        "fused_rnn forward: (wx, r, b, states, lengths, cell, save) -> "
        "(h, last_states, saved_gates, saved_states)",
        py::arg("wx"), py::arg("r"), py::arg("b"), py::arg("states"), py::arg("lengths"),
        py::arg("cell"), py::arg("save"));
  m.def("lstm_projected_forward", &flashseq::cpu::lstm_projected_forward,
        "no_grad float32 LSTM layer with the input projection folded into the recurrence: "
        "(x [T, B, I], w_ih [4H, I], w_hh [4H, H], bias [4H] or None, h0 [B, H], c0 [B, H]) -> "
        "(h [T, B, H], h_T, c_T); needs the AVX-512 tile",
        py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("bias"), py::arg("h0"),
        py::arg("c0"));
  m.def("lstm_projected_pays", &flashseq::cpu::lstm_projected_pays,
        "whether lstm_projected_forward serves (B, I, H) faster than the projection and loop",
        py::arg("B"), py::arg("I"), py::arg("H"));
  m.def("_set_projected_lstm",
        [](bool allowed) {
          const bool old = flashseq::cpu::projected_lstm_allowed();
          flashseq::cpu::projected_lstm_allowed() = allowed;
          return old;
        },
        "for tests and benchmarks: allow (True, the default) or forbid lstm_projected_forward "
        "in the modules' no_grad float32 LSTM; returns the previous setting",
        py::arg("allowed"));
  m.def("_lstm_projected_calls", &flashseq::cpu::lstm_projected_calls,
        "for tests: lstm_projected_forward calls so far; reset=True zeroes the count",
        py::arg("reset") = false);
  m.def("lstm_projected_forward_train", &flashseq::cpu::lstm_projected_forward_train,
        "float32 LSTM training forward with the input projection folded in: as "
        "lstm_projected_forward, plus saved_gates [T, 1, B, 4, H] and saved_states "
        "[T, 1, 1, B, H] for fused_rnn_backward",
        py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("bias"), py::arg("h0"),
        py::arg("c0"));
  m.def("lstm_projected_train_pays", &flashseq::cpu::lstm_projected_train_pays,
        "whether lstm_projected_forward_train serves (B, I, H) faster than projection and loop",
        py::arg("B"), py::arg("I"), py::arg("H"));
  m.def("_set_projected_lstm_train",
        [](bool allowed) {
          const bool old = flashseq::cpu::projected_lstm_train_allowed();
          flashseq::cpu::projected_lstm_train_allowed() = allowed;
          return old;
        },
        "for tests and benchmarks: allow (True, the default) or forbid "
        "lstm_projected_forward_train in the modules' float32 LSTM training forward; returns "
        "the previous setting",
        py::arg("allowed"));
  m.def("_lstm_projected_train_calls", &flashseq::cpu::lstm_projected_train_calls,
        "for tests: lstm_projected_forward_train calls so far; reset=True zeroes the count",
        py::arg("reset") = false);
  m.def("fused_rnn_backward", &flashseq::cpu::fused_rnn_backward,
        "fused_rnn backward: (dh, d_last_states, h, states, r, saved_gates, saved_states, "
        "lengths, cell) -> (d_wx, d_r, d_b, d_states)",
        py::arg("dh"), py::arg("d_last_states"), py::arg("h"), py::arg("states"), py::arg("r"),
        py::arg("saved_gates"), py::arg("saved_states"), py::arg("lengths"), py::arg("cell"));
  m.def("_set_step_gemm_max_batch",
        [](int64_t b) {
          const int64_t old = flashseq::cpu::step_gemm_max_batch();
          flashseq::cpu::step_gemm_max_batch() = b;
          return old;
        },
        "for benchmarks: use the built-in per-step GEMM up to this batch size (MKL above); "
        "returns the previous value",
        py::arg("max_batch"));
  m.def("_set_step_gemm_balanced",
        [](bool balanced) {
          const bool old = flashseq::cpu::step_gemm_balanced();
          flashseq::cpu::step_gemm_balanced() = balanced;
          return old;
        },
        "for benchmarks and tests: split the AVX-512 step GEMM's panels across threads by "
        "columns (True) or in equal counts of panels; returns the previous setting",
        py::arg("balanced"));
  m.def("_set_backward_row_split",
        [](bool allowed) {
          const bool old = flashseq::cpu::backward_row_split();
          flashseq::cpu::backward_row_split() = allowed;
          return old;
        },
        "for benchmarks and tests: let fused_rnn_backward give each thread its own batch rows "
        "through all steps; returns the previous setting",
        py::arg("allowed"));
  m.def("_set_avx512_tile",
        [](bool allowed) {
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
          const bool old = flashseq::cpu::avx512_tile_allowed();
          flashseq::cpu::avx512_tile_allowed() = allowed;
          return old;
#else
          (void)allowed;
          return false;
#endif
        },
        "for tests and benchmarks: allow (True, the default) or forbid the AVX-512 float32 step "
        "GEMM tile; returns the previous setting (always False where it is not built)",
        py::arg("allowed"));
  m.def("_set_fused_lstm",
        [](bool allowed) {
          const bool old = flashseq::cpu::fused_lstm_allowed();
          flashseq::cpu::fused_lstm_allowed() = allowed;
          return old;
        },
        "for tests and benchmarks: allow (True, the default) or forbid the no_grad LSTM forward "
        "that fuses each step's GEMM and cell update; returns the previous setting",
        py::arg("allowed"));
  m.def("_set_row_gemv",
        [](int mode) {
          const int old = flashseq::cpu::row_gemv_mode();
          flashseq::cpu::row_gemv_mode() = mode;
          return old;
        },
        "for tests and benchmarks: the backward's one-row steps stream weight_hh's rows in "
        "alternating directions (2, the default), ascending (1), or run the panel GEMM (0); "
        "returns the previous setting",
        py::arg("mode"));
  m.def("_set_lstm_fast_update",
        [](bool allowed) {
          const bool old = flashseq::cpu::lstm_fast_update_allowed();
          flashseq::cpu::lstm_fast_update_allowed() = allowed;
          return old;
        },
        "for tests and benchmarks: allow (True, the default) or forbid the no_grad float32 LSTM "
        "forward's forced-inline cell update (false: the shared cell header); returns the "
        "previous setting",
        py::arg("allowed"));
  m.def("_set_lstm_fast_train",
        [](bool allowed) {
          const bool old = flashseq::cpu::lstm_fast_train_allowed();
          flashseq::cpu::lstm_fast_train_allowed() = allowed;
          return old;
        },
        "for tests and benchmarks: allow (True, the default) or forbid the forced-inline cell "
        "update of the float32 LSTM forward that saves its gates and of its backward's pointwise "
        "pass (false: the shared cell header); returns the previous setting",
        py::arg("allowed"));
  m.def("_lstm_nograd_path_counts", &flashseq::cpu::lstm_nograd_path_counts,
        "for tests: (fused-tile calls, fast-update calls) of the no_grad float32 LSTM forward "
        "so far; reset=True zeroes them",
        py::arg("reset") = false);
  m.def("_transposed_packs",
        [](bool reset) {
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
          return flashseq::cpu::transposed_packs(reset);
#else
          (void)reset;
          return int64_t{0};
#endif
        },
        "for tests: weight packings so far that transposed 16 x 16 blocks in AVX-512 registers "
        "(r with its input-unit axis dense, as the modules pass it); reset=True zeroes the count",
        py::arg("reset") = false);
  m.def("_uses_avx512_tile", &flashseq::cpu::use_avx512_tile,
        "whether float32 step GEMMs run the AVX-512 tile on this CPU now");
  m.def("_set_buffer_cache_limit", &flashseq::cpu::set_buffer_cache_limit,
        "most bytes of freed big buffers kept for the next call (0: none); frees kept blocks "
        "past it; returns the previous limit (flashseq/_jit.py sets it from "
        "FLASHSEQ_CPU_BUFFER_CACHE_MB on load)",
        py::arg("bytes"));
  m.def("_buffer_cache_bytes", &flashseq::cpu::buffer_cache_bytes,
        "bytes of freed big buffers kept now (flashseq.ops.cpu_buffer_cache_bytes)");
  m.def("_empty_buffer_cache", &flashseq::cpu::empty_buffer_cache,
        "frees every kept buffer (flashseq.ops.empty_cpu_buffer_cache)");
  m.def("_parallel_for_threads", &parallel_for_threads,
        "for tests: distinct threads that ran one at::parallel_for over `iterations` items",
        py::arg("iterations"));
  m.def("_lanes_tanh", &lanes_tanh, "for tests: tanh as the compiled pointwise loops compute it",
        py::arg("x"));
  m.def("linear_weight_grad", &flashseq::cpu::linear_weight_grad,
        "float32 x [M, K], dy [M, N] -> (dy^T @ x [N, K], dy.sum(0) [N]) without transposing dy",
        py::arg("x"), py::arg("dy"));
  m.def("_grad_gemm_max_rows", &flashseq::cpu::grad_gemm_max_rows,
        "the most input features (and recurrent DH) served by the blocked weight-gradient kernel");
  m.def("_linear_weight_grad_fast", &flashseq::cpu::linear_weight_grad_fast,
        "whether linear_weight_grad runs its AVX-512 kernel on this CPU now");
  m.def("fused_rnn_extras_forward", &flashseq::cpu::fused_rnn_extras_forward,
        "fused_rnn forward with variational/zoneout/reset masks and the LayerNorm cells: (wx, r, "
        "b, states, lengths, variational, zoneout, reset, cell, save, all_states) -> (h, "
        "last_states, all_states, hin_all, hr_all)",
        py::arg("wx"), py::arg("r"), py::arg("b"), py::arg("states"), py::arg("lengths"),
        py::arg("variational"), py::arg("zoneout"), py::arg("reset"), py::arg("cell"),
        py::arg("save"), py::arg("all_states"));
  m.def("fused_rnn_extras_backward", &flashseq::cpu::fused_rnn_extras_backward,
        "backward of fused_rnn_extras_forward: (dh, d_last_states, d_all_states, wx, r, b, "
        "states, all_states, hin_all, hr_all, lengths, variational, zoneout, reset, cell) -> "
        "(d_wx, d_r, d_b, d_states)",
        py::arg("dh"), py::arg("d_last_states"), py::arg("d_all_states"), py::arg("wx"),
        py::arg("r"), py::arg("b"), py::arg("states"), py::arg("all_states"), py::arg("hin_all"),
        py::arg("hr_all"), py::arg("lengths"), py::arg("variational"), py::arg("zoneout"),
        py::arg("reset"), py::arg("cell"));
  m.def("extras_cell_layout", &flashseq::cpu::extras_cell_layout,
        "(num_gates, num_states) of a cell of the extras loop (LayerNorm cells included)",
        py::arg("cell"));
  m.def("cell_layout", &flashseq::cpu::cell_layout,
        "(num_gates, num_states, num_saved) of a cell as the compiled loop stores it",
        py::arg("cell"));
}
