// The barrier-cost floor of the persistent forward (fused_rnn_fwd.cu): the same grid, block
// size, shared memory and launch (cluster / cooperative / plain), the same step loop with the
// same synchronisation per step, and no work. Its time per step is the least a step of the
// forward can cost on that plan; the benchmark reports the forward's per-step time beside it.
//   -DFLASHSEQ_CLUSTER=0|1  (1: the head's blocks form a cluster and meet at the cluster barrier,
//                            sm_90a; 0: a flag barrier in global memory when a head has several
//                            blocks, only the block barrier when it has one)
// Per step, as the forward: a block barrier after the product (partial sums), then the h
// exchange's barrier: cluster barrier + block barrier, the flag barrier among the head's blocks
// (device.cuh group_barrier), or a block barrier (one block per head).
#include <cuda_runtime.h>

#include "device.cuh"
#include "launch_floor.h"

#if !defined(FLASHSEQ_CLUSTER)
#error "barrier_floor.cu needs FLASHSEQ_CLUSTER"
#endif
#if FLASHSEQ_CLUSTER && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#error "FLASHSEQ_CLUSTER=1 needs sm_90 or newer (thread-block clusters)"
#endif

namespace flashseq {
namespace fused {

__global__ void __launch_bounds__(1024) barrier_floor_kernel(unsigned* counters, int steps,
                                                             int blocks_per_head, int heads) {
#pragma unroll 1
  for (int t = 0; t < steps; ++t) {
    __syncthreads();  // the forward's barrier between the product and the pointwise step
    if (blocks_per_head == 1) {
      __syncthreads();
    } else {
#if FLASHSEQ_CLUSTER
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      cluster_barrier();
      __syncthreads();
#endif
#else
      group_barrier(counters + blockIdx.y * heads + blockIdx.x / blocks_per_head,
                    static_cast<unsigned>(blocks_per_head) * static_cast<unsigned>(t + 1));
#endif
    }
  }
}

cudaError_t launch_barrier_floor(const FloorLaunch& s, cudaStream_t stream) {
  auto kernel = barrier_floor_kernel;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         s.smem_bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(s.grid_x, s.grid_y), block(s.threads);
  unsigned* counters = s.counters;
  int steps = s.steps, per_head = s.blocks_per_head, heads = s.heads;
  if (FLASHSEQ_CLUSTER && per_head > 1) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return err;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = s.smem_bytes;
    config.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = per_head;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernel, counters, steps, per_head, heads);
  }
  if (per_head > 1) {  // the flag barrier needs the head's blocks resident, as the forward
    void* args[] = {&counters, &steps, &per_head, &heads};
    return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, args,
                                       s.smem_bytes, stream);
  }
  kernel<<<grid, block, s.smem_bytes, stream>>>(counters, steps, per_head, heads);
  return cudaGetLastError();
}

}  // namespace fused
}  // namespace flashseq
