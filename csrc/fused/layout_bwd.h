// Index math of the persistent fused_rnn BACKWARD kernel (csrc/fused/backward.cuh): which warp
// holds which fragment of the transposed recurrent weights, where the gate gradients and the
// partial sums live in shared memory, and how the partial d(h_prev) of the P blocks of a head
// meet. Plain C++17 like layout.h (whose Tiling and mma lane tables it reuses), so the host
// simulation (tests/kernels/cuda_layout_sim_bwd.cpp) runs the same functions as the kernel.
//
// The block slicing is the forward plan's: block (head, slice, batch tile) owns the units
// e in [slice*BH, (slice+1)*BH) of the head, all G gates, and keeps r[g, head, k, e] for all k
// on chip. Per reversed step it knows dg[b, (g, e)] = d(rh) of its own units only, so the
// product it can form is the partial
//   D[k, b] = sum_{(g, e) of the block} A[k, (g, e)] * Bop[(g, e), b],
//   A[k, (g, e)] = r[g, head, k, e]   (weights as the mma A operand: rows k, registers),
//   Bop[(g, e), b] = dg[b, g, e]      (the mma B operand, read from shared memory),
// over all DHP rows k; d(h_prev)[b, k] is the sum of the P blocks' partials. Rows k make the
// mma M side (DHP, a multiple of 16) and the block's G*BH gate columns its K side (a multiple
// of 16 by the forward's own rule), so every forward plan serves, BH = 8 included.
// The block's W = WM*WK warps are regrouped as WMB x WKB: WMB = gcd(W, DHP/16) warps over the
// rows k, WKB = W / WMB warps splitting the G*BH reduction (their partials meet in shared
// memory). Warp w = (wmb, wkb): wmb = w % WMB, wkb = w / WMB. On sm_90a with wgmma (f.gmma)
// the warpgroups take the product instead ("wgmma" below).
#pragma once

#include "layout.h"

namespace flashseq {
namespace fused {

// What the forward saves for the backward (save mode, FwdParams::save_*), fp32 and contiguous:
// per step t, X values per (batch row, head, unit): the cell's saved values (X = kNumSaved) and
// the states after the step (X = kNumStates). Steps past a row's length are not written.
FLASHSEQ_LAYOUT_FN long long saved_offset(int t, int x, int X, int batch, int heads, int head_dim,
                                          int b, int head, int unit) {
  return (((static_cast<long long>(t) * X + x) * batch + b) * heads + head) * head_dim + unit;
}

FLASHSEQ_LAYOUT_FN int gcd_int(int a, int b) { return b == 0 ? a : gcd_int(b, a % b); }

struct BwdTiling {
  Tiling f;  // the forward's tiling (same plan, same blocks)
  int wmb;   // WMB, stored: a data member of a constexpr tiling folds to a constant in the
             // kernel, where a (recursive) gcd call would be evaluated at run time
  int gwm;   // wgmma (f.gmma): warpgroups over the 64-row tiles of k (GWM, stored like wmb)

  FLASHSEQ_LAYOUT_FN static BwdTiling of(const Tiling& fwd) {
    return {fwd, gcd_int(fwd.warps(), fwd.DHP / 16),
            fwd.gmma ? gcd_int(fwd.warpgroups(), (fwd.DHP + 63) / 64) : 1};
  }
  FLASHSEQ_LAYOUT_FN int warps() const { return f.warps(); }
  FLASHSEQ_LAYOUT_FN int threads() const { return f.threads(); }
  FLASHSEQ_LAYOUT_FN int WMB() const { return wmb; }
  FLASHSEQ_LAYOUT_FN int WKB() const { return f.warps() / WMB(); }
  FLASHSEQ_LAYOUT_FN int cols() const { return f.G * f.BH; }  // reduction: the block's gate columns
  FLASHSEQ_LAYOUT_FN int rows_per_warp() const { return f.DHP / WMB(); }
  FLASHSEQ_LAYOUT_FN int m_tiles() const { return rows_per_warp() / 16; }
  FLASHSEQ_LAYOUT_FN int k_per_warp() const { return cols() / WKB(); }
  FLASHSEQ_LAYOUT_FN int k_tiles() const { return k_per_warp() / f.K; }
  FLASHSEQ_LAYOUT_FN int n_tiles() const { return f.BB / 8; }
  // 32-bit registers of the weight fragments per lane: the forward's count (same elements)
  FLASHSEQ_LAYOUT_FN int a_regs() const { return m_tiles() * k_tiles() * 4; }

