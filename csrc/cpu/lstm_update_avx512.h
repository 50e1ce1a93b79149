// The no_grad float32 LSTM cell update on 16 AVX-512 lanes (lstm_update16, built from the exp,
// expm1 and division chains of lstm_math_avx512.h), shared by the separate pointwise pass
// (pointwise_avx512.cpp) and the fused GEMM + update tiles (lstm_fused_avx512.cpp). Include only
// after the file's target pragma, and pointwise_avx512.h and <immintrin.h> before that pragma (so
// no library header is compiled for AVX-512 here); everything here has internal linkage, so no
// AVX-512 copy of a function can be picked by the linker for code that runs on other CPUs.
#pragma once

#if defined(FLASHSEQ_HAVE_AVX512_TILE)

#include "lstm_math_avx512.h"

namespace flashseq {
namespace cpu {
namespace {

// The no_grad LSTM update of 16 units, written out and forced inline. Why: through the shared
// cell header (LstmCell::forward) GCC kept the cell an out-of-line call taking its gates and
// states through memory, and the chunk around it loaded every operand under a mask: perf and
// objdump counted ~235 instructions per 16 units, ~130 cycles, against ~140 for the arithmetic
// itself; that pass was a fifth of an LSTM step at H=256 B=32 next to the 8x48 GEMM tile. The
// training forward has its own copy (lstm_train_avx512.cpp: it saves each activation).
//
// Fewer operations than the header's formulas, same float32 accuracy (~2e-7 relative against
// float64 over a 2-layer H=256 T=200 run, as before): each tanh from one expm1 without the
// small-|x| series and blend (expm1_2x16), e^-x without the negation (exp_neg16), and
// sigmoid(a) tanh(b) = t / ((1 + e^-a)(t + 2)) with t = e^(2b) - 1, one division for i g and one
// for o tanh(c). e^-a is capped at e^60 there so the product stays finite (t + 2 <= e^18 + 2);
// sigmoid(a) below a = -60 is then e^-60 instead of smaller, an absolute change under 1e-26.
// Measured against the same update with the header's formulas (1 / (1 + e^-x), tanh16), 1 thread,
// CPU time, paired, AMD EPYC Zen 5, module no_grad forward I=64 H=256 B=32 T=200 2 layers: 0.978
// of its time (one run of 29 pairs, interval 0.90-1.00; the update is ~15% of a step there).
//
// pre: the four pre-activations (i, f, g, o) of 16 units; c in and out; returns h.
FLASHSEQ_FORCE_INLINE __m512 lstm_update16(const __m512* pre, __m512& c) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 f = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[1])));
  const __m512 ei = exp_neg16<-60, 104>(pre[0]);
  const __m512 tg = expm1_2x16(pre[2]);
  const __m512 ig = div16(tg, _mm512_mul_ps(_mm512_add_ps(one, ei), _mm512_add_ps(tg, two)));
  c = _mm512_fmadd_ps(f, c, ig);
  const __m512 eo = exp_neg16<-60, 104>(pre[3]);
  const __m512 tc = expm1_2x16(c);
  return div16(tc, _mm512_mul_ps(_mm512_add_ps(one, eo), _mm512_add_ps(tc, two)));
}


// The cell update of row m of a fused tile from its accumulated gates acc[0..3] (i, f, g, o).
FLASHSEQ_FORCE_INLINE void fused_update_fast(const LstmFusedBlock& a, int64_t m, const __m512* acc,
                                             __mmask16 mask) {
  const float* wx_m = a.wx + m * a.wx_row;
  __m512 pre[4];
  for (int g = 0; g < 4; ++g) {
    const __m512 bias = _mm512_maskz_loadu_ps(mask, a.bias + g * a.bias_gate);
    pre[g] = _mm512_add_ps(_mm512_add_ps(acc[g], bias),
                           _mm512_maskz_loadu_ps(mask, wx_m + g * a.wx_gate));
    if (a.wx_next != 0)  // this row's input of the next step, into L2 only
      _mm_prefetch(reinterpret_cast<const char*>(wx_m + g * a.wx_gate + a.wx_next), _MM_HINT_T1);
  }
  __m512 c = _mm512_maskz_loadu_ps(mask, a.c + m * a.c_row);
  const __m512 h = lstm_update16(pre, c);
  _mm512_mask_storeu_ps(a.c + m * a.c_row, mask, c);
  _mm512_mask_storeu_ps(a.h + m * a.h_row, mask, h);
}
}  // namespace
}  // namespace cpu
}  // namespace flashseq

#endif  // FLASHSEQ_HAVE_AVX512_TILE
