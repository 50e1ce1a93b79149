// The float32 LSTM cell of the training path on AVX-512 vectors (16 units at a time): the forward
// pass that saves its gates for the backward, and the backward's pointwise pass, with the cell's
// formulas written out and forced inline instead of the shared header's (cells/lstm.h), which GCC
// kept an out-of-line call taking its operands through memory. Called by pointwise_avx512.cpp's
// row dispatch while lstm_fast_train_allowed(); only raw pointers cross this file's boundary (as
// step_gemm_avx512.cpp).
#include <cstdint>

#include "pointwise_avx512.h"

#if defined(FLASHSEQ_HAVE_AVX512_TILE)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")

#include "avx512_mask.h"

#include "lstm_math_avx512.h"

namespace flashseq {
namespace cpu {
namespace {

// Loads and stores of 16 units at p, all lanes (kFull) or those under the mask m.
template <bool kFull>
struct Units16 {
  __mmask16 m;
  __m512 load(const float* p) const {
    return kFull ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
  }
  void store(float* p, __m512 v) const {
    if (kFull) {
      _mm512_storeu_ps(p, v);
    } else {
      _mm512_mask_storeu_ps(p, m, v);
    }
  }
};

// chunk(a, e, Units16<kFull>) over a row of DH units: whole chunks two at a time (two
// independent chains, as lstm_nograd_row), then the masked tail.
template <typename Row, typename Chunk>
FLASHSEQ_FORCE_INLINE void chunked_row(const Row& a, int64_t DH, Chunk chunk) {
  int64_t e = 0;
  for (; e + 32 <= DH; e += 32) {
    chunk(a, e, Units16<true>{0xFFFF});
    chunk(a, e + 16, Units16<true>{0xFFFF});
  }
  for (; e + 16 <= DH; e += 16) chunk(a, e, Units16<true>{0xFFFF});
  if (e < DH) chunk(a, e, Units16<false>{lanes_below(DH - e)});
}

// Units e .. e + 15 of an LSTM row whose gates are saved for the backward (u: all 16 or a masked
// tail): lstm_update16's exp and expm1 chains, forced inline, but each activation on its
// own (the backward reads i, f, g, o), so five divisions instead of two. Why: through the shared
// header the training forward kept the cell an out-of-line call taking its operands through memory
// (perf, module LSTM I=H=200 B=20 T=35: LstmCell::forward<F16x2> a third of the pass's samples),
// and the pass stalled worst when the caches came cold from other work, as in training. Paired,
// 1 thread, CPU time, AMD EPYC Zen 5, raw forward with saving at H=200 B=20 T=35: 0.92 of the
// header's time, 0.74 with 32 MB streamed through the caches between calls; with
// lstm_backward_chunk, module LSTM fwd+bwd (malloc pinned) 0.93 at I=H=200 B=20 T=35 2 layers,
// 0.88 at I=H=128 B=16 T=512, 0.93 at I=64 H=256 B=32 T=200 2 layers, 0.98 at H=256 B=1 T=256.
// Accuracy as the header's (~1e-7 relative per activation against float64).
template <typename U>
FLASHSEQ_FORCE_INLINE void lstm_train_chunk(const PointwiseRow& a, int64_t e, U u) {
  __m512 pre[4];
  for (int g = 0; g < 4; ++g)
    pre[g] = _mm512_add_ps(_mm512_add_ps(u.load(a.wx + g * a.wx_gate_stride + e),
                                         u.load(a.rh + g * a.DH + e)),
                           u.load(a.bias + g * a.DH + e));
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 i = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[0])));
  const __m512 f = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[1])));
  const __m512 tg = expm1_2x16(pre[2]);
  const __m512 g = div16(tg, _mm512_add_ps(tg, two));
  const __m512 o = div16(one, _mm512_add_ps(one, exp_neg16<-88, 104>(pre[3])));
  const __m512 c = _mm512_fmadd_ps(f, u.load(a.carry + a.state_stride + e), _mm512_mul_ps(i, g));
  const __m512 tc = expm1_2x16(c);
  const __m512 h = _mm512_mul_ps(o, div16(tc, _mm512_add_ps(tc, two)));
  u.store(a.carry + a.state_stride + e, c);
  u.store(a.carry + e, h);
  u.store(a.h_out + e, h);
  u.store(a.gates + e, i);
  u.store(a.gates + a.DH + e, f);
  u.store(a.gates + 2 * a.DH + e, g);
  u.store(a.gates + 3 * a.DH + e, o);
  u.store(a.saved_states + e, c);
}

}  // namespace

void lstm_train_row_avx512(const PointwiseRow& a) {
  chunked_row(a, a.DH,
              [](const PointwiseRow& r, int64_t e, auto u) { lstm_train_chunk(r, e, u); });
}

namespace {

// Units e .. e + 15 of an LSTM backward row (u: all 16 or a masked tail): the header's
// formulas (cells/lstm.h), forced inline, tanh(c) from one expm1 (as lstm_train_chunk). Paired
// against the header, raw backward H=200 B=20 T=35: 0.975 of its time, 0.89 with cold caches.
template <typename U>
FLASHSEQ_FORCE_INLINE void lstm_backward_chunk(const BackwardRow& a, int64_t e, U u) {
  const int64_t DH = a.DH;
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 i = u.load(a.saved + e), f = u.load(a.saved + DH + e);
  const __m512 g = u.load(a.saved + 2 * DH + e), o = u.load(a.saved + 3 * DH + e);
  const __m512 c_prev = u.load(a.prev[1] + e);
  const __m512 tc_m1 = expm1_2x16(_mm512_fmadd_ps(f, c_prev, _mm512_mul_ps(i, g)));
  const __m512 tc = div16(tc_m1, _mm512_add_ps(tc_m1, two));
  __m512 dh = u.load(a.dcarry + e);
  if (a.dh != nullptr) dh = _mm512_add_ps(dh, u.load(a.dh + e));
  const __m512 dho = _mm512_mul_ps(dh, o);
  const __m512 dc = _mm512_fmadd_ps(dho, _mm512_fnmadd_ps(tc, tc, one),
                                    u.load(a.dcarry + a.state_stride + e));
  __m512 d[4];
  d[0] = _mm512_mul_ps(_mm512_mul_ps(dc, g), _mm512_fnmadd_ps(i, i, i));          // i (1 - i)
  d[1] = _mm512_mul_ps(_mm512_mul_ps(dc, c_prev), _mm512_fnmadd_ps(f, f, f));
  d[2] = _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one));
  d[3] = _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_fnmadd_ps(o, o, o));
  for (int k = 0; k < 4; ++k) {
    u.store(a.dwx + k * a.dwx_gate_stride + e, d[k]);
    if (a.drh != nullptr) u.store(a.drh + k * DH + e, d[k]);
  }
  u.store(a.dcarry + e, _mm512_setzero_ps());
  u.store(a.dcarry + a.state_stride + e, _mm512_mul_ps(dc, f));
}

}  // namespace

void lstm_backward_row_fast_avx512(const BackwardRow& a) {
  chunked_row(a, a.DH,
              [](const BackwardRow& r, int64_t e, auto u) { lstm_backward_chunk(r, e, u); });
}

}  // namespace cpu
}  // namespace flashseq

#pragma GCC pop_options

#endif  // FLASHSEQ_HAVE_AVX512_TILE
