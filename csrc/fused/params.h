// Arguments of the persistent fused_rnn kernels: raw pointers, element strides and run-time
// sizes (no torch types, so kernel sources compile with plain nvcc). Layouts are those of
// flashseq.ops.fused_rnn (flashseq/kernels/fused_rnn/__init__.py); any strides are accepted.
#pragma once

namespace flashseq {
namespace fused {

struct FwdParams {
  const void* wx;            // [B, T, G, NH, DH] input projections (input bias included)
  long long wx_stride[5];
  const void* rt;            // [G, NH, DHP, DHP] recurrent weights transposed and zero-padded:
                             // rt[g, n, e, k] = r[g, n, k, e] (0 past DH); contiguous, so each
                             // fragment register is one aligned 32-bit load (k, k+1);
                             // G*NH*DHP*DHP < 2^31 (32-bit offsets)
  const void* bias;          // [G, NH, DH] recurrent bias
  long long bias_stride[3];
  const void* states0;       // [S, B, NH, DH] initial states
  long long states0_stride[4];
  const long long* lengths;  // [B] valid steps per row, or nullptr (all T)
  void* h;                   // [B, T, NH, DH] output; zero at steps past a row's length
  long long h_stride[4];
  void* last_states;         // [S, B, NH, DH] states after each row's last valid step
  long long last_stride[4];
  void* xchg;                // [2, NH, tiles_b * BB, DHP] h exchange (blocks per head > 1 only)
  unsigned* barrier;         // [tiles_b * NH] step counters, zero at launch (idem)
  // save mode (for the backward, csrc/fused/backward.cuh), both nullptr otherwise: fp32,
  // contiguous [T, X, B, NH, DH] (layout_bwd.h saved_offset), the cell's saved values
  // (X = kNumSaved; unused when 0) and the states after each step (X = kNumStates)
  float* save_gates;
  float* save_states;
  int batch, steps, heads, head_dim;
};

}  // namespace fused
}  // namespace flashseq
