// See weight_grad.h.
#include "weight_grad.h"

#include <ATen/Parallel.h>

#include <unistd.h>

#include <algorithm>

#include "big_alloc.h"

namespace flashseq {
namespace cpu {

int64_t grad_block_floats() {
  // Half the L2 as Linux reports it (glibc's sysconf), between 256 KB and 1 MB; 256 KB where it
  // is unknown. Measured (AMD EPYC Zen 5, 2 MB L2, paired, module fwd+bwd, 1 thread CPU time,
  // malloc pinned) against the fixed 256 KB of before: LSTM I=H=512 B=16 T=128 0.963
  // (0.934-0.994; with the H=512 rule of grad_gemm_max_rows), GRU same shape 0.963 (0.950-0.985),
  // LSTM I=H=200 B=20 T=35 2 layers 0.991 (0.987-0.998), I=64 H=256 B=32 T=200 0.997.
  static const int64_t floats = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    const int64_t half = l2 > 0 ? static_cast<int64_t>(l2) / 2 : int64_t(256) << 10;
    return std::min<int64_t>(int64_t(1) << 20, std::max<int64_t>(int64_t(256) << 10, half)) /
           static_cast<int64_t>(sizeof(float));
  }();
  return floats;
}

int64_t grad_gemm_max_rows() {
  // R whose k-blocks reach 256 rows: 256 at the old 256 KB block (measured ahead of oneDNN up to
  // H=256), 512 from a 512 KB block on (an L2 of 1 MB and more). Why not larger R: the whole C is
  // re-read per k-block, and At's block of few k-rows spilled L2 (H=512 at 256 KB: 1.12 of
  // oneDNN's time for the projection's weight gradient).
  return grad_block_floats() >= (int64_t(512) << 10) / static_cast<int64_t>(sizeof(float))
             ? 512
             : 256;
}

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
namespace {

// Copies rows x cols of src (rows ld apart) into dst [rows, kAvx512PanelCols], zero past cols,
// and adds each column's sum over these rows to colsum[0 .. cols-1] (summed per block first).
void pack_rows_with_sums(int64_t rows, const float* src, int64_t ld, int64_t cols, float* dst,
                         float* colsum) {
  constexpr int64_t P = kAvx512PanelCols;
  float sum[P] = {};
  for (int64_t k = 0; k < rows; ++k) {
    const float* s = src + k * ld;
    float* d = dst + k * P;
    for (int64_t c = 0; c < cols; ++c) {
      d[c] = s[c];
      sum[c] += s[c];
    }
    for (int64_t c = cols; c < P; ++c) d[c] = 0.0f;
  }
  for (int64_t c = 0; c < cols; ++c) colsum[c] += sum[c];
}

}  // namespace

void blocked_grad_gemm(const float* At, int64_t lda, const float* D, int64_t ldd, int64_t R,
                       int64_t N, const std::vector<std::pair<int64_t, int64_t>>& ranges,
                       float* C, float* colsum) {
  constexpr int64_t P = kAvx512PanelCols;
  const int64_t panels = (N + P - 1) / P;
  // At's block (R x kc floats) within half the L2 (grad_block_floats); 64..512 rows
  const int64_t kc =
      std::min<int64_t>(512, std::max<int64_t>(64, grad_block_floats() / std::max<int64_t>(1, R)));
  std::fill(C, C + R * N, 0.0f);
  std::fill(colsum, colsum + N, 0.0f);
  std::vector<float> pack(static_cast<size_t>(at::get_num_threads()) * kc * P);
  for (const auto& [begin, end] : ranges) {
    for (int64_t k0 = begin; k0 < end; k0 += kc) {
      const int64_t rows = std::min(kc, end - k0);
      at::parallel_for(0, panels, 1, [&](int64_t p_begin, int64_t p_end) {
        float* buf = pack.data() + static_cast<int64_t>(at::get_thread_num()) * kc * P;
        for (int64_t p = p_begin; p < p_end; ++p) {
          const int64_t n0 = p * P, cols = std::min(P, N - n0);
          pack_rows_with_sums(rows, D + k0 * ldd + n0, ldd, cols, buf, colsum + n0);
          panel_rows_avx512(R, rows, At + k0, lda, buf, C + n0, N, cols, /*accumulate=*/true);
        }
      });
    }
  }
}
#endif

// Through a 32 x 32 block on the stack: the block's rows are read and written whole. Why: reading
// a column of src directly touches rows lds floats apart, which at a power-of-two width (1024:
// 4 KB) all share one L1 set, and ATen's strided copy of a transposed view took 170-200 us per
// MB on the dev box (1 thread), a fifth of a [256, 1024] weight gradient's GEMM.
void transpose_blocked(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst,
                       int64_t ldd) {
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  // 16 rows at a time through zmm registers (transpose_rows16_avx512). Paired against the 32 x 32
  // stack block below, module LSTM fwd+bwd, 1 thread CPU time, malloc pinned: I=H=200 B=20 T=35
  // 2 layers 0.983 (interval 0.978-0.991; its hT, d(r) and projection weight-gradient transposes),
  // I=H=128 B=16 T=512 0.996 (0.985-1.002).
  if (use_avx512_tile()) {
    at::parallel_for(0, (rows + 15) / 16, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        transpose_rows16_avx512(src + b * 16 * lds, std::min<int64_t>(16, rows - b * 16), cols, lds,
                                dst + b * 16, ldd);
    });
    return;
  }
#endif
  constexpr int64_t kBlock = 32;
  at::parallel_for(0, (rows + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    float block[kBlock][kBlock];  // [column j - j0][row i - i0]
    for (int64_t i0 = begin * kBlock; i0 < std::min(rows, end * kBlock); i0 += kBlock) {
      const int64_t ni = std::min(kBlock, rows - i0);
      for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
        const int64_t nj = std::min(kBlock, cols - j0);
        for (int64_t i = 0; i < ni; ++i) {
          const float* row = src + (i0 + i) * lds + j0;
          for (int64_t j = 0; j < nj; ++j) block[j][i] = row[j];
        }
        for (int64_t j = 0; j < nj; ++j) std::copy_n(block[j], ni, dst + (j0 + j) * ldd + i0);
      }
    }
  });
}

