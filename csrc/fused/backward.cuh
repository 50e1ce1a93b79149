// The persistent backward kernel of fused_rnn: one launch for all T steps, in reverse.
//
// Same blocks as the forward plan: block (head, slice, batch tile) owns the units of its slice
// (all G gates) and keeps r[g, head, k, e] of those units for all k in registers, as mma A
// fragments of the transposed view A[k, (g, e)] (layout_bwd.h). Per reversed step t:
//   1. each thread runs the cell's pointwise backward (csrc/cells, the only copy of the math)
//      for its (batch, unit) elements: d(h_t) = d(output h_t) + the recurrent part from step t+1
//      + the direct part (GRU), the other states' gradients carried in registers; the values
//      the forward saved (save mode) give the gates and the previous states. It writes d(wx_t)
//      and d(rh_t) (fp32, for d(r) and d(b), one GEMM over all steps afterwards, outside the
//      kernel) and puts d(rh_t) into shared memory;
//   2. each warp multiplies its rows k of the weights by its slice of d(rh_t) with mma.sync,
//      fp32 accumulators: the block's partial d(h_{t-1})[b, k] over its own gate columns, for
//      every k of the head, into shared memory (double-buffered by step parity); on sm_90a
//      (kWgmma) each warpgroup does it with wgmma on 64-row tiles of k, d(rh_t) read by the
//      tensor core from shared memory through a matrix descriptor (layout_bwd.h "wgmma");
//   3. the P blocks of a head sum their partials for the units each one owns: after a barrier
//      (P == 1: the block's own; sm_90a cluster: distributed shared memory of the peers; else:
//      an fp32 global buffer behind the head's flag barrier), read at the next step's step 1.
// Rows past their length contribute nothing: their d(rh) is zero, their carried gradients wait
// untouched until the row's last valid step, as the forward's states wait after it.
#pragma once

#include <stdint.h>

#include "../cells/elman.h"
#include "../cells/gru.h"
#include "../cells/lstm.h"
#include "../cells/slstm.h"
#include "device.cuh"
#include "layout_bwd.h"
#include "params_bwd.h"

