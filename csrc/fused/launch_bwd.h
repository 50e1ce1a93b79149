// Host interface of one compiled backward instantiation (csrc/fused/fused_rnn_bwd.cu), for the
// binding (csrc/bindings/fused_rnn_cuda_bwd.cpp): no CUDA kernel code, so a C++ compiler reads it.
#pragma once

#include <cuda_runtime.h>

#include "launch.h"
#include "params_bwd.h"

namespace flashseq {
namespace fused {

// Same blocks as the forward of the same plan (FwdLaunch); smem_bytes is the backward's.
FwdLaunch bwd_launch_shape(int batch, int heads);

// Launches the backward on `stream` (the partial exchange buffer and the zeroed barrier
// counters must be provided when blocks_per_head > 1 and cluster == 0).
cudaError_t launch_fused_rnn_bwd(const BwdParams& params, cudaStream_t stream);

}  // namespace fused
}  // namespace flashseq
