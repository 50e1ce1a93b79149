// One instantiation of the persistent forward kernel and its launcher, chosen by -D flags so
// each (cell, dtype, tiles, exchange) is its own small compile (the JIT cache key):
//   -DFLASHSEQ_CELL=LstmCell|GruCell|SlstmCell|ElmanCell  -DFLASHSEQ_ELEM=Bf16|Fp16|Fp32
//   -DFLASHSEQ_BB= -DFLASHSEQ_BH= -DFLASHSEQ_WM= -DFLASHSEQ_WK= -DFLASHSEQ_DHP=
//   -DFLASHSEQ_CLUSTER=0|1   (1: h exchanged inside a thread-block cluster; sm_90a only)
//   -DFLASHSEQ_GMMA=0|1      (1: the step's product through wgmma; sm_90a, 16-bit only; default 0)
#include <cuda_runtime.h>

#include "forward.cuh"
#include "launch.h"

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
  auto kernel = fused_rnn_fwd_kernel<Cell, Elem, Traits>;
  const FwdLaunch shape = fwd_launch_shape(params.batch, params.heads);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         shape.smem_bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(shape.grid_x, shape.grid_y), block(shape.threads);
  if (Traits::kClusterExchange) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return err;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shape.smem_bytes;
    config.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = shape.blocks_per_head;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernel, params);
  }
  if (shape.blocks_per_head > 1) {
    FwdParams copy = params;
    void* args[] = {&copy};
    return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, args,
                                       shape.smem_bytes, stream);
  }
  kernel<<<grid, block, shape.smem_bytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace fused
}  // namespace flashseq
