// The persistent forward kernel of fused_rnn: one launch for all T steps.
//
// Block (head, slice, batch tile) keeps the recurrent weights of its BH units (all G gates,
// all DHP inputs) in registers as mma A fragments for the whole sequence. Per step:
//   1. wx of the thread's (batch, unit) elements is requested (streaming loads);
//   2. each warp multiplies its weight rows by its K slice of h_{t-1} (shared memory) with
//      mma.sync, fp32 accumulators, and stores the partial sums to shared memory;
//   3. each thread adds the WK partials, the bias and wx of its elements and runs the cell's
//      pointwise forward (csrc/cells) on fp32 states kept in registers across steps;
//   4. h_t reaches every block of the head: each block writes its slice into its own shared
//      buffer (P == 1: that is all) and, on sm_90a, the blocks of the head's cluster pull the
//      other slices from their peers' buffers (distributed shared memory) after a cluster
//      barrier; elsewhere the slices go through global memory and a flag barrier among the
//      head's P blocks, then into shared memory. h is double-buffered: one exchange per step.
// Index math (fragments, ownership, exchange) is csrc/fused/layout.h's, tested on the host.
#pragma once

#include <stdint.h>

#include "../cells/elman.h"
#include "../cells/gru.h"
#include "../cells/lstm.h"
#include "../cells/slstm.h"
#include "device.cuh"
#include "layout.h"
#include "layout_bwd.h"  // saved_offset (save mode)
#include "params.h"

