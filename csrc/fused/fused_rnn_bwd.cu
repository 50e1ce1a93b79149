// One instantiation of the persistent backward kernel and its launcher, chosen by the same -D
// flags as the forward's (csrc/fused/fused_rnn_fwd.cu): FLASHSEQ_CELL, _ELEM, _BB, _BH, _WM,
// _WK, _DHP, _CLUSTER, optional _MAX_REGS and _GMMA (1: the step's product through wgmma;
// sm_90a; default 0).
#include <cuda_runtime.h>

#include "backward.cuh"
#include "launch_bwd.h"
#include "launch_common.h"

#if !defined(FLASHSEQ_CELL) || !defined(FLASHSEQ_ELEM) || !defined(FLASHSEQ_BB) ||         \
    !defined(FLASHSEQ_BH) || !defined(FLASHSEQ_WM) || !defined(FLASHSEQ_WK) ||             \
    !defined(FLASHSEQ_DHP) || !defined(FLASHSEQ_CLUSTER)
#error "fused_rnn_bwd.cu needs FLASHSEQ_CELL, _ELEM, _BB, _BH, _WM, _WK, _DHP and _CLUSTER"
#endif
#if !defined(FLASHSEQ_GMMA)
#define FLASHSEQ_GMMA 0
#endif
#if FLASHSEQ_GMMA && defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "FLASHSEQ_GMMA=1 needs sm_90a (wgmma)"
#endif

namespace flashseq {
namespace fused {

using BwdCell = cells::FLASHSEQ_CELL;
using BwdElem = FLASHSEQ_ELEM;
using BTraits = BwdTraits<BwdCell, FLASHSEQ_BB, FLASHSEQ_BH, FLASHSEQ_WM, FLASHSEQ_WK, FLASHSEQ_DHP,
                          FLASHSEQ_CLUSTER != 0, FLASHSEQ_GMMA != 0, sizeof(BwdElem::T)>;

FwdLaunch bwd_launch_shape(int batch, int heads) {
  constexpr Tiling kT = BTraits::kTiling.f;
  return {heads * kT.P, (batch + kT.BB - 1) / kT.BB, kT.threads(), BTraits::kSmemBytes, kT.P, kT.BB,
          kT.DHP, BTraits::kClusterExchange ? 1 : 0};
}

// As the forward: a cluster launch on sm_90a, a cooperative launch when a head's blocks meet
// through global memory (they must all be resident), a plain launch otherwise.
cudaError_t launch_fused_rnn_bwd(const BwdParams& params, cudaStream_t stream) {
  const FwdLaunch shape = bwd_launch_shape(params.batch, params.heads);
  return launch_persistent(fused_rnn_bwd_kernel<BwdCell, BwdElem, BTraits>,
                           dim3(shape.grid_x, shape.grid_y), dim3(shape.threads), shape.smem_bytes,
                           BTraits::kClusterExchange ? shape.blocks_per_head : 0,
                           shape.blocks_per_head > 1, stream, params);
}

}  // namespace fused
}  // namespace flashseq
