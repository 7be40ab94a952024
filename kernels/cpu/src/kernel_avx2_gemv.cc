// AVX2 kernel for few rows (compiled with -mavx2): one row of A at a time. The packed kernels
// (kernel_avx2.cc) run 8 rows per panel, so below a few rows most of their work is padding; here
// every multiply serves the real row.
//
// An item's columns [n0, n1) own one contiguous run of blocks, col_ptr[n0] .. col_ptr[n1]. The
// run is walked 8 blocks at a time, across column boundaries: the 8 groups' activations (A's 4
// bytes at 4 * block_k[b]) are 8 scalar loads inserted into one vector (measured faster than
// vpgatherdd on AMD Zen 3), one vpmaddubsw + vpmaddwd (or, where SparseWeights::pairs_fit_int16
// is false, the 16-bit widened form) gives each block's 4-term product in its own int32 lane, and
// a running prefix sum of those products is stored. A column's product is then the difference of
// two prefix sums. The prefix sums wrap modulo 2^32; each difference is exact because a column's
// true sum fits int32 (sparse_gemm.h). No tail masks, no per-column reductions.
//
// Constant weights run the lane form instead (SparseWeights::lane_k, sliced ELLPACK): the 8 lanes
// of a step belong to 8 columns, so a step is the gather, one weight load, vpmaddubsw + vpmaddwd
// and one vpaddd into the slice's accumulator: no prefix sums, and its group indices are uint16,
// or uint8 where K is at most 1024 (a kept group reads 5 or 6 bytes instead of 8). At one row the
// weights stream from memory once per call, and that sets the time: in perf, the samples of the
// lane loop sit on the instructions waiting for the weight load. Against the prefix-sum form on
// the same constant weights (1x4 at 80%, M = 1, benchmarks/sparse_gemm.py --layers 12, AMD EPYC
// Zen 3): about 1.15x per layer; vpgatherdd in place of the 8 inserts was slower again.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "lane_steps.h"
#include "sparse_gemm.h"

namespace graphc {

namespace {

template <typename Index>
inline __m256i gather8(const uint8_t* row, const Index* groups) {
  __m128i lo = _mm_cvtsi32_si128(group(row, groups[0]));
  lo = _mm_insert_epi32(lo, group(row, groups[1]), 1);
  lo = _mm_insert_epi32(lo, group(row, groups[2]), 2);
  lo = _mm_insert_epi32(lo, group(row, groups[3]), 3);
  __m128i hi = _mm_cvtsi32_si128(group(row, groups[4]));
  hi = _mm_insert_epi32(hi, group(row, groups[5]), 1);
  hi = _mm_insert_epi32(hi, group(row, groups[6]), 2);
  hi = _mm_insert_epi32(hi, group(row, groups[7]), 3);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

// lane j: block j's sum of 4 products
template <bool kMaddubs>
inline __m256i products(__m256i a, __m256i w) {
  if (kMaddubs) return _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), _mm256_set1_epi16(1));
  // hadd of the two halves' pair sums: lanes in block order 0 1 4 5 | 2 3 6 7, fixed by the permute
  const __m256i a_lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(a));
  const __m256i a_hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(a, 1));
  const __m256i w_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w));
  const __m256i w_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1));
  const __m256i sums = _mm256_hadd_epi32(_mm256_madd_epi16(a_lo, w_lo), _mm256_madd_epi16(a_hi, w_hi));
  return _mm256_permutevar8x32_epi32(sums, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
}

// inclusive prefix sum of 8 lanes
inline __m256i prefix8(__m256i x) {
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 4));
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 8));
  const __m256i low_total = _mm256_shuffle_epi32(x, 0xff);                           // lane 3 | lane 7
  return _mm256_add_epi32(x, _mm256_permute2x128_si256(low_total, low_total, 0x08));  // 0 | lane 3
}

template <bool kMaddubs, typename Index>
void columns(const uint8_t* row_bytes, const SparseWeights& w, const Index* block_k, const int32_t* colsum, uint8_t zp,
             int64_t n0, int64_t n1, int32_t* out) {
  const int32_t first = w.col_ptr[n0], count = w.col_ptr[n1] - first;
  const Index* groups = block_k + first;
  const int8_t* values = w.values + int64_t(first) * 4;
  // prefix[i]: the sum of the run's first i blocks; one buffer per thread that only grows (a fresh,
  // zero-filled vector per item was 6% of an M=1 run's samples in perf)
  thread_local std::vector<int32_t> prefix;
  if (prefix.size() < size_t(count) + 1) prefix.resize(size_t(count) + 1);
  prefix[0] = 0;
  __m256i carry = _mm256_setzero_si256();
  int32_t b = 0;
  for (; b + 8 <= count; b += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + int64_t(b) * 4));
    // the carry chain is one vpaddd per step: the total of this step comes from its own prefix, not
    // from the stored sums (through vpermd, that chain was about 10 cycles per 8 blocks on Zen 3)
    const __m256i local = prefix8(products<kMaddubs>(gather8(row_bytes, groups + b), v));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix.data() + b + 1), _mm256_add_epi32(local, carry));
    carry = _mm256_add_epi32(carry, _mm256_permutevar8x32_epi32(local, _mm256_set1_epi32(7)));
  }
  uint32_t total = uint32_t(prefix[size_t(b)]);
  for (; b < count; ++b) {
    const uint8_t* a = row_bytes + int64_t(groups[b]) * 4;
    const int8_t* v = values + int64_t(b) * 4;
    total += uint32_t(a[0] * v[0] + a[1] * v[1] + a[2] * v[2] + a[3] * v[3]);
    prefix[size_t(b) + 1] = int32_t(total);
  }
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t sum = uint32_t(prefix[size_t(w.col_ptr[n + 1] - first)]) - uint32_t(prefix[size_t(w.col_ptr[n] - first)]);
    out[n] = int32_t(sum - uint32_t(zp) * uint32_t(colsum[n]));
  }
}

template <bool kMaddubs>
struct MaddDot {
  static __m256i accumulate(__m256i acc, __m256i a, __m256i w) { return _mm256_add_epi32(acc, products<kMaddubs>(a, w)); }
};

template <bool kMaddubs>
void lanes_of(const uint8_t* row, const SparseWeights& w, const int32_t* colsum, uint8_t zp, int64_t s0, int64_t s1,
              int32_t* out, const float* column_scale, const float* bias) {
  if (w.lane_k8 != nullptr)
    lane_slices<MaddDot<kMaddubs>>(row, w, w.lane_k8, colsum, zp, s0, s1, out, column_scale, bias);
  else
    lane_slices<MaddDot<kMaddubs>>(row, w, w.lane_k, colsum, zp, s0, s1, out, column_scale, bias);
}

}  // namespace

void kernel_avx2_gemv(const uint8_t* row, const SparseWeights& w, const int32_t* colsum, uint8_t zp, int64_t n0,
                      int64_t n1, int32_t* out) {
  if (w.pairs_fit_int16)
    columns<true>(row, w, w.block_k, colsum, zp, n0, n1, out);
  else
    columns<false>(row, w, w.block_k, colsum, zp, n0, n1, out);
}

void kernel_avx2_gemv_lanes(const uint8_t* row, const SparseWeights& w, const int32_t* colsum, uint8_t zp,
                            int64_t s0, int64_t s1, int32_t* out, const float* column_scale, const float* bias) {
  if (w.pairs_fit_int16)
    lanes_of<true>(row, w, colsum, zp, s0, s1, out, column_scale, bias);
  else
    lanes_of<false>(row, w, colsum, zp, s0, s1, out, column_scale, bias);
}

}  // namespace graphc