  FLASHSEQ_LAYOUT_FN const char* invalid() const {
    return f.invalid()                         ? f.invalid()
           : ((f.K == 16) != (f.elem_bytes == 2)) ? "mma K = 16 takes 16-bit operands, K = 8 tf32 (4 bytes)"
           : (!f.gmma && cols() % (WKB() * f.K) != 0) ? "G*BH must split into WKB warps of whole K tiles"
           : (f.gmma && cols() % (GWK() * f.K) != 0)
               ? "wgmma backward: G*BH must split into GWK warpgroups of whole k steps"
           : nullptr;
  }
  // slabs of partial sums per block: one per reduction slice (WKB warps, or GWK warpgroups)
  FLASHSEQ_LAYOUT_FN int k_slices() const { return f.gmma ? GWK() : WKB(); }

  // (spelled out for WKB == 1: the compiler cannot know warp < warps(), and a constant warp_k
  // keeps the weights' gate and unit of each register compile-time, one base address per gate)
  FLASHSEQ_LAYOUT_FN int warp_m(int warp) const { return WKB() == 1 ? warp : warp % WMB(); }
  FLASHSEQ_LAYOUT_FN int warp_k(int warp) const { return WKB() == 1 ? 0 : warp / WMB(); }

  // gate columns: gate-major, col = gate * BH + unit (the forward's gate-row order)
  FLASHSEQ_LAYOUT_FN GateUnit col_gate_unit(int col) const { return {col / f.BH, col % f.BH}; }

  // the mma.sync shape's lane tables: m16n8k16 (16-bit) or m16n8k8 (tf32, f.K == 8)
  FLASHSEQ_LAYOUT_FN RowCol mma_a(int lane, int i) const {
    return f.K == 16 ? MmaShape<16>::a(lane, i) : MmaShape<8>::a(lane, i);
  }
  FLASHSEQ_LAYOUT_FN RowCol mma_b(int lane, int i) const {
    return f.K == 16 ? MmaShape<16>::b(lane, i) : MmaShape<8>::b(lane, i);
  }
  // -- A fragments (weights, transposed view): element i of lane `lane` in fragment (mt, kt) of
  // warp `warp` is A[row k, col (g, e)] = r[g, head, k, slice*BH + e] ------------------------------
  FLASHSEQ_LAYOUT_FN RowCol a_elem(int warp, int mt, int kt, int lane, int i) const {
    const RowCol rc = mma_a(lane, i);
    return {warp_m(warp) * rows_per_warp() + 16 * mt + rc.row,
            warp_k(warp) * k_per_warp() + f.K * kt + rc.col};
  }
  // The kernel loads A register `reg` with one 32-bit load from the zero-padded r
  // [G, NH, DHP, DHP] (not transposed: units e are contiguous): row row8 + lane/4, columns
  // col8 + a_lane_col(lane) (16-bit: elements 2reg, 2reg+1, two adjacent units; tf32: element
  // reg, one unit). col8 is a multiple of 4 (8 for 16-bit) and BH of 8: the columns of a
  // register's group share one gate.
  FLASHSEQ_LAYOUT_FN int a_pair_row8(int warp, int mt, int reg) const {
    return warp_m(warp) * rows_per_warp() + 16 * mt + 8 * (reg & 1);
  }
  FLASHSEQ_LAYOUT_FN int a_pair_col8(int warp, int kt, int reg) const {
    return warp_k(warp) * k_per_warp() + f.K * kt + (f.K / 2) * (reg >> 1);
  }
  FLASHSEQ_LAYOUT_FN int a_lane_col(int lane) const { return f.a_lane_k(lane); }
  // element offset of r[g, head, k, slice*BH + unit] in the padded r
  FLASHSEQ_LAYOUT_FN long long r_offset(int heads, int head, int slice, int gate, int k, int unit) const {
    return ((static_cast<long long>(gate) * heads + head) * f.DHP + k) * f.DHP + f.head_unit(slice, unit);
  }

