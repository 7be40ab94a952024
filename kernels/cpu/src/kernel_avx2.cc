// AVX2 kernel (compiled with -mavx2): 8 rows of A per panel (packed [K4][8][4]). vpmaddubsw adds
// two u8 x s8 products into a saturating int16 (255 * 127 * 2 > 32767), so it is used only for
// weights whose pairs cannot overflow (SparseWeights::pairs_fit_int16: one vpmaddubsw and one
// vpmaddwd per group and panel); any other weights are widened to 16 bits and multiplied with
// vpmaddwd, which cannot saturate.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "sparse_gemm.h"

namespace graphc {

namespace {

template <int P>
inline void column(const uint8_t* packed, int64_t panel_bytes, const SparseWeights& w, int64_t n, int32_t* out) {
  __m256i lo[P], hi[P];
  for (int t = 0; t < P; ++t) lo[t] = hi[t] = _mm256_setzero_si256();
  const int32_t first = w.col_ptr[n], count = w.col_ptr[n + 1] - first;  // in locals, as the VNNI kernel
  const int32_t* groups = w.block_k + first;
  const int8_t* values = w.values + int64_t(first) * 4;
  for (int32_t b = 0; b < count; ++b) {
    // [w0 w1 w2 w3] as int16, four times
    const __m256i wb = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(load4(values + int64_t(b) * 4))));
    const uint8_t* a = packed + int64_t(groups[b]) * 32;
    for (int t = 0; t < P; ++t) {
      const uint8_t* p = a + t * panel_bytes;
      const __m256i a_lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));       // rows 0-3
      const __m256i a_hi = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));  // rows 4-7
      lo[t] = _mm256_add_epi32(lo[t], _mm256_madd_epi16(a_lo, wb));
      hi[t] = _mm256_add_epi32(hi[t], _mm256_madd_epi16(a_hi, wb));
    }
  }
  // lo lanes: r0 r0 r1 r1 | r2 r2 r3 r3 (two partial sums per row); hadd -> r0 r1 r4 r5 | r2 r3 r6 r7
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  for (int t = 0; t < P; ++t)
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + t * 8),
                       _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo[t], hi[t]), order));
}

// the vpmaddubsw form: per group, [a0 a1 a2 a3] of 8 rows x [w0 w1 w2 w3] -> 8 int16 pairs -> 8 int32
template <int P>
inline void column_maddubs(const uint8_t* packed, int64_t panel_bytes, const SparseWeights& w, int64_t n,
                           int32_t* out) {
  __m256i acc[P];
  for (int t = 0; t < P; ++t) acc[t] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const int32_t first = w.col_ptr[n], count = w.col_ptr[n + 1] - first;
  const int32_t* groups = w.block_k + first;
  const int8_t* values = w.values + int64_t(first) * 4;
  for (int32_t b = 0; b < count; ++b) {
    const __m256i wb = _mm256_set1_epi32(load4(values + int64_t(b) * 4));
    const uint8_t* a = packed + int64_t(groups[b]) * 32;
    for (int t = 0; t < P; ++t) {
      const __m256i pairs = _mm256_maddubs_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + t * panel_bytes)), wb);
      acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(pairs, ones));
    }
  }
  for (int t = 0; t < P; ++t) _mm256_store_si256(reinterpret_cast<__m256i*>(out + t * 8), acc[t]);
}

