// The no_grad float32 LSTM layer with its input projection folded into the recurrence: per step
// and block of 16 units one register tile sums x_t @ W_ih^T and h_{t-1} @ W_hh^T and runs the
// cell update (lstm_fused_block_x_avx512), instead of a projection GEMM over all T steps writing
// [T, B, 4H] that the loop then streams back from memory.
//
// Why: measured (1 thread, AMD EPYC Zen 5, standalone loop of the tile, B=32 H=256 T=200): the
// step with the projection folded in took 107 us (I=64) and 163 us (I=256) against 90 us for the
// recurrence reading a precomputed projection plus 21 and 78 us per step for oneDNN's projection
// (its GEMM runs 195 GFLOP/s at K=64, the tile 220); the rest is the projection's round trip
// through memory (26 MB written and read back per layer), which the cell update paid as cache
// misses on its wx loads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "big_alloc.h"
#include "fused_rnn_cpu.h"
#include "pointwise_avx512.h"
#include "step_gemm_avx512.h"

namespace flashseq {
namespace cpu {

namespace {
std::atomic<int64_t> projected_calls{0};
std::atomic<int64_t> projected_train_calls{0};
}  // namespace

bool& projected_lstm_allowed() {
  static bool allowed = true;
  return allowed;
}

bool& projected_lstm_train_allowed() {
  static bool allowed = true;
  return allowed;
}

int64_t lstm_projected_calls(bool reset) {
  return reset ? projected_calls.exchange(0) : projected_calls.load();
}

int64_t lstm_projected_train_calls(bool reset) {
  return reset ? projected_train_calls.exchange(0) : projected_train_calls.load();
}

namespace {
// The size rule both folded loops share (measured tables above each of them, below): the layer's
// weights, 4H (I + H) floats, stay cache-resident at up to 8 MB for batches of 6 rows and more,
// and at fewer rows (4 or 5) the weights are read for little work unless they are at most
// `small_batch_bytes`.
bool projected_sizes_pay(int64_t B, int64_t I, int64_t H, int64_t small_batch_bytes) {
  const int64_t weight_bytes = (I + H) * 4 * H * static_cast<int64_t>(sizeof(float));
  return (B >= 6 && weight_bytes <= (8 << 20)) || (B >= 4 && weight_bytes <= small_batch_bytes);
}
}  // namespace

// Where the folded projection measured faster than oneDNN's projection followed by the
// recurrence (module no_grad forward, paired, 1 thread, CPU time, Zen 5; ratio new/old):
// weights of 0.5-8 MB at B >= 6: 0.86-0.99 (H=200 B=20 2 layers 0.86; H=256 B=32 0.90, B=256
// 0.985; H=128 B=16 T=512 0.92; I=1024 H=256 B=16 0.89; H=512 B=16 0.935, B=8 0.986, B=6 0.89,
// B=64 0.999). Larger weights stream from L3 or memory every step: H=640 (13 MB) B=32 0.99,
// H=768 (19 MB) B=16 1.02, H=1024 (34 MB) B=32 1.09, B=8 1.63, B=6 1.53. Few rows read all the
// weights for little work: B=4 0.93 at 0.5 MB, 0.98 at 2 MB, 1.00 at 8 MB; B=3 1.00 and B=2
// 1.04 at 0.1-0.5 MB; B=1 (H=256) 1.7.
bool lstm_projected_pays(int64_t B, int64_t I, int64_t H) {
  return projected_lstm_allowed() && use_avx512_tile() && projected_sizes_pay(B, I, H, 2 << 20);
}

// The training forward (lstm_projected_forward_train, saving for fused_rnn_backward) against
// oneDNN's projection and the saving loop, module fwd+bwd, paired in one process, 1 thread, CPU
// time, Zen 5, new/old (plain malloc / pinned, MALLOC_MMAP_THRESHOLD_=32 MB): I=H=200 B=20 T=35
// 2 layers 0.94 / 0.98; I=64 H=256 B=32 T=200 2 layers 0.89 / 0.99; I=H=128 B=16 T=512 0.99 /
// 0.99; I=H=256 B=128 0.89 / 0.89, B=6 0.97 / 0.98; I=1024 H=256 B=16 0.98 / 0.975; I=32 H=64 B=8
// 0.905 / 0.90; I=H=512 (8 MB) B=16 1.00 / 1.00, B=6 0.96 / 1.00; B=4: I=H=128 (0.5 MB) 0.97 /
// 0.94, I=H=256 (2 MB) 1.006 (left out: at most 1 MB at B = 4, 5).
bool lstm_projected_train_pays(int64_t B, int64_t I, int64_t H) {
  return projected_lstm_train_allowed() && use_avx512_tile() &&
         projected_sizes_pay(B, I, H, 1 << 20);
}

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
namespace {

// w_ih [4H, I] and w_hh [4H, H] (torch.nn's layouts, rows i, f, g, o) packed per block of 16
// units: [blocks, I + H, 64], row d < I input d, row I + d hidden unit d, column g * 16 + u gate
// g of unit 16 j + u, zero past H.
at::Tensor pack_projected_panels(const at::Tensor& w_ih, const at::Tensor& w_hh) {
  const int64_t I = w_ih.size(1), H = w_hh.size(1), U = kLstmGatePanelUnits, P = kLstmGatePanelCols;
  const int64_t blocks = (H + U - 1) / U;
  at::Tensor packed = empty_big({blocks, I + H, P}, w_ih.options());
  const float* wi = w_ih.data_ptr<float>();
  const float* wh = w_hh.data_ptr<float>();
  float* out = packed.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t u0 = j * U, units = std::min(U, H - u0);
      float* dst = out + j * (I + H) * P;
      for (int64_t g = 0; g < 4; ++g) {  // each gate's 16 rows of W, dense along d, transposed
        const float* col_i[16];
        const float* col_h[16];
        for (int64_t u = 0; u < U; ++u) {
          col_i[u] = u < units ? wi + (g * H + u0 + u) * I : nullptr;
          col_h[u] = u < units ? wh + (g * H + u0 + u) * H : nullptr;
        }
        transpose_columns16_avx512(col_i, units, I, dst + g * U, P);
        transpose_columns16_avx512(col_h, units, H, dst + I * P + g * U, P);
      }
    }
  });
  return packed;
}

}  // namespace
#endif