namespace flashseq {
namespace fused {

// kElemBytes: 2 (bf16/fp16, mma K 16) or 4 (fp32 on tf32: mma.sync m16n8k8 or wgmma m64nNk8).
template <class Cell, int BB, int BH, int WM, int WK, int DHP, bool kCluster, bool kWgmma = false,
          int kElemBytes = 2>
struct BwdTraits {
  static constexpr int kGates = Cell::kNumGates;
  static constexpr int kStates = Cell::kNumStates;
  static constexpr int kSaved = Cell::kNumSaved > 0 ? Cell::kNumSaved : 1;
  static constexpr BwdTiling kTiling =
      BwdTiling::of(Tiling{kGates, BB, BH, WM, WK, DHP, DHP / BH, kElemBytes == 4 ? 8 : 16, kElemBytes,
                           kWgmma ? 1 : 0});
  static constexpr bool kClusterExchange = kCluster;
  static constexpr bool kGmma = kWgmma;  // the product through wgmma (sm_90a), see layout_bwd.h
  static constexpr int kThreads = kTiling.threads();
  // shared memory: d(rh) [BB][dg_stride] (elements, tf32-rounded fp32 for Fp32, rounded up to
  // 16 bytes; core matrices with wgmma) + the partial sums [2][k_slices][BB][part_stride] fp32
  static constexpr int kDgBytes = (kTiling.dg_elems() * kElemBytes + 15) / 16 * 16;
  static constexpr int kSmemBytes = kDgBytes + 2 * kTiling.part_buffer_elems() * 4;
  static_assert(kTiling.invalid() == nullptr, "tiling rejected by layout_bwd.h (BwdTiling::invalid)");
  static_assert(DHP % BH == 0, "BH must divide DHP");
  static_assert(!kCluster || DHP / BH > 1, "a cluster exchange needs several blocks per head");
};

// An fp32 partial another block published before the barrier: bypass the (incoherent) L1.
__device__ __forceinline__ float load_exchanged_f32(const float* p) {
  float v;
  asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
  return v;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ float cluster_load_f32(uint32_t addr) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
#endif

// d(h_prev)[b, k] for the block's own unit k: the P blocks' partials (each the sum of its WKB
// warps' or warpgroups' partials) in the fixed order peer 0..P-1, wk 0..k_slices-1.
template <class Traits>
__device__ __forceinline__ float gather_dh(const BwdParams& p, const float* sPart, int parity,
                                           int b, int k, int head, int bg, int padded_b) {
  constexpr BwdTiling kB = Traits::kTiling;
  constexpr int P = kB.f.P;
  float sum = 0.f;
  if constexpr (P == 1) {
#pragma unroll
    for (int wk = 0; wk < kB.k_slices(); ++wk) sum += sPart[kB.part_offset(parity, wk, b, k)];
  } else if constexpr (Traits::kClusterExchange) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll 1
    for (int peer = 0; peer < P; ++peer)
#pragma unroll
      for (int wk = 0; wk < kB.k_slices(); ++wk)
        sum += cluster_load_f32(cluster_map(sPart + kB.part_offset(parity, wk, b, k), peer));
#endif
  } else {
#pragma unroll 1
    for (int peer = 0; peer < P; ++peer)
      sum += load_exchanged_f32(p.xpart + kB.xpart_offset(parity, p.heads, padded_b, head, peer, bg, k));
  }
  return sum;
}

#if defined(FLASHSEQ_MAX_REGS)
#define FLASHSEQ_BWD_BOUNDS __maxnreg__(FLASHSEQ_MAX_REGS)
#else
#define FLASHSEQ_BWD_BOUNDS __launch_bounds__(Traits::kThreads, 1)
#endif

template <class Cell, class E, class Traits>
__global__ void FLASHSEQ_BWD_BOUNDS fused_rnn_bwd_kernel(const BwdParams p) {
  using T = typename E::T;
  constexpr BwdTiling kB = Traits::kTiling;
  constexpr Tiling kT = kB.f;
  constexpr int G = Traits::kGates, S = Traits::kStates, NS = Cell::kNumSaved;
  constexpr int MT = kB.m_tiles(), KT = kB.k_tiles(), NT = kB.n_tiles();
  constexpr int EL = kT.elems_per_thread(), P = kT.P;

  extern __shared__ __align__(128) unsigned char smem[];
  T* sDg = reinterpret_cast<T*>(smem);                                 // [BB][dg_stride]
  float* sPart = reinterpret_cast<float*>(smem + Traits::kDgBytes);    // [2][WKB][BB][stride]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int head = kT.block_head(blockIdx.x), slice = kT.block_slice(blockIdx.x);
  const int tile_b = blockIdx.y;
  const int B = p.batch, DH = p.head_dim;

  // -- the block's weights -> registers, once (tagged loads, device.cuh). Per-thread base (head,
  // slice, the warp's rows, the lane's row and unit) + per-register offsets that are compile-time
  // constants when WKB == 1 (layout_bwd.h: a_pair_row8, a_pair_col8) --------------------------
  const int gate_stride = p.heads * kT.DHP * kT.DHP;
  // A fragments (wgmma: the warpgroup's 64-row tiles and k steps of its column slice)
  constexpr int AM = Traits::kGmma ? kB.g_wg_m_tiles() : MT, AK = Traits::kGmma ? kB.g_k_steps() : KT;
  uint32_t rA[AM][AK][4];  // [m tile][k tile][register]: units (e, e+1) of one gate, row k
  if constexpr (Traits::kGmma) {
    // rows past DHP (the last 64-row tile's padding) load row 0 and keep zeros; a plan whose
    // DHP is a multiple of 64 has none, and no select
    constexpr bool kPadRows = kB.g_m_tiles() * 64 != kT.DHP;
    // per-thread base at the warp's first row; per-register offsets are compile-time constants
    // when GWK == 1 (one run-time address per load made ptxas keep them all and spill)
    const int row0 = kB.g_row16(warp, 0);
    const T* rBase = static_cast<const T*>(p.r) +
                     kB.r_offset(p.heads, head, slice, 0, row0 + (lane >> 2), kB.a_lane_col(lane));
    // m tiles outermost (one tile's registers complete before the next: with k steps outermost
    // ptxas materialised one address per load and spilled at the plan's cap)
#pragma unroll
    for (int mt = 0; mt < AM; ++mt)
#pragma unroll
      for (int kt = 0; kt < AK; ++kt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const GateUnit gu = kB.col_gate_unit(kB.g_a_pair_col8(warp, kt, 2 * half));
          const T* gBase = (rBase + gu.gate * gate_stride) + gu.unit;  // unit: a constant offset
#pragma unroll
          for (int reg = 2 * half; reg < 2 * half + 2; ++reg) {
            const int row8 = kB.g_a_pair_row8(warp, mt, reg);
            const bool live = !kPadRows || row8 < kT.DHP;
            const uint32_t w = load_weight_pair(gBase + (live ? row8 - row0 : -row0) * kT.DHP);
            rA[mt][kt][reg] = live ? E::weight_operand(w) : 0u;  // tf32: rounded once, here
          }
        }
  } else {
  static_assert(E::kMmaK == kT.K, "the element type's mma shape must match the tiling's K");
  const T* rBase = static_cast<const T*>(p.r) +
                   kB.r_offset(p.heads, head, slice, 0, kB.warp_m(warp) * kB.rows_per_warp() + (lane >> 2),
                               kB.a_lane_col(lane));
  // k tiles outermost: one gate's base address is live at a time (gate-major columns), else
  // ptxas keeps all G of them and spills in this prologue
#pragma unroll
  for (int kt = 0; kt < KT; ++kt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const GateUnit gu = kB.col_gate_unit(kB.a_pair_col8(warp, kt, 2 * half));
      const T* gBase = (rBase + gu.gate * gate_stride) + gu.unit;  // unit: a constant offset
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int reg = 2 * half; reg < 2 * half + 2; ++reg) {
          const int row = kB.a_pair_row8(warp, mt, reg) - kB.warp_m(warp) * kB.rows_per_warp();
          rA[mt][kt][reg] = E::weight_operand(load_weight_pair(gBase + row * kT.DHP));
        }
    }
  }

