// Model layers, CPU: 16-lane AVX-512 helpers shared by sglkit's C++ kernels (attention, GEMM, fused ops).
// float32 and bfloat16 load as 16 float lanes; stores round to bfloat16 to nearest even (NaN stays NaN), as torch
// does; masked forms take a row's tail. Only included where __AVX512F__/BW/VL are defined.
#pragma once

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

namespace sglkit::vec {

constexpr int64_t kLanes = 16;

// The first n (capped at 16) lanes.
static inline __mmask16 first_lanes(int64_t n) {
  return n >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
static inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// float lanes -> the bit patterns of their bfloat16 rounding (nearest even) in the high halves; NaN -> quiet NaN.
static inline __m512i bf16_rounded_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC00000));
}

static inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
static inline void store16(c10::BFloat16* p, __m512 v) {
  const __m256i bits = _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rounded_bits(v), 16));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits);
}
static inline void store16(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
static inline void store16(c10::BFloat16* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rounded_bits(v), 16)));
}

// v rounded to T and back to float: what a torch op computing in float and returning T leaves behind.
template <typename T>
static inline __m512 round_to(__m512 v);
template <>
inline __m512 round_to<float>(__m512 v) {
  return v;
}
template <>
inline __m512 round_to<c10::BFloat16>(__m512 v) {
  return _mm512_castsi512_ps(_mm512_and_si512(bf16_rounded_bits(v), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// e^x: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], a degree-6 Taylor polynomial (relative error ~1e-7); x is
// clamped to [-87, 88], so very negative x give ~0 and large x a finite ~1.6e38.
static inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Software prefetch of the 64-byte lines [p, p + 64 * lines) into L2 (prefetcht1). A volatile asm statement:
// GCC deletes a loop whose body is only __builtin_prefetch / _mm_prefetch when its trip count is not a
// compile-time constant, and such prefetches were silently missing from the object file.
static inline void prefetch_l2(const void* p) { asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p))); }
static inline void prefetch_lines_l2(const void* p, int64_t lines) {
  const char* c = static_cast<const char*>(p);
  for (int64_t l = 0; l < lines; ++l) prefetch_l2(c + 64 * l);
}

}  // namespace sglkit::vec
