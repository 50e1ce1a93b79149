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

// The few math operations the cells use, per value type. float and double are here; the CPU
// loop adds a specialisation for SIMD vectors (csrc/cpu/vec_lanes.h), a CUDA kernel may add one
// for its half types. Explicit float routines: under nvcc an unqualified exp(float) could promote
// to the slow double routine.
template <typename T>
struct MathOps;

template <>
struct MathOps<float> {
  FLASHSEQ_HOST_DEVICE static float exp(float x) { return expf(x); }
  FLASHSEQ_HOST_DEVICE static float tanh(float x) { return tanhf(x); }
  FLASHSEQ_HOST_DEVICE static float log1p(float x) { return log1pf(x); }
  FLASHSEQ_HOST_DEVICE static float abs(float x) { return fabsf(x); }
  FLASHSEQ_HOST_DEVICE static float min(float a, float b) { return a < b ? a : b; }
  FLASHSEQ_HOST_DEVICE static float select_ge(float a, float b, float x, float y) {
    return a >= b ? x : y;
  }
};

template <>
struct MathOps<double> {
  FLASHSEQ_HOST_DEVICE static double exp(double x) { return ::exp(x); }
  FLASHSEQ_HOST_DEVICE static double tanh(double x) { return ::tanh(x); }
  FLASHSEQ_HOST_DEVICE static double log1p(double x) { return ::log1p(x); }
  FLASHSEQ_HOST_DEVICE static double abs(double x) { return fabs(x); }
  FLASHSEQ_HOST_DEVICE static double min(double a, double b) { return a < b ? a : b; }
  FLASHSEQ_HOST_DEVICE static double select_ge(double a, double b, double x, double y) {
    return a >= b ? x : y;
  }
};

template <typename T>
FLASHSEQ_HOST_DEVICE inline T exp_of(T x) { return MathOps<T>::exp(x); }
template <typename T>
FLASHSEQ_HOST_DEVICE inline T tanh_of(T x) { return MathOps<T>::tanh(x); }
template <typename T>
FLASHSEQ_HOST_DEVICE inline T log1p_of(T x) { return MathOps<T>::log1p(x); }
template <typename T>
FLASHSEQ_HOST_DEVICE inline T abs_of(T x) { return MathOps<T>::abs(x); }
template <typename T>
FLASHSEQ_HOST_DEVICE inline T min_of(T a, T b) { return MathOps<T>::min(a, b); }
// a >= b ? x : y, lane by lane for vector types (the cells' only branch: sLSTM's max).
template <typename T>
FLASHSEQ_HOST_DEVICE inline T select_ge(T a, T b, T x, T y) { return MathOps<T>::select_ge(a, b, x, y); }

template <typename T>
FLASHSEQ_HOST_DEVICE inline T sigmoid(T x) {
  // exp(-x) overflows to inf for very negative x, giving exactly 0, the correct limit.
  return T(1) / (T(1) + exp_of(-x));
}

// log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)): exp never overflows, and no branch.
template <typename T>
FLASHSEQ_HOST_DEVICE inline T log_sigmoid(T x) {
  return min_of(x, T(0)) - log1p_of(exp_of(-abs_of(x)));
}

}  // namespace cells
}  // namespace flashseq
