// AMX-INT8 kernel (compiled with -mamx-tile -mamx-int8): dense tiles over the weight's kept 16 x 64
// tiles (the pair form, sparse_gemm.h), every all-zero tile skipped and never stored (the way a coarse
// block pattern pays off here; 1x4 blocks scattered over a tile leave none to skip). The kept tiles
// lie in the order the loop reads them, one stream per 32 columns, which the hardware prefetcher
// follows. A work item is 32 rows x a block of columns,
// so that it writes whole runs of each output row (an item of 32 columns x every row wrote 128 bytes
// per row 12 KB apart, and into an output not in cache that took most of an 80%-sparse call).
//
// Tiles (palette 1, all 16 rows x 64 bytes): tmm0-3 the int32 products of 2 row tiles x 2
// column panels, tmm4-5 A (16 rows x 64 reduction bytes), tmm6-7 B (16 groups of 4 along K x 16
// columns, the VNNI layout TDPBUSD reads). A is copied zero-padded to 16-row, 64-byte tiles.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "sparse_gemm.h"

namespace graphc {

namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void configure() {
  TileConfig config;
  std::memset(&config, 0, sizeof(config));
  config.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}

}  // namespace

void amx_block(const uint8_t* a_tiles, int64_t m, int64_t k_bytes, const SparseWeights& w, const int32_t* colsum,
               uint8_t zp, int64_t m0, int64_t n0, int64_t n1, int32_t* c, int64_t ldc, const float* column_scale,
               const float* bias) {
  // rows m0 .. m0 + 31 (fewer at the end) x columns n0 .. n1 - 1 (n0 a multiple of 32), 32 columns at a
  // time; a_tiles: [rows / 16][k_tiles][16][64], k_bytes = 64 * k_tiles
  const int64_t k_tiles = k_bytes / 64;
  const bool two_rows = m0 + 16 < m;
  const uint8_t* a_first = a_tiles + m0 / 16 * k_tiles * 1024;  // tile-major: 1 KB contiguous per tile
  const uint8_t* a_second = a_first + k_tiles * 1024;
  configure();
  alignas(64) int32_t out[4][16][16];
  for (int64_t nb = n0; nb < n1; nb += 32) {
    const int64_t q = nb / 32;
    __mmask16 mask[2];
    __m512i offset[2];
    __m512 scale[2], shift[2];
    for (int p = 0; p < 2; ++p) {
      const int64_t columns = std::clamp<int64_t>(w.n - nb - p * 16, 0, 16);
      mask[p] = __mmask16((1u << columns) - 1);
      offset[p] = _mm512_mullo_epi32(_mm512_set1_epi32(zp), _mm512_maskz_loadu_epi32(mask[p], colsum + nb + p * 16));
      scale[p] = column_scale ? _mm512_maskz_loadu_ps(mask[p], column_scale + nb + p * 16) : _mm512_setzero_ps();
      shift[p] = bias ? _mm512_maskz_loadu_ps(mask[p], bias + nb + p * 16) : _mm512_setzero_ps();
    }
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const int8_t* b = w.pair_tiles + w.pair_first_tile[q] * 1024;  // the pair's kept tiles, in this loop's order
    for (int32_t s = w.pair_ptr[q]; s < w.pair_ptr[q + 1]; ++s) {
      const int64_t t = w.pair_steps[s] >> 2;
      const int kept = w.pair_steps[s] & 3;
      _tile_loadd(4, a_first + t * 1024, 64);
      if (two_rows) _tile_loadd(5, a_second + t * 1024, 64);
      if (kept & 1) {
        _tile_loadd(6, b, 64);
        b += 1024;
        _tile_dpbusd(0, 4, 6);
        if (two_rows) _tile_dpbusd(2, 5, 6);
      }
      if (kept & 2) {
        _tile_loadd(7, b, 64);
        b += 1024;
        _tile_dpbusd(1, 4, 7);
        if (two_rows) _tile_dpbusd(3, 5, 7);
      }
    }
    _tile_stored(0, out[0], 64);
    _tile_stored(1, out[1], 64);
    if (two_rows) {
      _tile_stored(2, out[2], 64);
      _tile_stored(3, out[3], 64);
    }
    for (int half = 0; half < (two_rows ? 2 : 1); ++half)
      for (int64_t i = 0; i < 16 && m0 + half * 16 + i < m; ++i) {
        int32_t* row = c + (m0 + half * 16 + i) * ldc;
        for (int p = 0; p < 2; ++p) {
          const __m512i product = _mm512_sub_epi32(_mm512_load_si512(out[half * 2 + p][i]), offset[p]);
          if (column_scale == nullptr) {
            _mm512_mask_storeu_epi32(row + nb + p * 16, mask[p], product);
          } else {  // float(product) * scale (+ bias), as the Cast -> Mul -> Add nodes
            __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(product), scale[p]);
            if (bias) y = _mm512_add_ps(y, shift[p]);
            _mm512_mask_storeu_ps(reinterpret_cast<float*>(row + nb + p * 16), mask[p], y);
          }
        }
      }
  }
  _tile_release();
}

}  // namespace graphc