  // -- B fragments: the block's gate gradients dg in shared memory, [BB][dg_stride()] 16-bit
  // elements, row b holding (g, e) gate-major; 16 bytes of padding as in the forward's h buffer
  // With wgmma the buffer is in the canonical K-major core-matrix layout instead (g_dg_offset).
  FLASHSEQ_LAYOUT_FN int dg_stride() const { return cols() + 16 / f.elem_bytes; }
  FLASHSEQ_LAYOUT_FN int dg_elems() const { return f.gmma ? f.BB * cols() : f.BB * dg_stride(); }
  FLASHSEQ_LAYOUT_FN int dg_offset(int b, int col) const {
    return f.gmma ? g_dg_offset(b, col) : b * dg_stride() + col;
  }
  // (16-bit: elements (0,1) and (2,3) are 32-bit pairs of adjacent columns; tf32: 0 and 1)
  FLASHSEQ_LAYOUT_FN int b_regs_step() const { return f.K == 16 ? 2 : 1; }
  FLASHSEQ_LAYOUT_FN RowCol b_elem(int warp, int nt, int kt, int lane, int i) const {
    const RowCol kn = mma_b(lane, i);
    return {warp_k(warp) * k_per_warp() + f.K * kt + kn.row, 8 * nt + kn.col};
  }
  FLASHSEQ_LAYOUT_FN int b_smem_offset(int warp, int nt, int kt, int lane, int i) const {
    return dg_offset(b_elem(warp, nt, kt, lane, i).col, b_elem(warp, nt, kt, lane, i).row);
  }

  // -- C fragments: (row k, batch row) of element i of lane `lane` in accumulator (mt, nt) ----
  FLASHSEQ_LAYOUT_FN RowCol c_elem(int warp, int mt, int nt, int lane, int i) const {
    const RowCol rc = MmaShape<16>::c(lane, i);
    return {warp_m(warp) * rows_per_warp() + 16 * mt + rc.row, 8 * nt + rc.col};
  }
  // partial sums in shared memory, double-buffered by step parity (peers of a cluster read the
  // previous step's buffer while this block fills the other): [2][WKB][BB][part_stride()] fp32
  FLASHSEQ_LAYOUT_FN int part_stride() const { return f.DHP + ((4 - f.DHP) % 32 + 32) % 32; }
  FLASHSEQ_LAYOUT_FN int part_buffer_elems() const { return k_slices() * f.BB * part_stride(); }
  FLASHSEQ_LAYOUT_FN int part_offset(int parity, int wk, int b, int k) const {
    return ((parity * k_slices() + wk) * f.BB + b) * part_stride() + k;
  }
  FLASHSEQ_LAYOUT_FN int c_smem_offset(int parity, int warp, int mt, int nt, int lane, int i) const {
    return part_offset(parity, warp_k(warp), c_elem(warp, mt, nt, lane, i).col,
                       c_elem(warp, mt, nt, lane, i).row);
  }

