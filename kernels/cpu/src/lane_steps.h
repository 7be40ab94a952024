// The one-row kernels' lane form (SparseWeights::lane_k, sliced ELLPACK): the loop over a slice's
// steps, shared by the AVX2 kernel (kernel_avx2_gemv.cc) and the AVX-512 VNNI one
// (kernel_avx512vnni_gemv.cc). Included only by files compiled with at least -mavx2; everything here
// has internal linkage, so each includer gets its own copy built with its own instructions. Dot
// gives a step's products: Dot::accumulate(acc, a, w) adds to lane j of acc the 4-term product of
// lane j's 4 activation bytes in a (uint8) and 4 weights in w (int8).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "sparse_gemm.h"

namespace graphc {
namespace {

inline int32_t group(const uint8_t* row, uint32_t g) { return load4(reinterpret_cast<const int8_t*>(row) + int64_t(g) * 4); }

// a lane step's 8 groups of A: its indices come in 8-byte loads (one of one-byte indices, two of
// two-byte ones) and are taken apart in registers, 6 or 7 loads fewer per step than reading them
// one by one: the loads were the step's limit
template <typename Index>
inline __m128i gather4(const uint8_t* row, uint64_t g) {
  constexpr int kBits = 8 * sizeof(Index);
  const auto at = [row, g](int j) { return group(row, uint32_t(g >> (kBits * j)) & ((1u << kBits) - 1)); };
  __m128i v = _mm_cvtsi32_si128(at(0));
  v = _mm_insert_epi32(v, at(1), 1);
  v = _mm_insert_epi32(v, at(2), 2);
  return _mm_insert_epi32(v, at(3), 3);
}

inline __m256i gather_lane(const uint8_t* row, const uint16_t* groups) {
  uint64_t lo, hi;
  std::memcpy(&lo, groups, 8);
  std::memcpy(&hi, groups + 4, 8);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(gather4<uint16_t>(row, lo)), gather4<uint16_t>(row, hi), 1);
}

inline __m256i gather_lane(const uint8_t* row, const uint8_t* groups) {
  uint64_t g;
  std::memcpy(&g, groups, 8);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(gather4<uint8_t>(row, g)), gather4<uint8_t>(row, g >> 32), 1);
}

template <typename Dot, typename Index>
void lane_slices(const uint8_t* row_bytes, const SparseWeights& w, const Index* lane_k, const int32_t* colsum,
                 uint8_t zp, int64_t s0, int64_t s1, int32_t* out, const float* column_scale, const float* bias) {
  for (int64_t s = s0; s < s1; ++s) {
    __m256i acc = _mm256_setzero_si256();
    for (int32_t t = w.lane_ptr[s]; t < w.lane_ptr[s + 1]; ++t) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.lane_values + int64_t(t) * 32));
      acc = Dot::accumulate(acc, gather_lane(row_bytes, lane_k + int64_t(t) * 8), v);
    }
    alignas(32) int32_t sums[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(sums), acc);
    for (int64_t j = 0; j < 8; ++j) {
      const int32_t n = w.lane_column[s * 8 + j];
      if (n < 0) continue;
      const int32_t product = int32_t(uint32_t(sums[j]) - uint32_t(zp) * uint32_t(colsum[n]));
      if (column_scale == nullptr) {
        out[n] = product;
      } else {  // the epilogue's operations (sparse_gemm.cc, to_float)
        float value = float(product) * column_scale[n];
        if (bias != nullptr) value += bias[n];
        std::memcpy(out + n, &value, 4);
      }
    }
  }
}

}  // namespace
}  // namespace graphc
