// Host interface of one compiled forward instantiation (csrc/fused/fused_rnn_fwd.cu), for the
// binding (csrc/bindings/fused_rnn_cuda.cpp): no CUDA kernel code, so a C++ compiler reads it.
#pragma once

#include <cuda_runtime.h>

#include "params.h"

namespace flashseq {
namespace fused {

// Grid, block and shared memory of the compiled instantiation for a problem.
struct FwdLaunch {
  int grid_x, grid_y, threads, smem_bytes, blocks_per_head, tile_b;
  int padded_head_dim, cluster;  // DHP; 1 when h is exchanged inside a thread-block cluster
};

FwdLaunch fwd_launch_shape(int batch, int heads);

// Launches the kernel on `stream` (the exchange buffer and the zeroed barrier counters must be
// provided when blocks_per_head > 1 and cluster == 0).
cudaError_t launch_fused_rnn_fwd(const FwdParams& params, cudaStream_t stream);

}  // namespace fused
}  // namespace flashseq
