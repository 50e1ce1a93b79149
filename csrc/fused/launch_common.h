// The host launch the persistent kernels share (the forward, fused_rnn_fwd.cu; the backward,
// fused_rnn_bwd.cu; the barrier floor, barrier_floor.cu): how a head's blocks meet decides it.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

namespace flashseq {
namespace fused {

// Launches ``kernel`` on ``grid`` x ``block`` with ``smem_bytes`` of dynamic shared memory:
//   cluster_blocks > 0: as thread-block clusters of that many blocks along x (sm_90; the head's
//                       blocks exchange through distributed shared memory and a cluster barrier);
//   cooperative:        a cooperative launch (the head's blocks meet at a flag barrier in global
//                       memory, so they must all be resident: it fails with
//                       cudaErrorCooperativeLaunchTooLarge rather than hang);
//   otherwise a plain launch.
// ``args`` are the kernel's own parameter types, so the cooperative launch's argument array
// points at exactly what the kernel reads.
template <typename... Params>
cudaError_t launch_persistent(void (*kernel)(Params...), dim3 grid, dim3 block, int smem_bytes,
                              int cluster_blocks, bool cooperative, cudaStream_t stream,
                              std::decay_t<Params>... args) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         smem_bytes);
  if (err != cudaSuccess) return err;
  if (cluster_blocks > 0) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return err;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster_blocks;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernel, args...);
  }
  if (cooperative) {
    void* ptrs[] = {static_cast<void*>(&args)...};
    return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, ptrs,
                                       smem_bytes, stream);
  }
  kernel<<<grid, block, smem_bytes, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace fused
}  // namespace flashseq