  // -- the thread's (batch, unit) elements: carried state gradients (d(h) in [0]), lengths -----
  float dst[EL][S];
  int len[EL];
#pragma unroll
  for (int j = 0; j < EL; ++j) {
    const BatchUnit e = kT.elem(tid, j);
    const int bg = kT.batch_row(tile_b, e.b), unit = kT.head_unit(slice, e.unit);
    const bool live = kT.elem_valid(tid, j) && bg < B && unit < DH;
    len[j] = live ? (p.lengths ? static_cast<int>(p.lengths[bg]) : p.steps) : 0;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const long long off = s * p.dlast_stride[0] + bg * p.dlast_stride[1] +
                            head * p.dlast_stride[2] + unit * p.dlast_stride[3];
      dst[j][s] = live ? E::to_float(static_cast<const T*>(p.dlast)[off]) : 0.f;
    }
  }

  const int padded_b = gridDim.y * kT.BB;
  for (int i = 0; i < p.steps; ++i) {
    const int t = p.steps - 1 - i;
    // indices re-read each step, as in the forward (kept live, their addresses would spill)
    const int tid_s = fresh_tid(), lane_s = tid_s & 31, warp_s = tid_s >> 5;
    const int head_s = kT.block_head(fresh_ctaid_x()), slice_s = kT.block_slice(fresh_ctaid_x());
    const int tile_s = fresh_ctaid_y();

    // 1. the cell's backward per owned element; d(rh_t) into shared memory
#pragma unroll
    for (int j = 0; j < EL; ++j) {
      if (!kT.elem_valid(tid_s, j)) continue;
      const BatchUnit e = kT.elem(tid_s, j);
      const int bg = kT.batch_row(tile_s, e.b), unit = kT.head_unit(slice_s, e.unit);
      const bool live = bg < B && unit < DH;
      // the recurrent part of d(h_t), from step t+1's d(rh) (zero before the first product)
      const float rec = (i > 0 && live)
                            ? gather_dh<Traits>(p, sPart, (i - 1) & 1, e.b, kB.own_row(slice_s, e.unit),
                                                head_s, bg, padded_b)
                            : 0.f;
      float drh[G];
#pragma unroll
      for (int g = 0; g < G; ++g) drh[g] = 0.f;
      if (live && t < len[j]) {
        float saved[Traits::kSaved], prev[S], dnext[S], dwx[G], dprev[S];
#pragma unroll
        for (int x = 0; x < NS; ++x)
          saved[x] = __ldcs(p.save_gates + saved_offset(t, x, NS, B, p.heads, DH, bg, head_s, unit));
        if constexpr (NS == 0) saved[0] = 0.f;
#pragma unroll
        for (int s = 0; s < S; ++s)
          prev[s] = t > 0 ? __ldcs(p.save_states + saved_offset(t - 1, s, S, B, p.heads, DH, bg, head_s, unit))
                          : E::to_float(static_cast<const T*>(p.states0)[
                                s * p.states0_stride[0] + bg * p.states0_stride[1] +
                                head_s * p.states0_stride[2] + unit * p.states0_stride[3]]);
        const float h_next = __ldcs(p.save_states + saved_offset(t, 0, S, B, p.heads, DH, bg, head_s, unit));
        const float dy = E::to_float(__ldcs(static_cast<const T*>(p.dh) + bg * p.dh_stride[0] +
                                            t * p.dh_stride[1] + head_s * p.dh_stride[2] +
                                            unit * p.dh_stride[3]));
        dnext[0] = dst[j][0] + rec + dy;
#pragma unroll
        for (int s = 1; s < S; ++s) dnext[s] = dst[j][s];
        Cell::backward(saved, prev, h_next, dnext, dwx, drh, dprev);
#pragma unroll
        for (int s = 0; s < S; ++s) dst[j][s] = dprev[s];
#pragma unroll
        for (int g = 0; g < G; ++g)
          static_cast<T*>(p.dwx)[bg * p.dwx_stride[0] + t * p.dwx_stride[1] + g * p.dwx_stride[2] +
                                 head_s * p.dwx_stride[3] + unit * p.dwx_stride[4]] = E::from_float(dwx[g]);
      } else if (live) {
        dst[j][0] += rec;  // zero: the row's later steps were not valid either
#pragma unroll
        for (int g = 0; g < G; ++g)
          static_cast<T*>(p.dwx)[bg * p.dwx_stride[0] + t * p.dwx_stride[1] + g * p.dwx_stride[2] +
                                 head_s * p.dwx_stride[3] + unit * p.dwx_stride[4]] = E::from_float(0.f);
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (live)
          p.drh[bg * p.drh_stride[0] + t * p.drh_stride[1] + g * p.drh_stride[2] +
                head_s * p.drh_stride[3] + unit * p.drh_stride[4]] = drh[g];
        // padded units and rows hold 0, so they add nothing to the product
        sDg[kB.dg_offset(e.b, g * kT.BH + e.unit)] = E::operand(E::from_float(drh[g]));
      }
    }
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // this thread's d(rh) stores, visible to the wgmma (async proxy) after the barrier
    if constexpr (Traits::kGmma) fence_smem_for_wgmma();
#endif
    __syncthreads();

    const int parity = i & 1;
    if constexpr (Traits::kGmma) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // 2'. wgmma: this warpgroup's 64-row tiles of k over its column slice, B = d(rh)^T from sDg
    // through the descriptor; one commit group, waited for before the partials are stored
    constexpr int N = kT.BB;
    float gacc[AM][N / 2];
    zero_pinned_accumulators(gacc);
    const unsigned buf = static_cast<unsigned>(__cvta_generic_to_shared(sDg));
    const int gwk = kB.g_wk(warp_s);
    wgmma_fence();
#pragma unroll
    for (int mt = 0; mt < AM; ++mt)
#pragma unroll
      for (int kt = 0; kt < AK; ++kt)
        Wgmma<E>::template run<N>(gacc[mt], rA[mt][kt], kB.g_desc_b(buf, gwk, kt));
    wgmma_commit();
    wgmma_wait();
#pragma unroll
    for (int mt = 0; mt < AM; ++mt)
#pragma unroll
      for (int c = 0; c < N / 2; ++c) {
        pin_register(gacc[mt][c]);
        if (kB.g_c_elem(warp_s, mt, lane_s, c).row < kT.DHP)
          sPart[kB.g_c_smem_offset(parity, warp_s, mt, lane_s, c)] = gacc[mt][c];
      }
#endif
    } else {
    // 2. partial d(h_{t-1}) of this warp's rows k over its gate columns: [MT x 16] x [NT x 8]
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mt][nt][c] = 0.f;
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        // B fragment: 16-bit, elements (0,1) and (2,3) are adjacent gate columns of one batch
        // row (one 32-bit word each); tf32, elements 0 and 1
        constexpr int kB1 = kB.b_regs_step();
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(sDg + kB.b_smem_offset(warp_s, nt, kt, lane_s, 0));
        const uint32_t b1 =
            *reinterpret_cast<const uint32_t*>(sDg + kB.b_smem_offset(warp_s, nt, kt, lane_s, kB1));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) E::mma(acc[mt][nt], rA[mt][kt], b0, b1);
      }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          sPart[kB.c_smem_offset(parity, warp_s, mt, nt, lane_s, c)] = acc[mt][nt][c];
    }

    // 3. the partials where the next step's gather finds them
    if constexpr (P == 1) {
      __syncthreads();
    } else if constexpr (Traits::kClusterExchange) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      // a peer overwrites this parity's buffer only after the next step's cluster barrier,
      // which this block reaches after its gather
      cluster_barrier();
