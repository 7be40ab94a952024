// AVX-512 VNNI kernel over 16 x 64 weight tiles (compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512vnni), for constant weights that are dense or whose zeros fill whole tiles: the same
// compacted kept tiles as the AVX2 tile kernel (SparseWeights::kept_tiles, made by compact_tiles),
// a kept tile a dense GEMM piece. A tile's group g (4 along K) of its 16 columns is 64 bytes, one
// zmm: column j's 4 weights in lane j, the layout vpdpbusd reads, so each row's 4 activation bytes
// broadcast and one vpdpbusd add 16 columns' 4-term products to that row's accumulator, with no
// saturation (any 8-bit weights). Neighbouring panels whose kept tiles are the same (a dense
// weight's: all of them) are taken 2 or 4 at a time, so that each broadcast serves 2 or 4 vpdpbusd:
// 8 rows x 1 or 2 panels, 4 rows x 4 panels (16 accumulators either way, of the 32 zmm). With fewer
// than 4 rows each row keeps several accumulators per panel (even and odd groups apart), as one
// vpdpbusd chain per row would wait on its latency (about 5 cycles).
//
// Against the 16-row panel kernel (kernel_avx512vnni.cc), which broadcasts one column's weights
// and loads 16 rows of A per vpdpbusd, this one loads one weight vector per 4 or 8 vpdpbusd and
// broadcasts the activations: a 512-bit load per product was that kernel's limit on AMD Zen 4
// (dense BERT-base shapes at 0.46-0.65x of onnxruntime there; on this kernel 0.89-1.04x at M = 128,
// 4 panels at a time 1.04x faster than 2 on 768 x 3072; benchmarks/sparse_gemm.py, 2026-12-04).
#include <immintrin.h>

#include <algorithm>

#include "sparse_gemm.h"
#include "vnni_epilogue.h"

namespace graphc {

namespace {

constexpr int kRows = 8;
constexpr int kPanels = 4;  // at most this many panels with the same kept tiles at a time, then 4 rows

// R rows x the 16 columns of each of Q panels with the same kept tiles over those tiles; U
// accumulators per row and panel (groups g with g % U == u go to the u-th)
template <int R, int U, int Q>
void rows_of_panels(const uint8_t* a, int64_t k_bytes, const int8_t* tiles, int64_t panel_stride,
                    const int32_t* tile_k, int32_t count, __m512i out[kPanels][kRows]) {
  __m512i acc[Q][R][U];
  for (int q = 0; q < Q; ++q)
    for (int i = 0; i < R; ++i)
      for (int u = 0; u < U; ++u) acc[q][i][u] = _mm512_setzero_si512();
  // one pointer per row and per panel, each advanced in its own register: computed from an array
  // and offsets in the loop, they ran out of registers and were reloaded from the stack per step
  const uint8_t* row[R];
  for (int i = 0; i < R; ++i) row[i] = a + i * k_bytes;
  const int8_t* panel[Q];
  for (int q = 0; q < Q; ++q) panel[q] = tiles + q * panel_stride;
  for (int32_t t = 0; t < count; ++t) {
    const int64_t k_offset = int64_t(tile_k[t]) * 64;
#pragma GCC unroll 16
    for (int g = 0; g < 16; ++g) {
      __m512i wv[Q];
      for (int q = 0; q < Q; ++q) wv[q] = _mm512_loadu_si512(panel[q] + g * 64);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const __m512i xv = _mm512_set1_epi32(load4(reinterpret_cast<const int8_t*>(row[i] + k_offset + g * 4)));
        for (int q = 0; q < Q; ++q) acc[q][i][g % U] = _mm512_dpbusd_epi32(acc[q][i][g % U], xv, wv[q]);
      }
    }
    for (int q = 0; q < Q; ++q) panel[q] += 1024;
  }
  for (int q = 0; q < Q; ++q)
    for (int i = 0; i < R; ++i) {
      __m512i sum = acc[q][i][0];
      for (int u = 1; u < U; ++u) sum = _mm512_add_epi32(sum, acc[q][i][u]);
      out[q][i] = sum;
    }
}

template <int Q>
void rows_of(int64_t rows, const uint8_t* a, int64_t k_bytes, const int8_t* tiles, int64_t panel_stride,
             const int32_t* tile_k, int32_t count, __m512i out[kPanels][kRows]) {
  switch (rows) {
    case 1: rows_of_panels<1, 4, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
    case 2: rows_of_panels<2, 2, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
    case 3: rows_of_panels<3, 2, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
    case 4: rows_of_panels<4, 1, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
    case 5: rows_of_panels<5, 1, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
    case 6: rows_of_panels<6, 1, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
    case 7: rows_of_panels<7, 1, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
    default: rows_of_panels<8, 1, Q>(a, k_bytes, tiles, panel_stride, tile_k, count, out); break;
  }
}

bool same_kept_tiles(const SparseWeights& w, int64_t p, int64_t q) {
  const int32_t first = w.kept_ptr[p], count = w.kept_ptr[p + 1] - first;
  if (w.kept_ptr[q + 1] - w.kept_ptr[q] != count) return false;
  return std::equal(w.kept_k + first, w.kept_k + first + count, w.kept_k + w.kept_ptr[q]);
}

}  // namespace

void kernel_avx512vnni_tiles(const uint8_t* a_rows, int64_t k_bytes, const SparseWeights& w, const int32_t* colsum,
                             uint8_t zp, int64_t r0, int64_t r1, int64_t p0, int64_t p1, int32_t* c, int64_t ldc,
                             const float* column_scale, const float* bias) {
  const int64_t panels = (w.n + 15) / 16;
  for (int64_t p = p0; p < p1;) {
    int64_t q = 1;  // panels p .. p + q - 1 share their kept tiles: 1, 2 or 4 of them
    while (q < kPanels && p + q < std::min(p1, panels) && same_kept_tiles(w, p, p + q)) ++q;
    if (q == 3) q = 2;
    // the kept tiles are stored panel after panel, so panel p + j's (the same count) start j x count tiles on
    const int32_t first = w.kept_ptr[p], count = w.kept_ptr[p + 1] - first;
    const int8_t* tiles = w.kept_tiles + int64_t(first) * 1024;
    const int64_t panel_stride = int64_t(count) * 1024;
    const int32_t* tile_k = w.kept_k + first;
    Columns16Out out[kPanels];
    for (int64_t j = 0; j < q; ++j)
      out[j] = Columns16Out((p + j) * 16, std::min<int64_t>(16, w.n - (p + j) * 16), colsum, zp, column_scale, bias);
    const int64_t block = q == 4 ? 4 : kRows;
    for (int64_t r = r0; r < r1; r += block) {
      const int64_t rows = std::min<int64_t>(block, r1 - r);
      __m512i acc[kPanels][kRows];
      const uint8_t* a = a_rows + r * k_bytes;
      if (q == 4)
        rows_of<4>(rows, a, k_bytes, tiles, panel_stride, tile_k, count, acc);
      else if (q == 2)
        rows_of<2>(rows, a, k_bytes, tiles, panel_stride, tile_k, count, acc);
      else
        rows_of<1>(rows, a, k_bytes, tiles, panel_stride, tile_k, count, acc);
      for (int64_t j = 0; j < q; ++j)
        for (int64_t i = 0; i < rows; ++i) out[j].store(acc[j][i], c + (r + i) * ldc);
    }
    p += q;
  }
}

}  // namespace graphc
