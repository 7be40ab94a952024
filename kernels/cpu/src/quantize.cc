// DynamicQuantizeLinear for the dynamic op (quantize.h): two passes over A (its range, then its
// bytes), each in chunks over the pool, with a vector form per ISA (function target attributes; the
// dispatch is by the kernel's path, so the tests that force each path run each form).
//
// Why not onnxruntime's own: the C API has no entry to it, and the op must give the very bytes of a
// DynamicQuantizeLinear node, so the rules are written out here. Every form does the same IEEE
// operations lane by lane: min / max with the running value second (a NaN is ignored, as std::min /
// std::max with it second ignore it), x / scale, a clamp to -256..511, rounding to nearest even by
// adding and subtracting 1.5 * 2^23 (exact for |v| < 2^22), + zero point, a clamp to 0..255 (a NaN
// becomes 255); no -ffast-math, no reassociation. An M=128 K=3072 dynamic call spent more time here
// than in the AMX kernel with one SSE2 pass on one thread (benchmarks/sparse_gemm.py, 2026-12-03).
#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GRAPHC_X86 1
#endif

namespace graphc {

namespace {

constexpr int64_t kChunk = 32768;  // floats per work item (128 KB)
constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23

enum class Form { scalar, sse2, avx2, avx512 };

Form form_for(Isa isa) {
  switch (isa) {
    case Isa::scalar: return Form::scalar;
    case Isa::avx2: return Form::avx2;
    case Isa::avx512vnni:
    case Isa::amx: return Form::avx512;
  }
  return Form::scalar;
}

void range_scalar(const float* x, int64_t count, float* lo, float* hi) {
  for (int64_t i = 0; i < count; ++i) {
    *lo = std::min(*lo, x[i]);
    *hi = std::max(*hi, x[i]);
  }
}

uint8_t quantize_one(float x, float scale, float zero) {
  const float v = std::clamp(x / scale, -256.0f, 511.0f);
  if (v != v) return 255;
  return uint8_t(std::clamp((v + kMagic) - kMagic + zero, 0.0f, 255.0f));
}

void bytes_scalar(const float* x, int64_t count, float scale, float zero, uint8_t* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = quantize_one(x[i], scale, zero);
}

#ifdef GRAPHC_X86
void range_sse2(const float* x, int64_t count, float* lo, float* hi) {
  __m128 lo4 = _mm_set1_ps(*lo), hi4 = _mm_set1_ps(*hi);
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    lo4 = _mm_min_ps(v, lo4);  // v < lo ? v : lo
    hi4 = _mm_max_ps(v, hi4);
  }
  alignas(16) float lanes[8];
  _mm_store_ps(lanes, lo4);
  _mm_store_ps(lanes + 4, hi4);
  for (int j = 0; j < 4; ++j) {
    *lo = std::min(*lo, lanes[j]);
    *hi = std::max(*hi, lanes[4 + j]);
  }
  range_scalar(x + i, count - i, lo, hi);
}

void bytes_sse2(const float* x, int64_t count, float scale, float zero, uint8_t* out) {
  const __m128 scale4 = _mm_set1_ps(scale), zero4 = _mm_set1_ps(zero), magic4 = _mm_set1_ps(kMagic);
  const __m128 low4 = _mm_set1_ps(-256.0f), high4 = _mm_set1_ps(511.0f), top4 = _mm_set1_ps(255.0f);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m128i words[4];
    for (int j = 0; j < 4; ++j) {
      __m128 v = _mm_div_ps(_mm_loadu_ps(x + i + 4 * j), scale4);
      v = _mm_max_ps(_mm_min_ps(v, high4), low4);
      v = _mm_add_ps(_mm_sub_ps(_mm_add_ps(v, magic4), magic4), zero4);
      v = _mm_max_ps(_mm_min_ps(v, top4), _mm_setzero_ps());
      words[j] = _mm_cvttps_epi32(v);  // whole numbers in 0..255
    }
    const __m128i packed = _mm_packus_epi16(_mm_packs_epi32(words[0], words[1]), _mm_packs_epi32(words[2], words[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), packed);
  }
  bytes_scalar(x + i, count - i, scale, zero, out + i);
}

__attribute__((target("avx2"))) void range_avx2(const float* x, int64_t count, float* lo, float* hi) {
  __m256 lo8 = _mm256_set1_ps(*lo), hi8 = _mm256_set1_ps(*hi);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    lo8 = _mm256_min_ps(v, lo8);
    hi8 = _mm256_max_ps(v, hi8);
  }
  alignas(32) float lanes[16];
  _mm256_store_ps(lanes, lo8);
  _mm256_store_ps(lanes + 8, hi8);
  for (int j = 0; j < 8; ++j) {
    *lo = std::min(*lo, lanes[j]);
    *hi = std::max(*hi, lanes[8 + j]);
  }
  range_scalar(x + i, count - i, lo, hi);
}

