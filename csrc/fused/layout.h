// Index math of the persistent fused_rnn kernels: which block owns which heads, units and gate
// rows, which thread and lane hold which element of each tensor-core fragment, where partial
// sums and h_t live in shared memory, and how h_t travels between the blocks of a head.
//
// Plain C++17 with no CUDA or torch headers: the kernels (nvcc) and a host simulation of a whole
// block (tests/kernels/cuda_layout_sim.cpp, built with g++) call the same functions, so a layout
// bug shows up on a CPU. Nothing here touches memory; every function maps indices to indices.
//
// The step's product, per block (see flashseq/kernels/fused_rnn/plan.py, CUDA model):
//   D[row, b] = sum_k A[row, k] * B[k, b],  row = (gate, unit) of the block's G*BH gate rows,
//   A[row, k] = r[gate, head, k, unit]      (recurrent weights: the mma A operand, registers),
//   B[k, b]   = h_prev[b, head, k]          (h^T: the mma B operand, read from shared memory).
// Warp (wm, wk) of the WM x WK warp grid owns gate rows [wm*RW, (wm+1)*RW), RW = G*BH/WM, and the
// reduction slice k in [wk*KW, (wk+1)*KW), KW = DHP/WK; the WK partial sums meet in shared memory.
#pragma once

#if defined(__CUDACC__)
#define FLASHSEQ_LAYOUT_FN __host__ __device__ __forceinline__ constexpr
#else
#define FLASHSEQ_LAYOUT_FN inline constexpr
#endif