namespace flashseq {
namespace fused {

// kElemBytes: bytes of one element (2: bf16/fp16, mma K 16; 4: fp32 on tf32, mma K 8).
template <class Cell, int BB, int BH, int WM, int WK, int DHP, bool kCluster, bool kWgmma = false,
          int kElemBytes = 2>
struct FwdTraits {
  static constexpr int kGates = Cell::kNumGates;
  static constexpr int kStates = Cell::kNumStates;
  static constexpr int kSaved = Cell::kNumSaved > 0 ? Cell::kNumSaved : 1;
  static constexpr Tiling kTiling{kGates, BB, BH, WM, WK, DHP, DHP / BH, kElemBytes == 4 ? 8 : 16,
                                  kElemBytes, kWgmma ? 1 : 0};
  static constexpr bool kClusterExchange = kCluster;
  static constexpr bool kGmma = kWgmma;  // the product through wgmma (sm_90a), see layout.h
  static constexpr int kThreads = kTiling.threads();
  // shared memory: two h buffers (elements; [BB][h_stride], or core matrices with wgmma) + the
  // partial sums [k_slices][BB][stride]
  static constexpr int kHBytes = 2 * kTiling.h_buffer_elems() * kElemBytes;
  static constexpr int kSmemBytes = kHBytes + kTiling.partial_elems() * 4;
  static_assert(kTiling.invalid() == nullptr, "tiling rejected by layout.h (Tiling::invalid)");
  static_assert(DHP % BH == 0, "BH must divide DHP");
  static_assert(!kCluster || DHP / BH > 1, "a cluster exchange needs several blocks per head");
};

template <class Traits, class E>
__device__ __forceinline__ const typename E::T* elem_ptr(const void* base, long long offset) {
  return static_cast<const typename E::T*>(base) + offset;
}

// This thread's h stores to shared memory, visible to the next step's wgmma (the async proxy)
// after the barrier that follows; nothing to do for mma.sync (ordinary shared loads).
template <class Traits>
__device__ __forceinline__ void smem_ready_for_product() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (Traits::kGmma) fence_smem_for_wgmma();
#endif
}

// FLASHSEQ_MAX_REGS (the plan's predicted registers per thread) caps ptxas's allocation: left
// free, ptxas spends registers it does not need on hoisting loads (up to 255), which would hide
// whether the kernel fits the plan's budget. With the cap, 0 spill bytes is the proof.
#if defined(FLASHSEQ_FWD_SAVE) && FLASHSEQ_FWD_SAVE
constexpr bool kSaveForBackward = true;
#else
constexpr bool kSaveForBackward = false;
#endif

#if defined(FLASHSEQ_MAX_REGS)
#define FLASHSEQ_FWD_BOUNDS __maxnreg__(FLASHSEQ_MAX_REGS)
#else
#define FLASHSEQ_FWD_BOUNDS __launch_bounds__(Traits::kThreads, 1)
#endif

template <class Cell, class E, class Traits>
__global__ void FLASHSEQ_FWD_BOUNDS fused_rnn_fwd_kernel(const FwdParams p) {
  using T = typename E::T;
  constexpr Tiling kT = Traits::kTiling;
  constexpr int G = Traits::kGates, S = Traits::kStates;
  constexpr int MT = kT.m_tiles(), KT = kT.k_tiles(), NT = kT.n_tiles();
  constexpr int EL = kT.elems_per_thread(), P = kT.P;

  extern __shared__ __align__(128) unsigned char smem[];
  T* sH = reinterpret_cast<T*>(smem);                               // [2][BB][h_stride]
  float* sPartial = reinterpret_cast<float*>(smem + Traits::kHBytes);  // [WK][BB][stride]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int head = kT.block_head(blockIdx.x), slice = kT.block_slice(blockIdx.x);
  const int tile_b = blockIdx.y;
  const int B = p.batch, DH = p.head_dim;

  // -- the block's recurrent weights -> registers, once (tagged loads, see device.cuh); last in
  // the prologue, so that little else is live while the fragments fill the registers ---------
  // per-thread base (head, slice, lane's row and k) + per-register offsets that are compile-time
  // constants when WM == 1 (layout.h: a_pair_row8, a_pair_k)
  const int gate_stride = p.heads * kT.DHP * kT.DHP;
  // a warp's rows are whole gates (RW a multiple of BH): its first gate goes into the base too
  constexpr bool kWarpWholeGates = kT.rows_per_warp() % kT.BH == 0;
  const T* rtBase = static_cast<const T*>(p.rt) + static_cast<long long>(head) * kT.DHP * kT.DHP +
                    (kT.head_unit(slice, 0) + (lane >> 2)) * kT.DHP + kT.a_lane_k(lane) +
                    (kWarpWholeGates ? kT.warp_m(warp) * (kT.rows_per_warp() / kT.BH) * gate_stride : 0);
  // A fragments: [m tile][k tile][register], weights (k, k+1) each, or one tf32 weight (wgmma:
  // 64-row m tiles, the warpgroup's k steps of 16 or 8; rows past G*BH are zero)
  constexpr int AM = Traits::kGmma ? kT.g_m_tiles() : MT, AK = Traits::kGmma ? kT.g_k_steps() : KT;
  uint32_t rA[AM][AK][4];
  if constexpr (Traits::kGmma) {
    const T* rtHead = static_cast<const T*>(p.rt) + static_cast<long long>(head) * kT.DHP * kT.DHP +
                      kT.head_unit(slice, 0) * kT.DHP + kT.a_lane_k(lane);
    // one run-time row base per (m tile, row half), then its k steps at compile-time offsets:
    // a single pointer is live at a time (ptxas spilled the prologue when all were)
#pragma unroll
    for (int mt = 0; mt < AM; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        // padding rows (past G*BH) load row 0's weights, unconditionally, and keep zeros:
        // predicated loads made ptxas materialise (and spill) one address per load
        const int row8 = kT.g_a_pair_row8(warp, mt, half);
        const bool live = row8 < kT.rows();
        const GateUnit gu = kT.row_gate_unit(live ? row8 : 0);  // 8 rows never straddle two gates
        const T* rowp = rtHead + gu.gate * gate_stride + (gu.unit + (lane >> 2)) * kT.DHP +
                        kT.g_a_pair_k(warp, 0, half);
#pragma unroll
        for (int kt = 0; kt < AK; ++kt)
#pragma unroll
          for (int reg = half; reg < 4; reg += 2) {
            const uint32_t w = load_weight_pair(rowp + (kT.g_a_pair_k(warp, kt, reg) -
                                                        kT.g_a_pair_k(warp, 0, half)));
            rA[mt][kt][reg] = live ? E::weight_operand(w) : 0u;  // tf32: rounded once, here
          }
      }
  } else {
    static_assert(E::kMmaK == kT.K, "the element type's mma shape must match the tiling's K");
    // one row base per (m tile, row half: registers reg & 1), then its k steps at compile-time
    // offsets: when a warp's rows are not whole gates, each base is a run-time choice, and ptxas
    // spilled the prologue with all of them live (GRU DH 64 on sm_80)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row8 = kT.a_pair_row8(warp, mt, half) -
                         (kWarpWholeGates ? kT.warp_m(warp) * kT.rows_per_warp() : 0);
        const GateUnit gu = kT.row_gate_unit(row8);
        const T* rowp = rtBase + gu.gate * gate_stride + gu.unit * kT.DHP + kT.a_pair_k(warp, 0, half);
#pragma unroll
        for (int kt = 0; kt < KT; ++kt)
#pragma unroll
          for (int reg = half; reg < 4; reg += 2)
            rA[mt][kt][reg] = E::weight_operand(load_weight_pair(
                rowp + (kT.a_pair_k(warp, kt, reg) - kT.a_pair_k(warp, 0, half))));
      }
  }

