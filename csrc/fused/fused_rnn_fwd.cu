// One instantiation of the persistent forward kernel and its launcher, chosen by -D flags so
// each (cell, dtype, tiles, exchange) is its own small compile (the JIT cache key):
//   -DFLASHSEQ_CELL=LstmCell|GruCell|SlstmCell|ElmanCell  -DFLASHSEQ_ELEM=Bf16|Fp16|Fp32
//   -DFLASHSEQ_BB= -DFLASHSEQ_BH= -DFLASHSEQ_WM= -DFLASHSEQ_WK= -DFLASHSEQ_DHP=
//   -DFLASHSEQ_CLUSTER=0|1   (1: h exchanged inside a thread-block cluster; sm_90a only)
//   -DFLASHSEQ_GMMA=0|1      (1: the step's product through wgmma; sm_90a; default 0)
#include <cuda_runtime.h>

#include "forward.cuh"
#include "launch.h"
#include "launch_common.h"

#if !defined(FLASHSEQ_CELL) || !defined(FLASHSEQ_ELEM) || !defined(FLASHSEQ_BB) ||         \
    !defined(FLASHSEQ_BH) || !defined(FLASHSEQ_WM) || !defined(FLASHSEQ_WK) ||             \
    !defined(FLASHSEQ_DHP) || !defined(FLASHSEQ_CLUSTER)
#error "fused_rnn_fwd.cu needs FLASHSEQ_CELL, _ELEM, _BB, _BH, _WM, _WK, _DHP and _CLUSTER"
#endif

#if !defined(FLASHSEQ_GMMA)
#define FLASHSEQ_GMMA 0
#endif
#if FLASHSEQ_GMMA && defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "FLASHSEQ_GMMA=1 needs sm_90a (wgmma)"
#endif

namespace flashseq {
namespace fused {

using Cell = cells::FLASHSEQ_CELL;
using Elem = FLASHSEQ_ELEM;
using Traits = FwdTraits<Cell, FLASHSEQ_BB, FLASHSEQ_BH, FLASHSEQ_WM, FLASHSEQ_WK, FLASHSEQ_DHP,
                         FLASHSEQ_CLUSTER != 0, FLASHSEQ_GMMA != 0, sizeof(Elem::T)>;

FwdLaunch fwd_launch_shape(int batch, int heads) {
  constexpr Tiling kT = Traits::kTiling;
  return {heads * kT.P, (batch + kT.BB - 1) / kT.BB, kT.threads(), Traits::kSmemBytes, kT.P, kT.BB,
          kT.DHP, Traits::kClusterExchange ? 1 : 0};
}

// Blocks of a head that exchange h through global memory must all be resident: a cooperative
// launch guarantees it or fails (cudaErrorCooperativeLaunchTooLarge).
cudaError_t launch_fused_rnn_fwd(const FwdParams& params, cudaStream_t stream) {
  const FwdLaunch shape = fwd_launch_shape(params.batch, params.heads);
  return launch_persistent(fused_rnn_fwd_kernel<Cell, Elem, Traits>, dim3(shape.grid_x, shape.grid_y),
                           dim3(shape.threads), shape.smem_bytes,
                           Traits::kClusterExchange ? shape.blocks_per_head : 0,
                           shape.blocks_per_head > 1, stream, params);
}

}  // namespace fused
}  // namespace flashseq