// 8 x 8 int32 transpose: in[j] holds column j's 8 rows; out[i] gets row i's 8 columns
inline void transpose8(const __m256i in[8], __m256i out[8]) {
  __m256i t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_epi32(in[j], in[j + 1]);      // c_j r0, c_j+1 r0, c_j r1, c_j+1 r1 | r4 r5
    t[j + 1] = _mm256_unpackhi_epi32(in[j], in[j + 1]);  // rows 2, 3 | 6, 7
  }
  for (int j = 0; j < 8; j += 4) {
    u[j] = _mm256_unpacklo_epi64(t[j], t[j + 2]);          // row 0: c_j .. c_j+3 | row 4
    u[j + 1] = _mm256_unpackhi_epi64(t[j], t[j + 2]);      // row 1 | row 5
    u[j + 2] = _mm256_unpacklo_epi64(t[j + 1], t[j + 3]);  // row 2 | row 6
    u[j + 3] = _mm256_unpackhi_epi64(t[j + 1], t[j + 3]);  // row 3 | row 7
  }
  for (int i = 0; i < 4; ++i) {
    out[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
    out[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
  }
}

// rows [row0, row0 + rows) x columns [nb, nb + nc) (nc <= 16) of C from buf[column][row]: less
// zp * colsum, then, with column_scale, float(product) * column_scale (+ bias) in float32 (no
// fused multiply-add: the very roundings of the Cast -> Mul -> Add nodes the op replaces)
void write_block(const int32_t (*buf)[32], int64_t rows, int64_t nb, int64_t nc, const int32_t* colsum, uint8_t zp,
                 int64_t row0, int32_t* c, int64_t ldc, const float* column_scale, const float* bias) {
  const __m256i zero_point = _mm256_set1_epi32(zp);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j0 = 0; j0 < nc; j0 += 8) {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(nc - j0)), lane);
    const __m256i offset =
        _mm256_mullo_epi32(zero_point, _mm256_maskload_epi32(colsum + nb + j0, mask));
    __m256 scale = _mm256_setzero_ps(), shift = _mm256_setzero_ps();
    if (column_scale != nullptr) scale = _mm256_maskload_ps(column_scale + nb + j0, mask);
    if (bias != nullptr) shift = _mm256_maskload_ps(bias + nb + j0, mask);
    for (int64_t i0 = 0; i0 < rows; i0 += 8) {
      __m256i in[8], out[8];
      for (int j = 0; j < 8; ++j) in[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(buf[j0 + j] + i0));
      transpose8(in, out);
      for (int64_t i = 0; i < 8 && i0 + i < rows; ++i) {
        __m256i bits = _mm256_sub_epi32(out[i], offset);
        int32_t* dst = c + (row0 + i0 + i) * ldc + nb + j0;
        if (column_scale != nullptr) {
          __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(bits), scale);
          if (bias != nullptr) value = _mm256_add_ps(value, shift);
          bits = _mm256_castps_si256(value);
        }
        if (nc - j0 >= 8)  // a masked store only on the ragged edge: vpmaskmovd stores are slow on AMD Zen
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bits);
        else
          _mm256_maskstore_epi32(dst, mask, bits);
      }
    }
  }
}

}  // namespace

void kernel_avx2(const uint8_t* packed, int64_t panels, const SparseWeights& w, const int32_t* colsum,
                 uint8_t zp, int64_t row0, int64_t m, int64_t n0, int64_t n1, int32_t* c, int64_t ldc,
                 const float* column_scale, const float* bias) {
  const int64_t panel_bytes = (w.k + 3) / 4 * 32;
  alignas(32) int32_t buf[16][32];
  const int64_t rows = std::min<int64_t>(panels * 8, m - row0);
  for (int64_t nb = n0; nb < n1; nb += 16) {
    const int64_t nc = std::min<int64_t>(16, n1 - nb);
    for (int64_t j = 0; j < nc; ++j) {
      if (w.pairs_fit_int16) {
        switch (panels) {
          case 1: column_maddubs<1>(packed, panel_bytes, w, nb + j, buf[j]); break;
          case 2: column_maddubs<2>(packed, panel_bytes, w, nb + j, buf[j]); break;
          case 3: column_maddubs<3>(packed, panel_bytes, w, nb + j, buf[j]); break;
          default: column_maddubs<4>(packed, panel_bytes, w, nb + j, buf[j]); break;
        }
        continue;
      }
      switch (panels) {
        case 1: column<1>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 2: column<2>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 3: column<3>(packed, panel_bytes, w, nb + j, buf[j]); break;
        default: column<4>(packed, panel_bytes, w, nb + j, buf[j]); break;
      }
    }
    write_block(buf, rows, nb, nc, colsum, zp, row0, c, ldc, column_scale, bias);
  }
}

}  // namespace graphc
