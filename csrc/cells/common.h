// Shared by every cell header: the host/device qualifier and the scalar math the cells use.
//
// Plain C++17 with no torch headers, so the same code compiles into the CPU extension (g++)
// and into the CUDA kernels (nvcc). Every function acts on scalars held in registers.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define FLASHSEQ_HOST_DEVICE __host__ __device__
#else
#define FLASHSEQ_HOST_DEVICE
#endif

namespace flashseq {
namespace cells {

// Explicit float/double overloads: under nvcc an unqualified exp(float) could promote to the
// double routine, which is slow on the GPU. Half types convert to float before calling these.
FLASHSEQ_HOST_DEVICE inline float exp_of(float x) { return expf(x); }
FLASHSEQ_HOST_DEVICE inline double exp_of(double x) { return exp(x); }
FLASHSEQ_HOST_DEVICE inline float tanh_of(float x) { return tanhf(x); }
FLASHSEQ_HOST_DEVICE inline double tanh_of(double x) { return tanh(x); }
FLASHSEQ_HOST_DEVICE inline float log1p_of(float x) { return log1pf(x); }
FLASHSEQ_HOST_DEVICE inline double log1p_of(double x) { return log1p(x); }

template <typename T>
FLASHSEQ_HOST_DEVICE inline T sigmoid(T x) {
  // exp(-x) overflows to inf for very negative x, giving exactly 0, the correct limit.
  return T(1) / (T(1) + exp_of(-x));
}

// log(sigmoid(x)) = -log(1 + exp(-x)), written so exp never overflows.
template <typename T>
FLASHSEQ_HOST_DEVICE inline T log_sigmoid(T x) {
  return x < T(0) ? x - log1p_of(exp_of(x)) : -log1p_of(exp_of(-x));
}

}  // namespace cells
}  // namespace flashseq
