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
#include "launch_common.h"

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
  const int per_head = s.blocks_per_head;
  return launch_persistent(barrier_floor_kernel, dim3(s.grid_x, s.grid_y), dim3(s.threads),
                           s.smem_bytes, FLASHSEQ_CLUSTER && per_head > 1 ? per_head : 0,
                           per_head > 1, stream, s.counters, s.steps, per_head, s.heads);
}

}  // namespace fused
}  // namespace flashseq