#endif
    } else {
      __syncthreads();
      // the block's partial (its WKB warps summed) -> the exchange, then the head's barrier
#pragma unroll 1
      for (int idx = tid_s; idx < kT.BB * kT.DHP; idx += kT.threads()) {
        const int b = idx / kT.DHP, k = idx % kT.DHP;
        float sum = 0.f;
#pragma unroll
        for (int wk = 0; wk < kB.k_slices(); ++wk) sum += sPart[kB.part_offset(parity, wk, b, k)];
        p.xpart[kB.xpart_offset(parity, p.heads, padded_b, head_s, slice_s, kT.batch_row(tile_s, b), k)] = sum;
      }
      group_barrier(p.barrier + kT.barrier_group(blockIdx.x, tile_s, p.heads),
                    static_cast<unsigned>(P) * static_cast<unsigned>(i + 1));
    }
  }

  // -- d(initial states): the carried gradients plus step 0's recurrent part ---------------------
#pragma unroll
  for (int j = 0; j < EL; ++j) {
    const BatchUnit e = kT.elem(tid, j);
    const int bg = kT.batch_row(tile_b, e.b), unit = kT.head_unit(slice, e.unit);
    if (!kT.elem_valid(tid, j) || bg >= B || unit >= DH) continue;
    const float rec = p.steps > 0 ? gather_dh<Traits>(p, sPart, (p.steps - 1) & 1, e.b,
                                                      kB.own_row(slice, e.unit), head, bg, padded_b)
                                  : 0.f;
#pragma unroll
    for (int s = 0; s < S; ++s)
      static_cast<T*>(p.dstates0)[s * p.dstates0_stride[0] + bg * p.dstates0_stride[1] +
                                  head * p.dstates0_stride[2] + unit * p.dstates0_stride[3]] =
          E::from_float(dst[j][s] + (s == 0 ? rec : 0.f));
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // peers may still be reading this block's last partials: its shared memory must outlive them
  if constexpr (Traits::kClusterExchange) cluster_barrier();
#endif
}

}  // namespace fused
}  // namespace flashseq