  // -- the P blocks' partials of one head meet (P > 1) ------------------------------------------
  // Block `slice` needs d(h_prev)[b, k] only for its own units k = slice*BH + unit (the units
  // whose pointwise backward it runs next step): it sums, in the fixed order peer = 0..P-1 and
  // wk = 0..k_slices()-1 (deterministic), the peers' partials at row k.
  // Cluster (sm_90a): the peers' shared partial buffers, at part_offset(parity, wk, b, k).
  // Global memory: each block publishes its WKB-summed partial [BB][DHP] to an fp32 buffer
  // [2][NH][P][tiles_b*BB][DHP]; after the head's flag barrier the readers sum the P slices.
  FLASHSEQ_LAYOUT_FN long long xpart_offset(int parity, int heads, int padded_batch, int head,
                                            int peer, int batch, int k) const {
    return (((static_cast<long long>(parity) * heads + head) * f.P + peer) * padded_batch + batch) *
               f.DHP + k;
  }
  FLASHSEQ_LAYOUT_FN long long xpart_elems(int heads, int padded_batch) const {
    return 2LL * heads * f.P * padded_batch * f.DHP;
  }
  // row k of the partials that block `slice` reads for its unit `unit`
  FLASHSEQ_LAYOUT_FN int own_row(int slice, int unit) const { return f.head_unit(slice, unit); }

