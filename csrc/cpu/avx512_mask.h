// lanes_below(n): the AVX-512 mask of lanes 0 .. n-1 (n clamped to 0..16), for the masked loads
// and stores of a row's last, partial vector. Include after the file's AVX-512 target pragma and
// <immintrin.h>, as lstm_math_avx512.h: internal linkage, so each AVX-512 file has its own copy
// and none can be picked by the linker for code that runs on other CPUs.
#pragma once

#include <cstdint>

namespace flashseq {
namespace cpu {
namespace {

inline __mmask16 lanes_below(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF)
                 : (n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1u));
}

}  // namespace
}  // namespace cpu
}  // namespace flashseq
