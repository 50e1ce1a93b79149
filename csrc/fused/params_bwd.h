// Arguments of the persistent fused_rnn backward kernel (csrc/fused/backward.cuh): raw
// pointers, element strides, run-time sizes; layouts as flashseq.ops.fused_rnn's.
#pragma once

namespace flashseq {
namespace fused {

struct BwdParams {
  const void* r;              // [G, NH, DHP, DHP] recurrent weights zero-padded, NOT transposed:
                              // r[g, n, k, e]; contiguous (units e adjacent: 32-bit fragment loads)
  const float* save_gates;    // forward save mode, fp32 [T, kNumSaved, B, NH, DH] (may be nullptr
                              // when kNumSaved == 0)
  const float* save_states;   // forward save mode, fp32 [T, S, B, NH, DH]: states after step t
  const void* states0;        // [S, B, NH, DH] initial states (the "previous" states of step 0)
  long long states0_stride[4];
  const long long* lengths;   // [B] or nullptr (all T)
  const void* dh;             // [B, T, NH, DH] gradient of the output h
  long long dh_stride[4];
  const void* dlast;          // [S, B, NH, DH] gradient of the last states
  long long dlast_stride[4];
  void* dwx;                  // [B, T, G, NH, DH] out: d(wx); zero at steps past a row's length
  long long dwx_stride[5];
  float* drh;                 // [B, T, G, NH, DH] out, fp32: d(rh) (= d(wx) except GRU's n gate),
  long long drh_stride[5];    // for d(r) and d(b), summed over steps outside the kernel
  void* dstates0;             // [S, B, NH, DH] out: d(initial states)
  long long dstates0_stride[4];
  float* xpart;               // [2, NH, P, tiles_b*BB, DHP] fp32 partial d(h_prev) exchange
                              // (blocks per head > 1 without a cluster only)
  unsigned* barrier;          // [tiles_b * NH] step counters, zero at launch (idem)
  int batch, steps, heads, head_dim;
};

}  // namespace fused
}  // namespace flashseq