bool linear_weight_grad_fast() {
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  return use_avx512_tile();
#else
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> linear_weight_grad(const at::Tensor& x_in, const at::Tensor& dy_in) {
  TORCH_CHECK(x_in.dim() == 2 && dy_in.dim() == 2 && x_in.size(0) == dy_in.size(0),
              "linear_weight_grad: x must be [M, K] and dy [M, N]; got x ", x_in.sizes(), ", dy ",
              dy_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && dy_in.scalar_type() == at::kFloat &&
                  x_in.device().is_cpu() && dy_in.device().is_cpu(),
              "linear_weight_grad: x and dy must be float32 CPU tensors");
  if (!linear_weight_grad_fast() || x_in.size(0) == 0) {
    return {at::mm(dy_in.t(), x_in), dy_in.sum(0)};
  }
  const int64_t M = x_in.size(0), K = x_in.size(1), N = dy_in.size(1);
  at::Tensor xT;  // [K, M]: M (the contracted axis) contiguous
  if (x_in.stride(1) == 1) {
    // transpose_blocked's AVX-512 path, paired against ATen's transposing copy (module LSTM
    // fwd+bwd as above): I=H=200 0.992, I=H=128 0.991 (0.985-0.997), I=64 H=256 0.995
    xT = empty_big({x_in.size(1), x_in.size(0)}, x_in.options());
    transpose_blocked(x_in.data_ptr<float>(), x_in.size(0), x_in.size(1), x_in.stride(0),
                      xT.data_ptr<float>(), x_in.size(0));
  } else {
    xT = x_in.t().contiguous();
  }
  const at::Tensor dy = dy_in.contiguous();
  at::Tensor dwT = at::empty({K, N}, dy.options());
  at::Tensor db = at::empty({N}, dy.options());
#if defined(FLASHSEQ_HAVE_AVX512_TILE)
  blocked_grad_gemm(xT.data_ptr<float>(), M, dy.data_ptr<float>(), N, K, N, {{0, M}},
                    dwT.data_ptr<float>(), db.data_ptr<float>());
#endif
  at::Tensor dw = at::empty({N, K}, dy.options());
  transpose_blocked(dwT.data_ptr<float>(), K, N, N, dw.data_ptr<float>(), K);
  return {dw, db};
}

}  // namespace cpu
}  // namespace flashseq