  // -- the thread's (batch, unit) elements: states and lengths ----------------------------------
  float st[EL][S];
  int len[EL];
#pragma unroll
  for (int j = 0; j < EL; ++j) {
    const BatchUnit e = kT.elem(tid, j);
    const int bg = kT.batch_row(tile_b, e.b), unit = kT.head_unit(slice, e.unit);
    const bool live = kT.elem_valid(tid, j) && bg < B && unit < DH;
    len[j] = live ? (p.lengths ? static_cast<int>(p.lengths[bg]) : p.steps) : 0;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const long long off = s * p.states0_stride[0] + bg * p.states0_stride[1] +
                            head * p.states0_stride[2] + unit * p.states0_stride[3];
      st[j][s] = live ? E::to_float(*elem_ptr<Traits, E>(p.states0, off)) : 0.f;
    }
  }

  // -- h_0 of the whole head -> shared buffer 0 (every block reads it from global memory) -------
#pragma unroll 1
  for (int idx = tid; idx < kT.BB * kT.DHP; idx += kT.threads()) {
    const int b = idx / kT.DHP, k = idx % kT.DHP, bg = kT.batch_row(tile_b, b);
    T v = E::from_float(0.f);
    if (bg < B && k < DH)
      v = *elem_ptr<Traits, E>(p.states0, bg * p.states0_stride[1] + head * p.states0_stride[2] +
                                              k * p.states0_stride[3]);
    sH[kT.h_offset(b, k)] = E::operand(v);
  }
  smem_ready_for_product<Traits>();
  __syncthreads();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (Traits::kClusterExchange) cluster_barrier();  // peers' shared memory exists
