// AVX2 kernel for few rows over 8-column panels (compiled with -mavx2), for constant weights whose
// zeros come in blocks that span 8 outputs (sparsify's block=8x4, or 16x4, ...). The one-row column
// kernel (kernel_avx2_gemv.cc) reads a 4-byte index per 4 weights and gathers A group by group;
// here one index serves a panel's 8 columns: for each of the panel's 4-groups, A's 4 bytes are
// broadcast, and one vpmaddubsw + vpmaddwd against the 32 weight bytes (8 columns x 4) adds the 8
// columns' partial sums in one vector (the weights must satisfy SparseWeights::pairs_fit_int16:
// no int16 saturation). Up to 3 rows share each weight vector loaded. At M = 1 the weights stream
// from memory once per call, so the bytes read per kept weight decide: 36 / 32 here (the 4-byte
// index per 32), 8 / 4 on the column kernel, 1 in onnxruntime's dense GEMM.
#include <immintrin.h>

#include <algorithm>

#include "sparse_gemm.h"

namespace graphc {

namespace {

inline __m256i broadcast4(const uint8_t* x) { return _mm256_set1_epi32(load4(reinterpret_cast<const int8_t*>(x))); }

template <int R>
void rows_of_panel(const uint8_t* a, int64_t row_bytes, const int8_t* values, const int32_t* groups, int32_t count,
                   __m256i out[]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0;
  const uint8_t* a1 = a + row_bytes;
  const uint8_t* a2 = a1 + row_bytes;
#pragma GCC unroll 4
  for (int32_t b = 0; b < count; ++b) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + int64_t(b) * 32));
    const int64_t offset = int64_t(groups[b]) * 4;
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_maddubs_epi16(broadcast4(a + offset), wv), ones));
    if (R > 1) acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_maddubs_epi16(broadcast4(a1 + offset), wv), ones));
    if (R > 2) acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(_mm256_maddubs_epi16(broadcast4(a2 + offset), wv), ones));
  }
  out[0] = acc0;
  if (R > 1) out[1] = acc1;
  if (R > 2) out[2] = acc2;
}

}  // namespace

void kernel_avx2_panels(const uint8_t* a_rows, int64_t row_bytes, int64_t m, const SparseWeights& w,
                        const int32_t* colsum, uint8_t zp, int64_t p, int32_t* c, int64_t ldc, const float* column_scale,
                        const float* bias) {
  const int64_t n0 = p * 8, nc = std::min<int64_t>(8, w.n - n0);
  const int32_t first = w.panel_ptr[p], count = w.panel_ptr[p + 1] - first;
  const int8_t* values = w.panel_values + int64_t(first) * 32;
  const int32_t* groups = w.panel_k + first;
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(nc)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i offset = _mm256_mullo_epi32(_mm256_set1_epi32(zp), _mm256_maskload_epi32(colsum + n0, mask));
  for (int64_t r0 = 0; r0 < m; r0 += 3) {  // 3 rows at a time
    const int64_t rows = std::min<int64_t>(3, m - r0);
    const uint8_t* a = a_rows + r0 * row_bytes;
    __m256i acc[3];
    switch (rows) {
      case 1: rows_of_panel<1>(a, row_bytes, values, groups, count, acc); break;
      case 2: rows_of_panel<2>(a, row_bytes, values, groups, count, acc); break;
      default: rows_of_panel<3>(a, row_bytes, values, groups, count, acc); break;
    }
    for (int64_t r = 0; r < rows; ++r) {
      __m256i bits = _mm256_sub_epi32(acc[r], offset);
      if (column_scale != nullptr) {  // no FMA: -ffp-contract=off
        __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(bits), _mm256_maskload_ps(column_scale + n0, mask));
        if (bias != nullptr) value = _mm256_add_ps(value, _mm256_maskload_ps(bias + n0, mask));
        bits = _mm256_castps_si256(value);
      }
      int32_t* dst = c + (r0 + r) * ldc + n0;
      if (nc == 8)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bits);
      else
        _mm256_maskstore_epi32(dst, mask, bits);  // microcoded on AMD Zen: only on the ragged edge
    }
  }
}

}  // namespace graphc
