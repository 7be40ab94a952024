// AVX-512 VNNI kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni): 16 rows of A
// per zmm (a panel packed [K4][16][4]), one vpdpbusd per non-zero 4-group and panel; the 16
// columns' accumulators are transposed in registers so C is written by rows.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "sparse_gemm.h"
#include "vnni_epilogue.h"

namespace graphc {

namespace {

// P panels (16 rows each) of one column; U blocks at a time into separate accumulators, so
// U * P vpdpbusd chains are in flight (its latency is about 5 cycles)
template <int P, int U>
inline void column(const uint8_t* packed, int64_t panel_bytes, const SparseWeights& w, int64_t n, int32_t* out) {
  __m512i acc[U][P];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < P; ++t) acc[u][t] = _mm512_setzero_si512();
  // the column's groups and weights in locals: loads through w would be repeated every block
  const int32_t first = w.col_ptr[n], count = w.col_ptr[n + 1] - first;
  const int32_t* groups = w.block_k + first;
  const int8_t* values = w.values + int64_t(first) * 4;
  int32_t b = 0;
  for (; b + U <= count; b += U)
    for (int u = 0; u < U; ++u) {
      const __m512i wb = _mm512_set1_epi32(load4(values + int64_t(b + u) * 4));
      const uint8_t* a = packed + int64_t(groups[b + u]) * 64;
      for (int t = 0; t < P; ++t)
        acc[u][t] = _mm512_dpbusd_epi32(acc[u][t], _mm512_loadu_si512(a + t * panel_bytes), wb);
    }
  for (; b < count; ++b) {
    const __m512i wb = _mm512_set1_epi32(load4(values + int64_t(b) * 4));
    const uint8_t* a = packed + int64_t(groups[b]) * 64;
    for (int t = 0; t < P; ++t)
      acc[0][t] = _mm512_dpbusd_epi32(acc[0][t], _mm512_loadu_si512(a + t * panel_bytes), wb);
  }
  for (int t = 0; t < P; ++t) {
    __m512i sum = acc[0][t];
    for (int u = 1; u < U; ++u) sum = _mm512_add_epi32(sum, acc[u][t]);
    _mm512_store_si512(out + t * 16, sum);
  }
}

// rows[j] (16 int32 each) -> cols[i][j] = rows[j][i]
inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // rows 4i .. 4i+3
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // u[4i + e], 128-bit lane l: element 4l + e of rows 4i .. 4i+3
  for (int e = 0; e < 4; ++e) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88);       // lanes 0,2 of rows 0-3 | 4-7
    const __m512i v1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);       // lanes 1,3
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88);  // rows 8-11 | 12-15
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
    r[e] = _mm512_shuffle_i32x4(v0, w0, 0x88);       // element e
    r[8 + e] = _mm512_shuffle_i32x4(v0, w0, 0xdd);   // element 8 + e
    r[4 + e] = _mm512_shuffle_i32x4(v1, w1, 0x88);   // element 4 + e
    r[12 + e] = _mm512_shuffle_i32x4(v1, w1, 0xdd);  // element 12 + e
  }
}

}  // namespace

void kernel_avx512vnni(const uint8_t* packed, int64_t panels, const SparseWeights& w, const int32_t* colsum,
                       uint8_t zp, int64_t row0, int64_t m, int64_t n0, int64_t n1, int32_t* c, int64_t ldc,
                       const float* column_scale, const float* bias) {
  const int64_t panel_bytes = (w.k + 3) / 4 * 64;
  alignas(64) int32_t buf[16][128];
  for (int64_t nb = n0; nb < n1; nb += 16) {
    const int64_t nc = std::min<int64_t>(16, n1 - nb);
    for (int64_t j = 0; j < nc; ++j) {
      switch (panels) {
        case 1: column<1, 8>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 2: column<2, 4>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 3: column<3, 3>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 4: column<4, 2>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 5: column<5, 2>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 6: column<6, 1>(packed, panel_bytes, w, nb + j, buf[j]); break;
        case 7: column<7, 1>(packed, panel_bytes, w, nb + j, buf[j]); break;
        default: column<8, 1>(packed, panel_bytes, w, nb + j, buf[j]); break;
      }
    }
    const Columns16Out out(nb, nc, colsum, zp, column_scale, bias);
    for (int64_t t = 0; t < panels; ++t) {
      __m512i r[16];
      for (int j = 0; j < 16; ++j) r[j] = j < nc ? _mm512_load_si512(buf[j] + t * 16) : _mm512_setzero_si512();
      transpose16(r);
      for (int i = 0; i < 16; ++i) {
        const int64_t row = row0 + t * 16 + i;
        if (row >= m) break;
        out.store(r[i], c + row * ldc);
      }
    }
  }
}

}  // namespace graphc
