// The AVX-512 VNNI kernels' epilogue for 16 output columns (kernel_avx512vnni.cc's 16-row panels and
// kernel_avx512vnni_tiles.cc): the a_zero_point offset, and for float outputs the column scale and
// bias, loaded once for the 16 columns [n0, n0 + count), then one row at a time written as int32, or as
// float(product) * scale (+ bias): two roundings, as the Cast -> Mul -> Add nodes. Included only by
// files compiled with -mavx512f; internal linkage, as lane_steps.h.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace graphc {
namespace {

struct Columns16Out {
  int64_t n0 = 0;
  __mmask16 cols = 0;
  __m512i offset = _mm512_setzero_si512();
  __m512 scale = _mm512_setzero_ps(), shift = _mm512_setzero_ps();
  bool to_float = false, with_bias = false;

  Columns16Out() = default;
  Columns16Out(int64_t first, int64_t count, const int32_t* colsum, uint8_t zp, const float* column_scale,
               const float* bias)
      : n0(first), cols(__mmask16((1u << count) - 1)), to_float(column_scale != nullptr), with_bias(bias != nullptr) {
    offset = _mm512_mullo_epi32(_mm512_set1_epi32(zp), _mm512_maskz_loadu_epi32(cols, colsum + n0));
    if (to_float) scale = _mm512_maskz_loadu_ps(cols, column_scale + n0);
    if (with_bias) shift = _mm512_maskz_loadu_ps(cols, bias + n0);
  }
  // row's 16 sums, less the offset, into row_out[n0 ..]
  void store(__m512i sums, int32_t* row_out) const {
    const __m512i product = _mm512_sub_epi32(sums, offset);
    if (!to_float) {
      _mm512_mask_storeu_epi32(row_out + n0, cols, product);
      return;
    }
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(product), scale);
    if (with_bias) y = _mm512_add_ps(y, shift);
    _mm512_mask_storeu_ps(reinterpret_cast<float*>(row_out + n0), cols, y);
  }
};

}  // namespace
}  // namespace graphc
