// Python binding of the barrier-floor kernel (csrc/fused/barrier_floor.cu, built by
// flashseq/kernels/fused_rnn/cuda_floor.py): launches the empty persistent loop on the current
// stream with a forward plan's launch shape.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "../fused/launch_floor.h"

namespace {

// counters: int32 zeros on the GPU, at least grid_y * heads of them (flag barrier)
void run(const at::Tensor& counters, int64_t steps, int64_t grid_x, int64_t grid_y,
         int64_t threads, int64_t smem_bytes, int64_t blocks_per_head, int64_t heads) {
  TORCH_CHECK(counters.is_cuda() && counters.scalar_type() == at::kInt && counters.is_contiguous(),
              "counters must be a contiguous int32 CUDA tensor; got ", counters.scalar_type(), " on ",
              counters.device());
  TORCH_CHECK(counters.numel() >= grid_y * heads, "counters needs grid_y * heads = ", grid_y * heads,
              " elements; got ", counters.numel());
  TORCH_CHECK(steps >= 0 && grid_x > 0 && grid_y > 0 && threads > 0 && blocks_per_head > 0 &&
                  heads > 0 && grid_x == heads * blocks_per_head,
              "barrier floor: inconsistent launch shape");
  const c10::cuda::CUDAGuard guard(counters.device());
  flashseq::fused::FloorLaunch s{static_cast<int>(grid_x), static_cast<int>(grid_y),
                                 static_cast<int>(threads), static_cast<int>(smem_bytes),
                                 static_cast<int>(blocks_per_head), static_cast<int>(heads),
                                 static_cast<int>(steps),
                                 reinterpret_cast<unsigned*>(counters.data_ptr<int>())};
  const cudaError_t err = flashseq::fused::launch_barrier_floor(s, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "barrier floor launch failed: ", cudaGetErrorString(err));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run, "the empty persistent loop with the forward's barriers (barrier_floor.cu)");
}
