// Pieces the forward and backward layout simulations (cuda_layout_sim.cpp,
// cuda_layout_sim_bwd.cpp) share: the written-once bookkeeping, the binary input reader and the
// wgmma B-operand address model. Each simulation includes this once, inside no namespace.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

int failures = 0;

void fail(const char* what, long long index, int count) {
  if (failures++ < 10) std::fprintf(stderr, "%s: element %lld written %d times\n", what, index, count);
}

void expect_once(const char* what, const std::vector<int>& counts) {
  for (size_t i = 0; i < counts.size(); ++i)
    if (counts[i] != 1) fail(what, static_cast<long long>(i), counts[i]);
}

template <typename T>
void read(FILE* f, T* dst, size_t n) {
  if (std::fread(dst, sizeof(T), n, f) != n) {
    std::fprintf(stderr, "short input\n");
    std::exit(2);
  }
}

// wgmma's B operand (K x N, K-major; elements of elem_bytes = 2: bf16/fp16, 4: tf32) as the
// tensor core reads it from shared memory (PTX ISA, "Matrix Descriptor Format" and the canonical
// K-major layout without swizzling): the descriptor holds start address >> 4 (bits 0-13), the
// leading dimension byte offset >> 4 (16-29: between core matrices adjacent in K), the stride
// dimension byte offset >> 4 (32-45: between core matrices adjacent in N), base offset (49-51)
// and swizzle mode (62-63). A core matrix is 8 rows (n) of 16 contiguous bytes (16 / elem_bytes
// consecutive k: 8 16-bit or 4 tf32), the rows 16 bytes apart.
// Returns the byte address of element (k, n), or -1 for a descriptor this model does not cover.
long long wgmma_b_address(unsigned long long desc, int k, int n, int elem_bytes) {
  const long long start = static_cast<long long>(desc & 0x3FFF) << 4;
  const long long lbo = static_cast<long long>((desc >> 16) & 0x3FFF) << 4;
  const long long sbo = static_cast<long long>((desc >> 32) & 0x3FFF) << 4;
  if (((desc >> 49) & 7) != 0 || (desc >> 62) != 0) return -1;  // base offset, swizzling
  const int per_row = 16 / elem_bytes;  // k of one core-matrix row
  return start + (n / 8) * sbo + (k / per_row) * lbo + (n % 8) * 16 + (k % per_row) * elem_bytes;
}

}  // namespace
