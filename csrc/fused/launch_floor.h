// Host interface of the barrier-floor kernel (csrc/fused/barrier_floor.cu), for its binding
// (csrc/bindings/barrier_floor_cuda.cpp): no CUDA kernel code, so a C++ compiler reads it.
#pragma once

#include <cuda_runtime.h>

namespace flashseq {
namespace fused {

// The forward's launch shape (FwdLaunch of the same plan) and the loop's length. counters:
// grid_y * heads zeroed unsigned ints (the flag barrier; unused with a cluster or one block
// per head).
struct FloorLaunch {
  int grid_x, grid_y, threads, smem_bytes, blocks_per_head, heads, steps;
  unsigned* counters;
};

cudaError_t launch_barrier_floor(const FloorLaunch& shape, cudaStream_t stream);

}  // namespace fused
}  // namespace flashseq