namespace {

struct ProjectedRun {
  at::Tensor h, c, gates, saved_c;
};

// Checks the arguments and runs the loop; with save, also fills gates [T, 1, B, 4, H] and
// saved_c [T, 1, 1, B, H] (fused_rnn_forward's saved_gates and saved_states for NH = 1).
ProjectedRun projected_loop(const char* name, const at::Tensor& x_in, const at::Tensor& w_ih_in,
                            const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& bias_in,
                            const at::Tensor& h0_in, const at::Tensor& c0_in, bool save) {
  TORCH_CHECK(x_in.dim() == 3 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              name, ": x must be a float32 CPU tensor [T, B, I]; got ", x_in.scalar_type(), " ",
              x_in.sizes());
  const int64_t T = x_in.size(0), B = x_in.size(1), I = x_in.size(2), H = w_hh_in.size(1);
  const auto check = [&](const at::Tensor& t, at::IntArrayRef sizes, const char* arg) {
    TORCH_CHECK(t.sizes() == sizes && t.scalar_type() == at::kFloat && t.device().is_cpu(),
                name, ": ", arg, " must be a float32 CPU tensor ", sizes, "; got ",
                t.scalar_type(), " ", t.sizes());
  };
  check(w_ih_in, {4 * H, I}, "w_ih");
  check(w_hh_in, {4 * H, H}, "w_hh");
  check(h0_in, {B, H}, "h0");
  check(c0_in, {B, H}, "c0");
  if (bias_in.has_value()) check(*bias_in, {4 * H}, "bias");
  TORCH_CHECK(T > 0 && B > 0 && I > 0 && H > 0, name, ": empty input ", x_in.sizes());
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  TORCH_CHECK(use_avx512_tile(), name, ": needs the AVX-512 tile");
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const at::Tensor h0 = h0_in.contiguous();
  const at::Tensor bias =
      bias_in.has_value() ? bias_in->contiguous() : at::zeros({4 * H}, x.options());
  ProjectedRun out;
  out.c = c0_in.clone(at::MemoryFormat::Contiguous);  // updated in place
  out.h = empty_big({T, B, H}, x.options());
  out.gates = empty_big({save ? T : 0, 1, B, 4, H}, x.options());
  out.saved_c = empty_big({save ? T : 0, 1, 1, B, H}, x.options());
  const at::Tensor panels = pack_projected_panels(w_ih, w_hh);
  ++(save ? projected_train_calls : projected_calls);
  const int64_t U = kLstmGatePanelUnits, P = kLstmGatePanelCols, blocks = (H + U - 1) / U;
  const float* x_p = x.data_ptr<float>();
  const float* panel_p = panels.data_ptr<float>();
  const float* bias_p = bias.data_ptr<float>();
  const float* h0_p = h0.data_ptr<float>();
  float* c_p = out.c.data_ptr<float>();
  float* h_p = out.h.data_ptr<float>();
  float* gates_p = save ? out.gates.data_ptr<float>() : nullptr;
  float* saved_c_p = save ? out.saved_c.data_ptr<float>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, 65536 / (B * (I + H) * P));
  for (int64_t t = 0; t < T; ++t) {
    // each block reads h_{t-1} whole and writes its own units of h_t: no block waits on another
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t u0 = j * U;
        LstmFusedBlock a;
        a.M = B;
        a.K = H;
        a.units = std::min(U, H - u0);
        a.A = t == 0 ? h0_p : h_p + (t - 1) * B * H;
        a.lda = H;
        a.panel = panel_p + j * (I + H) * P;
        a.wx = nullptr;
        a.wx_gate = a.wx_row = a.wx_next = 0;
        a.bias = bias_p + u0;
        a.bias_gate = H;
        a.c = c_p + u0;
        a.c_row = H;
        a.h = h_p + t * B * H + u0;
        a.h_row = H;
        a.X = x_p + t * B * I;
        a.ldx = I;
        a.KX = I;
        if (save) {
          a.gates = gates_p + t * B * 4 * H + u0;
          a.gates_row = 4 * H;
          a.gates_gate = H;
          a.saved_c = saved_c_p + t * B * H + u0;
        }
        lstm_fused_block_x_avx512(a);
      }
    });
  }
  return out;
#else
  TORCH_CHECK(false, name, ": needs the AVX-512 build");
#endif
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_projected_forward(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& bias, const at::Tensor& h0, const at::Tensor& c0) {
  ProjectedRun run = projected_loop("lstm_projected_forward", x, w_ih, w_hh, bias, h0, c0, false);
  const int64_t T = run.h.size(0);
  return {run.h, run.h.select(0, T - 1).clone(), run.c};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_projected_forward_train(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& h0,
                             const at::Tensor& c0) {
  ProjectedRun run =
      projected_loop("lstm_projected_forward_train", x, w_ih, w_hh, bias, h0, c0, true);
  const int64_t T = run.h.size(0);
  return {run.h, run.h.select(0, T - 1).clone(), run.c, run.gates, run.saved_c};
}

}  // namespace cpu
}  // namespace flashseq
