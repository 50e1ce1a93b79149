// The fused no_grad LSTM step with the input projection folded in (lstm_fused_block_x_avx512):
// per block of 16 units, the gates of each row tile are x_t @ W_ih^T + h_prev @ W_hh^T summed in
// the same registers over one [I + H, 64] gate-interleaved panel, then the cell update runs from
// those registers. No [T, B, 4H] projection is written and read back (lstm_projected_forward.cpp
// says where and why this pays).
#include <cstdint>

#include "pointwise_avx512.h"

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")

#include "avx512_mask.h"

#include "lstm_update_avx512.h"

namespace flashseq {
namespace cpu {
namespace {

// acc[q][r][0..3] += A[r][0..K) @ panel[0..K), consecutive k spread over kSets accumulator sets
// (few rows give few independent FMA chains otherwise).
template <int kRows, int kSets>
FLASHSEQ_FORCE_INLINE void accumulate(__m512 (&acc)[kSets][kRows][4], const float* A, int64_t lda,
                                      const float* panel, int64_t K) {
  constexpr int64_t P = kLstmGatePanelCols;
  int64_t k = 0;
  for (; k + kSets <= K; k += kSets) {
    for (int q = 0; q < kSets; ++q) {
      const float* row = panel + (k + q) * P;
      __m512 b[4];
      for (int v = 0; v < 4; ++v) b[v] = _mm512_loadu_ps(row + v * 16);
      for (int r = 0; r < kRows; ++r) {
        const __m512 x = _mm512_set1_ps(A[r * lda + k + q]);
        for (int v = 0; v < 4; ++v) acc[q][r][v] = _mm512_fmadd_ps(x, b[v], acc[q][r][v]);
      }
    }
  }
  for (; k < K; ++k) {
    const float* row = panel + k * P;
    __m512 b[4];
    for (int v = 0; v < 4; ++v) b[v] = _mm512_loadu_ps(row + v * 16);
    for (int r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_set1_ps(A[r * lda + k]);
      for (int v = 0; v < 4; ++v) acc[0][r][v] = _mm512_fmadd_ps(x, b[v], acc[0][r][v]);
    }
  }
}

// The training forward's cell update of row m from its pre-activations: each activation on its
// own, as lstm_train_avx512.cpp's lstm_train_chunk (the backward reads i, f, g, o), stored with
// the new c into the saved tensors as well as c and h.
FLASHSEQ_FORCE_INLINE void train_update(const LstmFusedBlock& a, int64_t m, const __m512* pre,
                                        __mmask16 mask) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 i = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[0])));
  const __m512 f = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[1])));
  const __m512 tg = expm1_2x16(pre[2]);
  const __m512 g = div16(tg, _mm512_add_ps(tg, two));
  const __m512 o = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[3])));
  const __m512 c = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(mask, a.c + m * a.c_row),
                                   _mm512_mul_ps(i, g));
  const __m512 tc = expm1_2x16(c);
  const __m512 h = _mm512_mul_ps(o, div16(tc, _mm512_add_ps(tc, two)));
  _mm512_mask_storeu_ps(a.c + m * a.c_row, mask, c);
  _mm512_mask_storeu_ps(a.saved_c + m * a.c_row, mask, c);
  _mm512_mask_storeu_ps(a.h + m * a.h_row, mask, h);
  float* gates = a.gates + m * a.gates_row;
  _mm512_mask_storeu_ps(gates, mask, i);
  _mm512_mask_storeu_ps(gates + a.gates_gate, mask, f);
  _mm512_mask_storeu_ps(gates + 2 * a.gates_gate, mask, g);
  _mm512_mask_storeu_ps(gates + 3 * a.gates_gate, mask, o);
}

// Rows m0 .. m0 + kRows - 1 of the block: x part, h part, cell update (kSave: the training
// forward's, train_update).
template <int kRows, bool kSave>
inline void x_tile(const LstmFusedBlock& a, int64_t m0, __mmask16 mask) {
  constexpr int kSets = kRows == 1 ? 3 : (kRows == 2 ? 2 : 1);
  __m512 acc[kSets][kRows][4];
  for (int q = 0; q < kSets; ++q)
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < 4; ++v) acc[q][r][v] = _mm512_setzero_ps();
  accumulate<kRows, kSets>(acc, a.X + m0 * a.ldx, a.ldx, a.panel, a.KX);
  accumulate<kRows, kSets>(acc, a.A + m0 * a.lda, a.lda, a.panel + a.KX * kLstmGatePanelCols, a.K);
  for (int q = 1; q < kSets; ++q)
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < 4; ++v) acc[0][r][v] = _mm512_add_ps(acc[0][r][v], acc[q][r][v]);
  for (int r = 0; r < kRows; ++r) {
    const int64_t m = m0 + r;
    __m512 pre[4];
    for (int g = 0; g < 4; ++g) {
      pre[g] = _mm512_add_ps(acc[0][r][g], _mm512_maskz_loadu_ps(mask, a.bias + g * a.bias_gate));
      if (a.wx != nullptr) {
        pre[g] = _mm512_add_ps(
            pre[g], _mm512_maskz_loadu_ps(mask, a.wx + m * a.wx_row + g * a.wx_gate));
      }
    }
    if constexpr (kSave) {
      train_update(a, m, pre, mask);
    } else {
      __m512 c = _mm512_maskz_loadu_ps(mask, a.c + m * a.c_row);
      const __m512 h = lstm_update16(pre, c);
      _mm512_mask_storeu_ps(a.c + m * a.c_row, mask, c);
      _mm512_mask_storeu_ps(a.h + m * a.h_row, mask, h);
    }
  }
}

template <bool kSave>
void x_block(const LstmFusedBlock& a) {
  const __mmask16 mask = lanes_below(a.units);
  // Rows spread evenly over the fewest tiles of at most 6, as lstm_fused_block_avx512.
  const int64_t tiles = (a.M + 5) / 6;
  int64_t m = 0;
  for (int64_t j = 0; j < tiles; ++j) {
    const int64_t rows = a.M / tiles + (j < a.M % tiles ? 1 : 0);
    switch (rows) {
      case 6: x_tile<6, kSave>(a, m, mask); break;
      case 5: x_tile<5, kSave>(a, m, mask); break;
      case 4: x_tile<4, kSave>(a, m, mask); break;
      case 3: x_tile<3, kSave>(a, m, mask); break;
      case 2: x_tile<2, kSave>(a, m, mask); break;
      default: x_tile<1, kSave>(a, m, mask); break;
    }
    m += rows;
  }
}

}  // namespace

void lstm_fused_block_x_avx512(const LstmFusedBlock& a) {
  if (a.gates != nullptr) {
    x_block<true>(a);
  } else {
    x_block<false>(a);
  }
}

}  // namespace cpu
}  // namespace flashseq

#pragma GCC pop_options

#endif  // FLASHSEQ_HAVE_AVX512_TILE