  // -- wgmma (sm_90a, f.gmma == 1) ----------------------------------------------------------------
  // The same product D[k, b] = A[k, (g, e)] * Bop[(g, e), b] as warpgroup-wide
  // wgmma.mma_async.m64nNkK (N = BB; K = 16 for 16-bit, 8 for tf32): M = the rows k in 64-row
  // tiles (rows past DHP: zero weights, their sums dropped), K = the block's G*BH gate columns
  // in steps of f.K. The
  // warpgroups() warpgroups are GWM over the m tiles (gcd(warpgroups, m tiles), each a run of
  // consecutive tiles) times GWK splitting the columns; warpgroup wg = (gwm, gwk): gwm = wg % GWM,
  // gwk = wg / GWM. Inside one, warp w (= warp % 4) holds rows 16w..16w+15 of each 64-row tile,
  // the mma.sync A fragment of the same K (PTX ISA, wgmma .m64nNk16 / .m64nNk8 register
  // fragments: m16n8k16's / tf32 m16n8k8's). A = the weights in
  // registers, B = d(rh)^T read from shared memory through a matrix descriptor.
  FLASHSEQ_LAYOUT_FN int g_m_tiles() const { return (f.DHP + 63) / 64; }
  FLASHSEQ_LAYOUT_FN int GWM() const { return gwm; }
  FLASHSEQ_LAYOUT_FN int GWK() const { return f.warpgroups() / GWM(); }
  FLASHSEQ_LAYOUT_FN int g_wg_m_tiles() const { return g_m_tiles() / GWM(); }  // per warpgroup
  FLASHSEQ_LAYOUT_FN int g_cols_per_wg() const { return cols() / GWK(); }
  FLASHSEQ_LAYOUT_FN int g_k_steps() const { return g_cols_per_wg() / f.K; }
  FLASHSEQ_LAYOUT_FN int g_a_regs() const { return g_wg_m_tiles() * g_k_steps() * 4; }
  FLASHSEQ_LAYOUT_FN int g_c_elems() const { return f.BB / 2; }  // fp32 D per thread and m tile
  // (0 spelled out for a single slice: the compiler cannot know warp < warps(), and a constant
  // keeps the kernel's weight addresses compile-time offsets of one base)
  FLASHSEQ_LAYOUT_FN int g_wm(int warp) const { return GWM() == 1 ? 0 : (warp / 4) % GWM(); }
  FLASHSEQ_LAYOUT_FN int g_wk(int warp) const { return GWK() == 1 ? 0 : (warp / 4) / GWM(); }
  // first row k of the warp's 16 rows in its warpgroup's m tile mt (0 .. g_wg_m_tiles()-1)
  FLASHSEQ_LAYOUT_FN int g_row16(int warp, int mt) const {
    return 64 * (g_wm(warp) * g_wg_m_tiles() + mt) + 16 * (warp % 4);
  }
  FLASHSEQ_LAYOUT_FN RowCol g_a_elem(int warp, int mt, int kt, int lane, int i) const {
    const RowCol rc = mma_a(lane, i);
    return {g_row16(warp, mt) + rc.row, g_wk(warp) * g_cols_per_wg() + f.K * kt + rc.col};
  }
  // Register `reg`: row row8 + lane/4, columns col8 + a_lane_col(lane) (16-bit: elements 2reg,
  // 2reg+1, two adjacent units; tf32 m64nNk8: element reg, one unit) of one gate (col8 a
  // multiple of K/2, BH of 8), one 32-bit load from r.
  FLASHSEQ_LAYOUT_FN int g_a_pair_row8(int warp, int mt, int reg) const {
    return g_row16(warp, mt) + 8 * (reg & 1);
  }
  FLASHSEQ_LAYOUT_FN int g_a_pair_col8(int warp, int kt, int reg) const {
    return g_wk(warp) * g_cols_per_wg() + f.K * kt + (f.K / 2) * (reg >> 1);
  }
  // D element i of lane `lane` in m tile mt: (row k, batch row b); per 8 batch columns the
  // m16n8 C layout, rows offset by 16 * (warp % 4)
  FLASHSEQ_LAYOUT_FN RowCol g_c_elem(int warp, int mt, int lane, int i) const {
    return {g_row16(warp, mt) + (lane >> 2) + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)};
  }
  FLASHSEQ_LAYOUT_FN int g_c_smem_offset(int parity, int warp, int mt, int lane, int i) const {
    return part_offset(parity, g_wk(warp), g_c_elem(warp, mt, lane, i).col, g_c_elem(warp, mt, lane, i).row);
  }
  // B = d(rh)^T (K = gate columns x N = batch, columns contiguous per batch row: K-major, no
  // transpose, which tf32 requires) in the canonical layout without swizzling: core matrices of
  // 8 batch rows x 16 bytes (8 consecutive 16-bit columns, or 4 tf32: f.piece_elems()), 128
  // contiguous bytes; core matrices along the columns g_lbo_bytes() apart, along the batch
  // g_sbo_bytes() apart.
  FLASHSEQ_LAYOUT_FN int g_dg_offset(int b, int col) const {
    const int pe = f.piece_elems();
    return ((b / 8) * (cols() / pe) + col / pe) * (8 * pe) + (b % 8) * pe + col % pe;
  }
  FLASHSEQ_LAYOUT_FN int g_lbo_bytes() const { return 128; }
  FLASHSEQ_LAYOUT_FN int g_sbo_bytes() const { return (cols() / f.piece_elems()) * 128; }
  // The 64-bit matrix descriptor of B for k step kt of column slice gwk, the d(rh) buffer at
  // shared-memory byte address `buffer` (16-byte aligned); fields as layout.h's g_desc_b (PTX
  // ISA "Matrix Descriptor Format": start >> 4 in bits 0-13, leading byte offset >> 4 in 16-29,
  // stride byte offset >> 4 in 32-45, base offset 0, no swizzle).
  FLASHSEQ_LAYOUT_FN unsigned long long g_desc_b(unsigned buffer, int gwk, int kt) const {
    const int col = gwk * g_cols_per_wg() + f.K * kt;
    const unsigned start = buffer + static_cast<unsigned>(f.elem_bytes * g_dg_offset(0, col));
    return static_cast<unsigned long long>((start & 0x3FFFFu) >> 4) |
           (static_cast<unsigned long long>((g_lbo_bytes() >> 4) & 0x3FFF) << 16) |
           (static_cast<unsigned long long>((g_sbo_bytes() >> 4) & 0x3FFF) << 32);
  }
};

}  // namespace fused
}  // namespace flashseq
