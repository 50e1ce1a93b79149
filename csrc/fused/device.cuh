// Device primitives of the persistent kernels: element types, tensor-core mma, the tagged
// weight load, and the step barriers (global-memory flag barrier, thread-block cluster).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace flashseq {
namespace fused {

// Element types: T in memory, fp32 accumulation and states. kMmaK: K of the mma.sync shape
// (layout.h MmaShape). operand(): a value of h as the product's B operand (shared memory, the
// exchange); weight_operand(): one 32-bit A register as loaded from the weights.

// bf16 / fp16: mma.sync m16n8k16, operands used as stored.
struct Bf16 {
  using T = __nv_bfloat16;
  static constexpr int kMmaK = 16;
  static __device__ __forceinline__ float to_float(T x) { return __bfloat162float(x); }
  static __device__ __forceinline__ T from_float(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ T operand(T x) { return x; }
  static __device__ __forceinline__ uint32_t weight_operand(uint32_t w) { return w; }
  // D += A * B, m16n8k16, A row-major (weights), B column-major (h^T), fp32 C/D
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

struct Fp16 {
  using T = __half;
  static constexpr int kMmaK = 16;
  static __device__ __forceinline__ float to_float(T x) { return __half2float(x); }
  static __device__ __forceinline__ T from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ T operand(T x) { return x; }
  static __device__ __forceinline__ uint32_t weight_operand(uint32_t w) { return w; }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// fp32 inputs, outputs and states; the product on tf32 tensor cores (mma.sync m16n8k8, or on
// sm_90a wgmma m64nNk8 .tf32 with the same per-warp A fragment), fp32 accumulation. Operands
// are rounded to tf32 (nearest, ties away) once: the weights when loaded, h when stored for the
// next product (both paths); the tensor core would otherwise truncate the low mantissa bits.
struct Fp32 {
  using T = float;
  static constexpr int kMmaK = 8;
  static __device__ __forceinline__ float to_float(T x) { return x; }
  static __device__ __forceinline__ T from_float(float x) { return x; }
  static __device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
  }
  static __device__ __forceinline__ T operand(T x) { return __uint_as_float(to_tf32(x)); }
  static __device__ __forceinline__ uint32_t weight_operand(uint32_t w) {
    return to_tf32(__uint_as_float(w));
  }
  // D += A * B, m16n8k8 tf32: A 16x8 (4 registers, one element each), B 8x8 (2), fp32 C/D
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Thread and block indices as fresh values: volatile reads the compiler cannot hoist.
__device__ __forceinline__ int fresh_tid() {
  int v;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(v));
  return v;
}
__device__ __forceinline__ int fresh_ctaid_x() {
  int v;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(v));
  return v;
}
__device__ __forceinline__ int fresh_ctaid_y() {
  int v;
  asm volatile("mov.u32 %0, %%ctaid.y;" : "=r"(v));
  return v;
}

// The recurrent weights (two 16-bit or one fp32 value per load) are the only loads with
// L1::no_allocate (SASS: LDG.E...NA.CONSTANT):
// tests/kernels/test_cuda_compile.py finds them by that tag and proves none sits in the step
// loop. Every other load of the kernels must not use this qualifier.
__device__ __forceinline__ uint32_t load_weight_pair(const void* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.b32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

// Streaming read of a value used once (wx): evict-first.
template <class E>
__device__ __forceinline__ float load_stream(const typename E::T* p) {
  return E::to_float(__ldcs(p));
}

// h of other blocks, written before the barrier: bypass the (incoherent) L1.
// 16 bytes (8 h values) of another block's h, 16-byte aligned.
__device__ __forceinline__ uint4 load_exchanged_16(const void* p) {
  uint4 v;
  asm volatile("ld.relaxed.gpu.global.v4.b32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// All blocks of a barrier group have called this for `generation` steps: the counter started at
// zero and each block adds 1 per step, so generation * members means everyone arrived. The
// block's h stores are ordered before the release add by __syncthreads (release is cumulative);
// readers see them after the acquire and a second __syncthreads.
__device__ __forceinline__ void group_barrier(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
    while (load_acquire(counter) < target) {
    }
  }
  __syncthreads();
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}

// Address of `local` (a shared-memory address of this block) in block `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_map(const void* local, unsigned rank) {
  uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(local)), out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"(addr), "r"(rank));
  return out;
}

// 16 bytes from another block's shared memory (address from cluster_map).
__device__ __forceinline__ uint4 cluster_load_16(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared::cluster.v4.b32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr) : "memory");
  return v;
}

