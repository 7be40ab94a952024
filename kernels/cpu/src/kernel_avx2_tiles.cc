// AVX2 kernel over 16 x 64 weight tiles (compiled with -mavx2), for constant weights of which most
// tiles are all zero (a block pattern such as sparsify's block=16x64, the one graphc's AMX path
// skips too): the weights are decompressed once into 16-column panels of dense tiles of which only
// the non-empty ones are kept, contiguous (compact_tiles: the weights stream from memory without
// gaps, and take no more room than the kept tiles), and a kept tile is a dense GEMM piece. For
// each of its 16 groups of 4 along K, the 16 columns' 64 weight bytes are two vectors, each row's
// 4 activation bytes are broadcast, and vpmaddubsw + vpmaddwd give 8 columns' int32 partial sums
// (the weights must satisfy SparseWeights::pairs_fit_int16: no int16 saturation). Rows are taken
// 4 at a time (8 accumulators), so every weight vector loaded serves 4 rows.
#include <immintrin.h>

#include <algorithm>

#include "sparse_gemm.h"

namespace graphc {

namespace {

// a masked store only on a ragged edge: vpmaskmovd stores are microcoded and slow on AMD Zen
inline void store8(int32_t* dst, __m256i value, __m256i mask, bool whole) {
  if (whole)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), value);
  else
    _mm256_maskstore_epi32(dst, mask, value);
}

// one row's step: its 4 activation bytes broadcast, times the two weight vectors, into its two
// accumulators. Written row by row, with the accumulators in locals: only one broadcast and one
// product are live at a time, so 4 rows' 8 accumulators, the 2 weight vectors, ones and 2
// temporaries fit the 16 ymm registers (the former form, all broadcasts first into an accumulator
// array, spilled one accumulator to the stack: 1.4-3x slower, benchmarks/sparse_gemm.py)
inline void row_step(const uint8_t* x4, __m256i w0, __m256i w1, __m256i ones, __m256i& acc0, __m256i& acc1) {
  const __m256i x = _mm256_set1_epi32(load4(reinterpret_cast<const int8_t*>(x4)));
  acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones));
  acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones));
}

template <int R>
void rows_of_panel(const uint8_t* a, int64_t k_bytes, const int8_t* tiles, const int32_t* tile_k, int32_t count,
                   __m256i out[][2]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
  for (int32_t t = 0; t < count; ++t) {
    const int8_t* tile = tiles + int64_t(t) * 1024;
    const uint8_t* x0 = a + int64_t(tile_k[t]) * 64;
    const uint8_t* x1 = x0 + k_bytes;
    const uint8_t* x2 = x1 + k_bytes;
    const uint8_t* x3 = x2 + k_bytes;
#pragma GCC unroll 4
    for (int g = 0; g < 16; ++g) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + g * 64));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + g * 64 + 32));
      row_step(x0 + g * 4, w0, w1, ones, a00, a01);
      if (R > 1) row_step(x1 + g * 4, w0, w1, ones, a10, a11);
      if (R > 2) row_step(x2 + g * 4, w0, w1, ones, a20, a21);
      if (R > 3) row_step(x3 + g * 4, w0, w1, ones, a30, a31);
    }
  }
  out[0][0] = a00, out[0][1] = a01;
  if (R > 1) out[1][0] = a10, out[1][1] = a11;
  if (R > 2) out[2][0] = a20, out[2][1] = a21;
  if (R > 3) out[3][0] = a30, out[3][1] = a31;
}

}  // namespace

void kernel_avx2_tiles(const uint8_t* a_rows, int64_t k_bytes, const SparseWeights& w, const int32_t* colsum,
                       uint8_t zp, int64_t r0, int64_t r1, int64_t p, int32_t* c, int64_t ldc,
                       const float* column_scale, const float* bias) {
  const int64_t n0 = p * 16, nc = std::min<int64_t>(16, w.n - n0);
  const int32_t first = w.kept_ptr[p], count = w.kept_ptr[p + 1] - first;
  const int8_t* tiles = w.kept_tiles + int64_t(first) * 1024;
  const int32_t* tile_k = w.kept_k + first;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i mask[2], offset[2];
  __m256 scale[2], shift[2];
  for (int h = 0; h < 2; ++h) {
    mask[h] = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(nc - 8 * h)), lane);
    offset[h] = _mm256_mullo_epi32(_mm256_set1_epi32(zp), _mm256_maskload_epi32(colsum + n0 + 8 * h, mask[h]));
    scale[h] = column_scale ? _mm256_maskload_ps(column_scale + n0 + 8 * h, mask[h]) : _mm256_setzero_ps();
    shift[h] = bias ? _mm256_maskload_ps(bias + n0 + 8 * h, mask[h]) : _mm256_setzero_ps();
  }
  for (int64_t r = r0; r < r1; r += 4) {
    const int64_t rows = std::min<int64_t>(4, r1 - r);
    __m256i acc[4][2];
    const uint8_t* a = a_rows + r * k_bytes;
    switch (rows) {
      case 1: rows_of_panel<1>(a, k_bytes, tiles, tile_k, count, acc); break;
      case 2: rows_of_panel<2>(a, k_bytes, tiles, tile_k, count, acc); break;
      case 3: rows_of_panel<3>(a, k_bytes, tiles, tile_k, count, acc); break;
      default: rows_of_panel<4>(a, k_bytes, tiles, tile_k, count, acc); break;
    }
    for (int64_t i = 0; i < rows; ++i)
      for (int h = 0; h < 2; ++h) {
        if (8 * h >= nc) break;
        const __m256i product = _mm256_sub_epi32(acc[i][h], offset[h]);
        int32_t* dst = c + (r + i) * ldc + n0 + 8 * h;
        __m256i bits = product;
        if (column_scale != nullptr) {
          __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(product), scale[h]);  // no FMA: -ffp-contract=off
          if (bias != nullptr) value = _mm256_add_ps(value, shift[h]);
          bits = _mm256_castps_si256(value);
        }
        store8(dst, bits, mask[h], nc - 8 * h >= 8);
      }
  }
}

}  // namespace graphc