namespace flashseq {
namespace fused {

// ---------------------------------------------------------------------------------------------
// Fragments of one warp-wide mma.sync (PTX ISA, "Matrix fragments for mma.m16n8k16" and
// ".m16n8k8" with .tf32). Lane = 4 * group + thread_in_group. Elements are numbered in register
// order: for 16-bit types two elements share one 32-bit register, the lower index in the low half.
// ---------------------------------------------------------------------------------------------
struct RowCol {
  int row;
  int col;
};

template <int kK>
struct MmaShape;

// m16n8k16, A row-major 16x16 (8 elements per lane), B column-major 16x8 (4), C/D 16x8 fp32 (4).
template <>
struct MmaShape<16> {
  static constexpr int kM = 16, kN = 8, kK = 16;
  static constexpr int kAElems = 8, kBElems = 4, kCElems = 4;
  FLASHSEQ_LAYOUT_FN static RowCol a(int lane, int i) {
    return {(lane >> 2) + 8 * ((i >> 1) & 1), 2 * (lane & 3) + (i & 1) + 8 * (i >> 2)};
  }
  // B is indexed (k, n).
  FLASHSEQ_LAYOUT_FN static RowCol b(int lane, int i) {
    return {2 * (lane & 3) + (i & 1) + 8 * (i >> 1), lane >> 2};
  }
  FLASHSEQ_LAYOUT_FN static RowCol c(int lane, int i) {
    return {(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
  }
};

// m16n8k8 with tf32 operands: A 16x8 (4 elements, one per register), B 8x8 (2), C/D as above.
template <>
struct MmaShape<8> {
  static constexpr int kM = 16, kN = 8, kK = 8;
  static constexpr int kAElems = 4, kBElems = 2, kCElems = 4;
  FLASHSEQ_LAYOUT_FN static RowCol a(int lane, int i) {
    return {(lane >> 2) + 8 * (i & 1), (lane & 3) + 4 * (i >> 1)};
  }
  FLASHSEQ_LAYOUT_FN static RowCol b(int lane, int i) { return {(lane & 3) + 4 * i, lane >> 2}; }
  FLASHSEQ_LAYOUT_FN static RowCol c(int lane, int i) {
    return {(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
  }
};

// ---------------------------------------------------------------------------------------------
// A plan's tiling (FusedRNNPlan fields of the CUDA back end) and everything derived from it.
// ---------------------------------------------------------------------------------------------
struct GateUnit {
  int gate;
  int unit;  // unit inside the block's slice, 0..BH-1
};

struct BatchUnit {
  int b;     // row inside the block's batch tile, 0..BB-1
  int unit;  // unit inside the block's slice, 0..BH-1
};

struct Tiling {
  int G;    // gates of the cell
  int BB;   // batch rows per block (mma N: a multiple of 8)
  int BH;   // units of the head per block
  int WM;   // warps over the G*BH gate rows (each a multiple of 16 rows)
  int WK;   // warps splitting the reduction over DHP
  int DHP;  // head size padded to a multiple of 16
  int P;    // blocks per head (DHP / BH)
  int K;    // mma K: 16 (bf16/fp16) or 8 (tf32)
  int elem_bytes;  // bytes of one h element in shared memory (2 or 4)
  // 1: the sm_90a product uses wgmma (warpgroup MMA, see "wgmma" below), which changes the warp
  // roles, the h buffer's layout and the number of partial sums; 0: mma.sync.
  int gmma = 0;

  FLASHSEQ_LAYOUT_FN int warps() const { return WM * WK; }
  FLASHSEQ_LAYOUT_FN int threads() const { return 32 * WM * WK; }
  FLASHSEQ_LAYOUT_FN int rows() const { return G * BH; }
  FLASHSEQ_LAYOUT_FN int rows_per_warp() const { return G * BH / WM; }
  FLASHSEQ_LAYOUT_FN int m_tiles() const { return rows_per_warp() / 16; }
  FLASHSEQ_LAYOUT_FN int k_per_warp() const { return DHP / WK; }
  FLASHSEQ_LAYOUT_FN int k_tiles() const { return DHP / (WK * K); }
  FLASHSEQ_LAYOUT_FN int n_tiles() const { return BB / 8; }
  // 32-bit registers of one A fragment per lane (4 for both shapes) and of the whole slice
  FLASHSEQ_LAYOUT_FN int a_regs() const { return m_tiles() * k_tiles() * 4; }
  // (batch, unit) elements of the pointwise step each thread owns (the last ones may be idle)
  FLASHSEQ_LAYOUT_FN int elems_per_thread() const { return (BB * BH + threads() - 1) / threads(); }

  // Why a tiling cannot be served; nullptr when it can. Checked by static_assert in the kernels
  // and by the host test on every plan.
  FLASHSEQ_LAYOUT_FN const char* invalid() const {
    return (K != 16 && K != 8) ? "K must be 16 or 8"
           : (BB % 8 != 0) ? "BB must be a multiple of 8 (mma N)"
           : (BH % 8 != 0) ? "BH must be a multiple of 8 (16-byte pieces of h per block)"
           : (DHP % 16 != 0) ? "DHP must be a multiple of 16"
           : (P * BH != DHP) ? "P * BH must equal DHP"
           : (rows() % (16 * WM) != 0) ? "G*BH must split into WM warps of whole 16-row tiles"
           : (DHP % (WK * K) != 0) ? "DHP must split into WK warps of whole K tiles"
           : (threads() > 1024) ? "at most 1024 threads per block"
           : gmma ? gmma_invalid()
           : nullptr;
  }

  // -- warps ------------------------------------------------------------------------------------
  FLASHSEQ_LAYOUT_FN int warp_m(int warp) const { return warp % WM; }
  FLASHSEQ_LAYOUT_FN int warp_k(int warp) const { return warp / WM; }

  // -- gate rows: gate-major inside a block, row = gate * BH + unit ------------------------------
  FLASHSEQ_LAYOUT_FN GateUnit row_gate_unit(int row) const { return {row / BH, row % BH}; }
  FLASHSEQ_LAYOUT_FN int gate_row(int gate, int unit) const { return gate * BH + unit; }

  // -- A fragments (weights) -------------------------------------------------------------------
  // Element i of lane `lane` in fragment (mt, kt) of warp `warp`: block gate row and k index.
  FLASHSEQ_LAYOUT_FN RowCol a_elem(int warp, int mt, int kt, int lane, int i) const {
    const RowCol rc = K == 16 ? MmaShape<16>::a(lane, i) : MmaShape<8>::a(lane, i);
    return {warp_m(warp) * rows_per_warp() + 16 * mt + rc.row,
            warp_k(warp) * k_per_warp() + K * kt + rc.col};
  }

  // The kernels load A register `reg` of every lane (K == 16: elements 2reg, 2reg+1, one 32-bit
  // word of two 16-bit weights; K == 8: element reg, one fp32 weight) as row row8 + group and
  // k = a_pair_k + a_lane_k(lane), row8 a multiple of 8: since BH is one too,
  // the 8 rows of a group never straddle two gates, so (gate, unit) = (row8 / BH, row8 % BH +
  // group) and the address is a per-thread base plus a compile-time offset when WM == 1.
  FLASHSEQ_LAYOUT_FN int a_pair_row8(int warp, int mt, int reg) const {
    return warp_m(warp) * rows_per_warp() + 16 * mt + 8 * (reg & 1);
  }
  FLASHSEQ_LAYOUT_FN int a_pair_k(int warp, int kt, int reg) const {
    return warp_k(warp) * k_per_warp() + K * kt + (K / 2) * (reg >> 1);
  }
  FLASHSEQ_LAYOUT_FN int a_lane_k(int lane) const { return K == 16 ? 2 * (lane & 3) : (lane & 3); }

  // -- B fragments (h^T from shared memory) ------------------------------------------------------
  // The shared h buffer is [BB][h_stride()] elements: row b holds h_prev[b, head, 0..DHP).
  // The padding (16 bytes) puts the 8 rows a fragment reads in distinct banks.
  // With gmma the buffer is in wgmma's core-matrix layout instead (g_h_offset below).
  FLASHSEQ_LAYOUT_FN int h_stride() const { return DHP + 16 / elem_bytes; }
  FLASHSEQ_LAYOUT_FN int h_buffer_elems() const { return gmma ? BB * DHP : BB * h_stride(); }
  FLASHSEQ_LAYOUT_FN int h_offset(int b, int k) const {
    return gmma ? g_h_offset(b, k) : b * h_stride() + k;
  }
  // Element i of lane `lane` in fragment (nt, kt) of warp `warp`: (k, batch row).
  FLASHSEQ_LAYOUT_FN RowCol b_elem(int warp, int nt, int kt, int lane, int i) const {
    const RowCol kn = K == 16 ? MmaShape<16>::b(lane, i) : MmaShape<8>::b(lane, i);
    return {warp_k(warp) * k_per_warp() + K * kt + kn.row, 8 * nt + kn.col};
  }
  FLASHSEQ_LAYOUT_FN int b_smem_offset(int warp, int nt, int kt, int lane, int i) const {
    return h_offset(b_elem(warp, nt, kt, lane, i).col, b_elem(warp, nt, kt, lane, i).row);
  }

  // -- C fragments (fp32 partial sums) -> shared [WK][BB][partial_stride()] ------------------------
  // Row stride = 4 (mod 32) words: the lanes of one store (8 rows x 4 column pairs) hit 32 banks.
  FLASHSEQ_LAYOUT_FN int partial_stride() const { return rows() + ((4 - rows()) % 32 + 32) % 32; }
  // one [BB][partial_stride()] slab per K slice: WK warps (mma.sync) or warpgroups (wgmma)
  FLASHSEQ_LAYOUT_FN int k_slices() const { return gmma ? warpgroups() : WK; }
  FLASHSEQ_LAYOUT_FN int partial_elems() const { return k_slices() * BB * partial_stride(); }
  FLASHSEQ_LAYOUT_FN int partial_offset(int wk, int b, int row) const {
    return (wk * BB + b) * partial_stride() + row;
  }
  // (gate row, batch row) of element i of lane `lane` in accumulator (mt, nt) of warp `warp`.
  FLASHSEQ_LAYOUT_FN RowCol c_elem(int warp, int mt, int nt, int lane, int i) const {
    const RowCol rc = MmaShape<16>::c(lane, i);  // the same for both shapes
    return {warp_m(warp) * rows_per_warp() + 16 * mt + rc.row, 8 * nt + rc.col};
  }
  FLASHSEQ_LAYOUT_FN int c_smem_offset(int warp, int mt, int nt, int lane, int i) const {
    return partial_offset(warp_k(warp), c_elem(warp, mt, nt, lane, i).col,
                          c_elem(warp, mt, nt, lane, i).row);
  }

  // -- pointwise ownership: thread tid owns elements e = tid + j * threads() of the block's
  // [BB, BH] (batch, unit) grid, unit fastest (coalesced h and wx accesses); it keeps the states
  // of these elements in registers for the whole sequence. Element past BB*BH: idle.
  FLASHSEQ_LAYOUT_FN int elem_index(int tid, int j) const { return tid + j * threads(); }
  FLASHSEQ_LAYOUT_FN bool elem_valid(int tid, int j) const { return elem_index(tid, j) < BB * BH; }
  FLASHSEQ_LAYOUT_FN BatchUnit elem(int tid, int j) const {
    return {elem_index(tid, j) / BH, elem_index(tid, j) % BH};
  }

  // -- blocks: blockIdx.x = head * P + slice (a cluster of P consecutive blocks on sm_90a),
  // blockIdx.y = batch tile.
  FLASHSEQ_LAYOUT_FN int block_head(int bx) const { return bx / P; }
  FLASHSEQ_LAYOUT_FN int block_slice(int bx) const { return bx % P; }
  FLASHSEQ_LAYOUT_FN int head_unit(int slice, int unit) const { return slice * BH + unit; }
  FLASHSEQ_LAYOUT_FN int batch_row(int by, int b) const { return by * BB + b; }

  // -- h exchange between the P blocks of a head (P > 1) ----------------------------------------
  // Through global memory: a [2][NH][tiles_b * BB][DHP] buffer, parity = step % 2 (a block may
  // run one step ahead of a slower one only after the barrier, so two buffers suffice). Block
  // (head, slice) writes units [slice*BH, (slice+1)*BH) of its BB rows; after the barrier every
  // block of the head reads all DHP units of its rows into its shared h buffer.
  FLASHSEQ_LAYOUT_FN long long xchg_offset(int parity, int heads, int padded_batch, int head,
                                           int batch, int k) const {
    return ((static_cast<long long>(parity) * heads + head) * padded_batch + batch) * DHP + k;
  }
  // The barrier counter of the P blocks sharing (head, batch tile); it reaches P*(step+1) when
  // all of them have written h_step.
  FLASHSEQ_LAYOUT_FN int barrier_group(int bx, int by, int heads) const {
    return by * heads + block_head(bx);
  }
  // Through distributed shared memory (sm_90a cluster of the P blocks of a head): block `slice`
  // writes h[b, unit] into its own shared h buffer at this offset; after the cluster barrier
  // every block pulls the other slices from the same offsets of its peers' buffers.
  FLASHSEQ_LAYOUT_FN int dsmem_offset(int slice, int b, int unit) const {
    return h_offset(b, head_unit(slice, unit));
  }

  // Copying h into the shared buffer (from global memory, or from the cluster's peers) goes in
  // 16-byte pieces of piece_elems() consecutive k of one batch row (8 16-bit or 4 fp32 values);
  // a piece never straddles two slices.
  FLASHSEQ_LAYOUT_FN int piece_elems() const { return 16 / elem_bytes; }
  FLASHSEQ_LAYOUT_FN int pieces() const { return BB * DHP / piece_elems(); }
  FLASHSEQ_LAYOUT_FN RowCol piece(int i) const {
    return {i / (DHP / piece_elems()), piece_elems() * (i % (DHP / piece_elems()))};
  }
  FLASHSEQ_LAYOUT_FN int piece_owner(int k) const { return k / BH; }

  // -- wgmma (sm_90a, gmma == 1) ----------------------------------------------------------------
  // wgmma.mma_async.m64nNkK runs on a warpgroup (4 consecutive warps): D[64 x N] += A[64 x K] *
  // B[K x N], A (the weights) from registers, B (h^T, N = BB) from shared memory through a
  // matrix descriptor, D fp32 in registers. K = 16 for bf16/fp16, K = 8 for tf32 (fp32 elements;
  // the ISA allows tf32 only with both operands K-major, as here: A's rows are k-contiguous
  // registers, B = h^T has k contiguous in shared memory). The warps() / 4 warpgroups split the reduction over
  // DHP (warpgroup wg owns k in [wg*KG, (wg+1)*KG), KG = DHP / warpgroups()); inside one, warp w
  // (= warp % 4) owns rows 16w..16w+15 of every 64-row tile of the gate rows. Rows past G*BH
  // (the last tile's padding) hold zero weights and their sums are dropped.
  FLASHSEQ_LAYOUT_FN int warpgroups() const { return warps() / 4; }
  FLASHSEQ_LAYOUT_FN int g_m_tiles() const { return (rows() + 63) / 64; }
  FLASHSEQ_LAYOUT_FN int g_k_per_wg() const { return DHP / warpgroups(); }
  FLASHSEQ_LAYOUT_FN int g_k_steps() const { return g_k_per_wg() / K; }
  FLASHSEQ_LAYOUT_FN int g_a_regs() const { return g_m_tiles() * g_k_steps() * 4; }
  FLASHSEQ_LAYOUT_FN int g_c_elems() const { return BB / 2; }  // fp32 D per thread and m tile
  FLASHSEQ_LAYOUT_FN const char* gmma_invalid() const {
    return ((K == 16) != (elem_bytes == 2)) ? "wgmma path: K = 16 takes 16-bit operands, K = 8 tf32"
           : (warps() % 4 != 0) ? "wgmma path: the block's warps must form whole warpgroups"
           : (DHP % (K * warpgroups()) != 0) ? "wgmma path: DHP must split into the warpgroups' K steps"
           : (BB != 8 && BB != 16) ? "wgmma path: N = BB must be 8 or 16 (the kernels' instructions)"
           : nullptr;
  }
  // A: per warp the same fragment as mma.sync of the same K (PTX ISA, "Register fragments" of
  // wgmma .m64nNk16, 16x16 per warp like m16n8k16, and .m64nNk8 tf32, 16x8 per warp like
  // m16n8k8: warp w of the warpgroup holds rows 16w..16w+15).
  FLASHSEQ_LAYOUT_FN RowCol g_a_elem(int warp, int mt, int kt, int lane, int i) const {
    const RowCol rc = K == 16 ? MmaShape<16>::a(lane, i) : MmaShape<8>::a(lane, i);
    return {64 * mt + 16 * (warp % 4) + rc.row, (warp / 4) * g_k_per_wg() + K * kt + rc.col};
  }
  // Register `reg` of every lane (K == 16: elements 2reg, 2reg+1; K == 8: element reg): row
  // row8 + lane/4, k g_a_pair_k + a_lane_k(lane), as the mma.sync registers.
  FLASHSEQ_LAYOUT_FN int g_a_pair_row8(int warp, int mt, int reg) const {
    return 64 * mt + 16 * (warp % 4) + 8 * (reg & 1);
  }
  FLASHSEQ_LAYOUT_FN int g_a_pair_k(int warp, int kt, int reg) const {
    return (warp / 4) * g_k_per_wg() + K * kt + (K / 2) * (reg >> 1);
  }
  // D element i of lane `lane` (warp `warp`) in m tile mt: (gate row, batch row). Per 8 columns
  // the m16n8 C layout, rows offset by 16 * (warp % 4).
  FLASHSEQ_LAYOUT_FN RowCol g_c_elem(int warp, int mt, int lane, int i) const {
    return {64 * mt + 16 * (warp % 4) + (lane >> 2) + 8 * ((i >> 1) & 1),
            8 * (i >> 2) + 2 * (lane & 3) + (i & 1)};
  }
  FLASHSEQ_LAYOUT_FN int g_c_smem_offset(int warp, int mt, int lane, int i) const {
    return partial_offset(warp / 4, g_c_elem(warp, mt, lane, i).col, g_c_elem(warp, mt, lane, i).row);
  }

  // B = h^T (K x N, k contiguous: "K-major", no transpose) in the canonical layout without
  // swizzling: "core matrices" of 8 batch rows x 16 bytes (8 consecutive k of 16 bits, or 4 of
  // tf32: piece_elems()), 128 contiguous bytes; core matrices along k are g_lbo_bytes() apart,
  // along the batch g_sbo_bytes() apart. A core-matrix row is one 16-byte piece of one batch
  // row, so the exchange copies work unchanged.
  FLASHSEQ_LAYOUT_FN int g_h_offset(int b, int k) const {
    return ((b / 8) * (DHP / piece_elems()) + k / piece_elems()) * (8 * piece_elems()) +
           (b % 8) * piece_elems() + k % piece_elems();
  }
  FLASHSEQ_LAYOUT_FN int g_lbo_bytes() const { return 128; }
  FLASHSEQ_LAYOUT_FN int g_sbo_bytes() const { return (DHP / piece_elems()) * 128; }
  // The 64-bit shared-memory matrix descriptor of B for k step kt of warpgroup wg, the h buffer
  // at shared-memory byte address `buffer` (16-byte aligned). PTX ISA "Matrix Descriptor
  // Format": bits 0-13 start address >> 4, 16-29 leading dimension byte offset >> 4, 32-45
  // stride dimension byte offset >> 4, 49-51 base offset (0), 62-63 swizzle mode (0: none).
  FLASHSEQ_LAYOUT_FN unsigned long long g_desc_b(unsigned buffer, int wg, int kt) const {
    const unsigned start =
        buffer + static_cast<unsigned>(elem_bytes * g_h_offset(0, wg * g_k_per_wg() + K * kt));
    return static_cast<unsigned long long>((start & 0x3FFFFu) >> 4) |
           (static_cast<unsigned long long>((g_lbo_bytes() >> 4) & 0x3FFF) << 16) |
           (static_cast<unsigned long long>((g_sbo_bytes() >> 4) & 0x3FFF) << 32);
  }
};

}  // namespace fused
}  // namespace flashseq