// Every block of the cluster has arrived; their shared-memory stores before it are visible.
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;"
               ::: "memory");
}
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// ---- wgmma (sm_90a only): warpgroup MMA, D[64 x N] (+)= A[64 x K] (registers) * B[K x N]
// (shared memory, descriptor from layout.h's Tiling::g_desc_b), fp32 D. Asynchronous: issue
// after wgmma_fence(), then wgmma_commit() and wgmma_wait() before D is read.

// Orders this thread's earlier register writes (A, D) before the wgmma that reads them.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
// Waits until no committed group is pending: the accumulators may be read.
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
}
// The compiler must neither read an accumulator before wgmma_wait() nor move its writes past
// wgmma_fence(): an empty asm that "modifies" it pins it between the two.
__device__ __forceinline__ void pin_register(float& v) { asm volatile("" : "+f"(v)::"memory"); }
// The wgmma accumulators of M 64-row tiles (C floats per thread each) zeroed and pinned, before
// the wgmma_fence() of a step's product (forward and backward alike).
template <int M, int C>
__device__ __forceinline__ void zero_pinned_accumulators(float (&acc)[M][C]) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int c = 0; c < C; ++c) {
      acc[m][c] = 0.f;
      pin_register(acc[m][c]);
    }
}

// Generic-proxy stores to shared memory (h) made visible to the async proxy (wgmma's operand
// reads); each writing thread runs it after its stores and before the barrier.
__device__ __forceinline__ void fence_smem_for_wgmma() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// D += A * B, scale-d = 1 (the accumulators start at zero), no negation; 16-bit: B not
// transposed (imm-trans-b 0). tf32 (K = 8) takes no transpose operand: the ISA allows it only
// K-major, as B = h^T / d(rh)^T is here. A: four 32-bit registers per thread in both shapes
// (two 16-bit values each, or one tf32).
#define FLASHSEQ_WGMMA_N8(NAME, SHAPE_TYPES, TAIL)                                              \
  __device__ __forceinline__ void NAME(float (&d)[4], const uint32_t (&a)[4], uint64_t desc) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned." SHAPE_TYPES " {%0,%1,%2,%3}, "                 \
                 "{%4,%5,%6,%7}, %8, p, 1, 1" TAIL ";\n}"                                        \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));                      \
  }
#define FLASHSEQ_WGMMA_N16(NAME, SHAPE_TYPES, TAIL)                                             \
  __device__ __forceinline__ void NAME(float (&d)[8], const uint32_t (&a)[4], uint64_t desc) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned." SHAPE_TYPES " {%0,%1,%2,%3,%4,%5,%6,%7}, "     \
                 "{%8,%9,%10,%11}, %12, p, 1, 1" TAIL ";\n}"                                     \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),      \
                   "+f"(d[6]), "+f"(d[7])                                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));                      \
  }
FLASHSEQ_WGMMA_N8(wgmma_bf16, "m64n8k16.f32.bf16.bf16", ", 0")
FLASHSEQ_WGMMA_N16(wgmma_bf16, "m64n16k16.f32.bf16.bf16", ", 0")
FLASHSEQ_WGMMA_N8(wgmma_f16, "m64n8k16.f32.f16.f16", ", 0")
FLASHSEQ_WGMMA_N16(wgmma_f16, "m64n16k16.f32.f16.f16", ", 0")
FLASHSEQ_WGMMA_N8(wgmma_tf32, "m64n8k8.f32.tf32.tf32", "")
FLASHSEQ_WGMMA_N16(wgmma_tf32, "m64n16k8.f32.tf32.tf32", "")
#undef FLASHSEQ_WGMMA_N8
#undef FLASHSEQ_WGMMA_N16

template <class E>
struct Wgmma;
template <>
struct Wgmma<Bf16> {
  template <int N>
  static __device__ __forceinline__ void run(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) {
    wgmma_bf16(d, a, desc);
  }
};
template <>
struct Wgmma<Fp16> {
  template <int N>
  static __device__ __forceinline__ void run(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) {
    wgmma_f16(d, a, desc);
  }
};
// tf32: A already rounded (Fp32::weight_operand), B = h stored rounded (Fp32::operand)
template <>
struct Wgmma<Fp32> {
  template <int N>
  static __device__ __forceinline__ void run(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) {
    wgmma_tf32(d, a, desc);
  }
};
#endif

}  // namespace fused
}  // namespace flashseq
