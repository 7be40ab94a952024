// DynamicQuantizeLinear inside graphc's dynamic op: A (float) to uint8 per tensor.
#pragma once
#include <cstdint>

#include "sparse_gemm.h"

namespace graphc {

// out[i] for i < count, and the scale and zero point, as ONNX DynamicQuantizeLinear computes them: the
// range widened to hold 0, scale = (max - min) / 255 (1 where max == min), zero point round(-min /
// scale) clamped to 0..255, values round(x / scale) + zero point saturated, ties to even; a NaN
// input is left out of the range and becomes 255. The same bytes on every form, chosen by the kernel's
// path: scalar, AVX2 (its tails by SSE2) and AVX-512 (avx512vnni and amx), in chunks over the pool.
void dynamic_quantize(Isa isa, const float* x, int64_t count, uint8_t* out, float* scale, uint8_t* zero_point,
                      const ParallelFor& parallel);

}  // namespace graphc
