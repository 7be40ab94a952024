// AVX-512 VNNI one-row kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni): the
// lane form of constant weights (SparseWeights::lane_k, lane_steps.h) with a step's 8 lanes of
// 4-term products from one 256-bit vpdpbusd (AVX512-VL) into the slice's accumulator, in place of
// AVX2's vpmaddubsw + vpmaddwd + vpaddd (or, for 8-bit weights, its 16-bit widening): fewer
// instructions per step, and no saturation, so graphc int8's 8-bit weights on VNNI CPUs take the
// same short form. Lanes of 8 (not 16 in a zmm): a step's cost is its 8 activation loads, and the
// slices stay the AVX2 kernel's, one lane form for both. vpgatherdd in place of the 8 inserts was
// 0.75-0.94x as fast on AMD Zen 4 (1x4 at 80-90%, M = 1, benchmarks/sparse_gemm.py --layers 12).
#include <immintrin.h>

#include "lane_steps.h"
#include "sparse_gemm.h"

namespace graphc {

namespace {

struct VnniDot {
  static __m256i accumulate(__m256i acc, __m256i a, __m256i w) { return _mm256_dpbusd_epi32(acc, a, w); }
};

}  // namespace

void kernel_avx512vnni_gemv_lanes(const uint8_t* row, const SparseWeights& w, const int32_t* colsum, uint8_t zp,
                                  int64_t s0, int64_t s1, int32_t* out, const float* column_scale, const float* bias) {
  if (w.lane_k8 != nullptr)
    lane_slices<VnniDot>(row, w, w.lane_k8, colsum, zp, s0, s1, out, column_scale, bias);
  else
    lane_slices<VnniDot>(row, w, w.lane_k, colsum, zp, s0, s1, out, column_scale, bias);
}

}  // namespace graphc