#endif

  const int padded_b = gridDim.y * kT.BB;
  for (int t = 0; t < p.steps; ++t) {
    // Indices re-read each step (opaque to the compiler): kept from the prologue, the per-element
    // addresses derived from them would stay live across the loop and spill.
    const int tid_s = fresh_tid(), lane_s = tid_s & 31, warp_s = tid_s >> 5;
    const int head_s = kT.block_head(fresh_ctaid_x()), slice_s = kT.block_slice(fresh_ctaid_x());
    const int tile_s = fresh_ctaid_y();
    const T* sCur = sH + (t & 1) * kT.h_buffer_elems();
    T* sNext = sH + ((t + 1) & 1) * kT.h_buffer_elems();

    if constexpr (Traits::kGmma) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
      // 2'. wgmma: this warpgroup's K slice for all 64-row tiles, B = h^T from sCur through the
      // descriptor; one commit group, waited for before the partial sums are stored
      constexpr int N = kT.BB;
      float gacc[AM][N / 2];
      zero_pinned_accumulators(gacc);
      const unsigned buf = static_cast<unsigned>(__cvta_generic_to_shared(sCur));
      const int wg = warp_s >> 2;
      wgmma_fence();
#pragma unroll
      for (int mt = 0; mt < AM; ++mt)
#pragma unroll
        for (int kt = 0; kt < AK; ++kt) Wgmma<E>::template run<N>(gacc[mt], rA[mt][kt], kT.g_desc_b(buf, wg, kt));
      wgmma_commit();
      wgmma_wait();
#pragma unroll
      for (int mt = 0; mt < AM; ++mt)
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
          pin_register(gacc[mt][i]);
          if (kT.g_c_elem(warp_s, mt, lane_s, i).row < kT.rows())
            sPartial[kT.g_c_smem_offset(warp_s, mt, lane_s, i)] = gacc[mt][i];
        }
#endif
    } else {
    // 2. partial products of this warp_s's rows over its K slice_s: [MT x 16 rows] x [NT x 8 batch]
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        // B fragment, two 32-bit reads: 16-bit, elements (0,1) and (2,3) are adjacent k of one
        // batch row; tf32, elements 0 and 1 are one value each
        constexpr int kB1 = kT.K == 16 ? 2 : 1;
        const uint32_t b0 =
            *reinterpret_cast<const uint32_t*>(sCur + kT.b_smem_offset(warp_s, nt, kt, lane_s, 0));
        const uint32_t b1 =
            *reinterpret_cast<const uint32_t*>(sCur + kT.b_smem_offset(warp_s, nt, kt, lane_s, kB1));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) E::mma(acc[mt][nt], rA[mt][kt], b0, b1);
      }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) sPartial[kT.c_smem_offset(warp_s, mt, nt, lane_s, i)] = acc[mt][nt][i];
    }
    __syncthreads();

    // 1. wx of this step (after the product: its fragments and accumulators are dead by now)
    float wx[EL][G];
#pragma unroll
    for (int j = 0; j < EL; ++j) {
      const BatchUnit e = kT.elem(tid_s, j);
      const int bg = kT.batch_row(tile_s, e.b), unit = kT.head_unit(slice_s, e.unit);
      const bool live = t < len[j];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const long long off = bg * p.wx_stride[0] + t * p.wx_stride[1] + g * p.wx_stride[2] +
                              head_s * p.wx_stride[3] + unit * p.wx_stride[4];
        wx[j][g] = live ? load_stream<E>(elem_ptr<Traits, E>(p.wx, off)) : 0.f;
      }
    }

    // 3. the cell, per owned element; 4a. h_t into the exchange