__attribute__((target("avx2"))) void bytes_avx2(const float* x, int64_t count, float scale, float zero, uint8_t* out) {
  const __m256 scale8 = _mm256_set1_ps(scale), zero8 = _mm256_set1_ps(zero), magic8 = _mm256_set1_ps(kMagic);
  const __m256 low8 = _mm256_set1_ps(-256.0f), high8 = _mm256_set1_ps(511.0f), top8 = _mm256_set1_ps(255.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the packs' lane interleave
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    __m256i words[4];
    for (int j = 0; j < 4; ++j) {
      __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), scale8);
      v = _mm256_max_ps(_mm256_min_ps(v, high8), low8);
      v = _mm256_add_ps(_mm256_sub_ps(_mm256_add_ps(v, magic8), magic8), zero8);
      v = _mm256_max_ps(_mm256_min_ps(v, top8), _mm256_setzero_ps());
      words[j] = _mm256_cvttps_epi32(v);
    }
    const __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(words[0], words[1]),
                                               _mm256_packs_epi32(words[2], words[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(packed, order));
  }
  bytes_sse2(x + i, count - i, scale, zero, out + i);
}

__attribute__((target("avx512f"))) void range_avx512(const float* x, int64_t count, float* lo, float* hi) {
  __m512 lo16 = _mm512_set1_ps(*lo), hi16 = _mm512_set1_ps(*hi);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo16 = _mm512_min_ps(v, lo16);
    hi16 = _mm512_max_ps(v, hi16);
  }
  alignas(64) float lanes[32];
  _mm512_store_ps(lanes, lo16);
  _mm512_store_ps(lanes + 16, hi16);
  for (int j = 0; j < 16; ++j) {
    *lo = std::min(*lo, lanes[j]);
    *hi = std::max(*hi, lanes[16 + j]);
  }
  range_scalar(x + i, count - i, lo, hi);
}

__attribute__((target("avx512f"))) void bytes_avx512(const float* x, int64_t count, float scale, float zero,
                                                     uint8_t* out) {
  const __m512 scale16 = _mm512_set1_ps(scale), zero16 = _mm512_set1_ps(zero), magic16 = _mm512_set1_ps(kMagic);
  const __m512 low16 = _mm512_set1_ps(-256.0f), high16 = _mm512_set1_ps(511.0f), top16 = _mm512_set1_ps(255.0f);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m512 v = _mm512_div_ps(_mm512_loadu_ps(x + i), scale16);
    v = _mm512_max_ps(_mm512_min_ps(v, high16), low16);
    v = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(v, magic16), magic16), zero16);
    v = _mm512_max_ps(_mm512_min_ps(v, top16), _mm512_setzero_ps());
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));  // 0..255
  }
  bytes_scalar(x + i, count - i, scale, zero, out + i);
}
#endif

struct Job {
  Form form;
  const float* x;
  int64_t count;
  uint8_t* out;
  std::vector<float> lo, hi;  // per chunk
  float scale, zero;
};

void range_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t first = int64_t(item) * kChunk, count = std::min(kChunk, job.count - first);
  float lo = 0.0f, hi = 0.0f;  // the range always holds 0
  switch (job.form) {
#ifdef GRAPHC_X86
    case Form::avx512: range_avx512(job.x + first, count, &lo, &hi); break;
    case Form::avx2: range_avx2(job.x + first, count, &lo, &hi); break;
    case Form::sse2: range_sse2(job.x + first, count, &lo, &hi); break;
#endif
    default: range_scalar(job.x + first, count, &lo, &hi);
  }
  job.lo[item] = lo;
  job.hi[item] = hi;
}

void bytes_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t first = int64_t(item) * kChunk, count = std::min(kChunk, job.count - first);
  switch (job.form) {
#ifdef GRAPHC_X86
    case Form::avx512: bytes_avx512(job.x + first, count, job.scale, job.zero, job.out + first); break;
    case Form::avx2: bytes_avx2(job.x + first, count, job.scale, job.zero, job.out + first); break;
    case Form::sse2: bytes_sse2(job.x + first, count, job.scale, job.zero, job.out + first); break;
#endif
    default: bytes_scalar(job.x + first, count, job.scale, job.zero, job.out + first);
  }
}

}  // namespace

void dynamic_quantize(Isa isa, const float* x, int64_t count, uint8_t* out, float* scale, uint8_t* zero_point,
                      const ParallelFor& parallel) {
  Job job{form_for(isa), x, count, out, {}, {}, 0.0f, 0.0f};
  const size_t chunks = size_t((count + kChunk - 1) / kChunk);
  job.lo.assign(std::max<size_t>(chunks, 1), 0.0f);
  job.hi.assign(std::max<size_t>(chunks, 1), 0.0f);
  if (chunks > 0) parallel.run(parallel.self, range_item, chunks, &job);
  float lo = 0.0f, hi = 0.0f;
  for (size_t c = 0; c < chunks; ++c) {
    lo = std::min(lo, job.lo[c]);
    hi = std::max(hi, job.hi[c]);
  }
  *scale = hi == lo ? 1.0f : (hi - lo) / 255.0f;
  *zero_point = uint8_t(std::clamp(std::nearbyint(-lo / *scale), 0.0f, 255.0f));
  job.scale = *scale;
  job.zero = float(*zero_point);
  if (chunks > 0) parallel.run(parallel.self, bytes_item, chunks, &job);
}

}  // namespace graphc