#pragma unroll
    for (int j = 0; j < EL; ++j) {
      if (!kT.elem_valid(tid_s, j)) continue;
      const BatchUnit e = kT.elem(tid_s, j);
      const int bg = kT.batch_row(tile_s, e.b), unit = kT.head_unit(slice_s, e.unit);
      if (t < len[j]) {
        float rh[G], next[S], saved[Traits::kSaved];
#pragma unroll
        for (int g = 0; g < G; ++g) {
          float sum = E::to_float(__ldg(elem_ptr<Traits, E>(
              p.bias, g * p.bias_stride[0] + head_s * p.bias_stride[1] + unit * p.bias_stride[2])));
#pragma unroll
          for (int wk = 0; wk < kT.k_slices(); ++wk) sum += sPartial[kT.partial_offset(wk, e.b, kT.gate_row(g, e.unit))];
          rh[g] = sum;
        }
        Cell::forward(wx[j], rh, st[j], next, saved);
#pragma unroll
        for (int s = 0; s < S; ++s) st[j][s] = next[s];
        // save mode (backward.cuh): compiled in only with FLASHSEQ_FWD_SAVE=1 (training builds)
        if (kSaveForBackward && p.save_states != nullptr && bg < B && unit < DH) {
#pragma unroll
          for (int s = 0; s < S; ++s)
            p.save_states[saved_offset(t, s, S, B, p.heads, DH, bg, head_s, unit)] = next[s];
#pragma unroll
          for (int x = 0; x < Cell::kNumSaved; ++x)
            p.save_gates[saved_offset(t, x, Cell::kNumSaved, B, p.heads, DH, bg, head_s, unit)] = saved[x];
        }
      }
      const bool live = bg < B && unit < DH;
      if (live) {
        T* out = static_cast<T*>(p.h) + bg * p.h_stride[0] + t * p.h_stride[1] +
                 head_s * p.h_stride[2] + unit * p.h_stride[3];
        *out = E::from_float(t < len[j] ? st[j][0] : 0.f);
      }
      // padded units and rows hold h = 0, so they add nothing to the next product
      const T hval = E::operand(E::from_float(live ? st[j][0] : 0.f));
      if constexpr (P == 1 || Traits::kClusterExchange) {
        sNext[kT.dsmem_offset(slice_s, e.b, e.unit)] = hval;  // own slice, own buffer
      } else {
        static_cast<T*>(p.xchg)[kT.xchg_offset((t + 1) & 1, p.heads, padded_b, head_s, bg, unit)] = hval;
      }
    }

    // 4b. everyone's h_t in this block's next buffer
    if constexpr (P == 1) {
      smem_ready_for_product<Traits>();
      __syncthreads();
    } else if constexpr (Traits::kClusterExchange) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      // pull the other slices from the peers' buffers (same offsets), 16 bytes at a time; a
      // peer overwrites this buffer again only after the next step's cluster barrier
      cluster_barrier();
#pragma unroll 1
      for (int i = tid_s; i < kT.pieces(); i += kT.threads()) {
        const RowCol bk = kT.piece(i);
        const int owner = kT.piece_owner(bk.col);
        if (owner != slice_s) {
          T* local = sNext + kT.h_offset(bk.row, bk.col);
          *reinterpret_cast<uint4*>(local) = cluster_load_16(cluster_map(local, owner));
        }
      }
      smem_ready_for_product<Traits>();
      __syncthreads();
#endif
    } else {
      group_barrier(p.barrier + kT.barrier_group(blockIdx.x, tile_s, p.heads),
                    static_cast<unsigned>(P) * static_cast<unsigned>(t + 1));
      // the tile's [BB, DHP] rows are contiguous in the exchange buffer: 16-byte pieces
      const T* src = static_cast<const T*>(p.xchg) +
                     kT.xchg_offset((t + 1) & 1, p.heads, padded_b, head_s, kT.batch_row(tile_s, 0), 0);
#pragma unroll 1
      for (int i = tid_s; i < kT.pieces(); i += kT.threads()) {
        const RowCol bk = kT.piece(i);
        *reinterpret_cast<uint4*>(sNext + kT.h_offset(bk.row, bk.col)) =
            load_exchanged_16(src + bk.row * kT.DHP + bk.col);
      }
      smem_ready_for_product<Traits>();
      __syncthreads();
    }
  }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // peers may still be reading this block's last h: its shared memory must outlive them
  if constexpr (Traits::kClusterExchange) cluster_barrier();
#endif

  // -- the states after each row's last valid step ----------------------------------------------
#pragma unroll
  for (int j = 0; j < EL; ++j) {
    const BatchUnit e = kT.elem(tid, j);
    const int bg = kT.batch_row(tile_b, e.b), unit = kT.head_unit(slice, e.unit);
    if (!kT.elem_valid(tid, j) || bg >= B || unit >= DH) continue;
#pragma unroll
    for (int s = 0; s < S; ++s)
      static_cast<T*>(p.last_states)[s * p.last_stride[0] + bg * p.last_stride[1] +
                                     head * p.last_stride[2] + unit * p.last_stride[3]] =
          E::from_float(st[j][s]);
  }
}

}  // namespace fused
}  // namespace flashseq
