// Model layers, CPU: y = x W^T (+ b) for bfloat16 / float32 weights held in a blocked layout (AVX-512).
// Bound to Python in module.cpp; the layout is built in sglkit/layers/cpu_kernels/blocked_gemm.py.
//
// Layout: W [N, K] -> [ceil(N/16), K/G, 16, G], G = 2 for
// bfloat16 and 1 for float32: per block of 16 output rows, for each group of G input columns, the 16 rows' G
// values side by side. One 64-byte load is then 16 outputs x G inputs: for bfloat16 the operand of one
// `vdpbf16ps` (AVX512-BF16) against a broadcast pair of x, for float32 of one FMA against a broadcast x. A block
// is one contiguous stream: the kernel reads every weight byte once, in order, whatever M is.
//
// Tiles: MB rows of x (1..14) x NB blocks of 16 outputs (1..2), MB*NB fp32 accumulators in registers. Threads
// (ATen's intra-op pool) split the output blocks into contiguous ranges; each thread, per pair of blocks, runs
// every row tile, so the weights stream from memory once and x is re-read from cache. The first row tile of a
// pair streams its weights from memory; the later ones (M >= 22, where a tile's x rows fit in L1) read them from
// cache and meanwhile prefetch the thread's next pair into L2, spread over their steps, so that pair's first tile
// starts on cached weights (bfloat16, 32 rows: +6-9% GFLOP/s for the 360M shape's q/k/v, o, gate/up and logits
// head; +3-4% at 64).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <string>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SGLKIT_BLOCKED_GEMM 1
#include "vec16.h"
#if defined(__AVX512BF16__)
#define SGLKIT_BLOCKED_GEMM_BF16 1
#endif
#endif

namespace {

constexpr int64_t kBlock = 16;   // output rows per block (one zmm of fp32 accumulators)
constexpr int kMaxRows = 14;     // rows of x per tile (14 x 2 blocks: 28 accumulators, ~7% over 12 x 2)
constexpr int kMaxBlocks = 2;    // blocks per tile
// Rows after the first tile needed to prefetch the next pair: fewer leave too little work per step to hide the
// prefetch (measured: 2-4 rows lose 10-23%, 6 rows win for q/k/v and gate/up but lose 4% for down, 8+ win or tie)
constexpr int64_t kMinPrefetchRows = 8;
// ... and a tile's rows of x must fit in L1 beside it (14 rows of 960 bfloat16 do; of 2560 bfloat16 (down) or of
// 960 float32 they do not, and the prefetch measured -2% to -5% there)
constexpr int64_t kPrefetchMaxTileX = 32 * 1024;

#ifdef SGLKIT_BLOCKED_GEMM

// 16 bf16 bit patterns (masked) -> 16 fp32 (vec16.h's load)
static inline __m512 load_bf16_as_fp32(const uint16_t* p, __mmask16 mask) {
  return sglkit::vec::load16(reinterpret_cast<const c10::BFloat16*>(p), mask);
}

// One element type's loads, multiply-accumulate and stores. `Lane`: the x value broadcast per step (a bf16 pair
// as uint32, or one float); `Elem`: the weight / output element (uint16 bf16 bits, or float); `Vec`: 16 outputs x G inputs of weights.
#ifdef SGLKIT_BLOCKED_GEMM_BF16
struct BF16 {
  using Lane = uint32_t;
  using Elem = uint16_t;
  using Out = uint16_t;
  static constexpr int64_t kGroup = 2;
  using Vec = __m512bh;
  static inline Vec load(const Elem* w) { return (__m512bh)_mm512_loadu_si512(w); }
  static inline __m512 fma(__m512 acc, Vec w, Lane x) {
    return _mm512_dpbf16_ps(acc, w, (__m512bh)_mm512_set1_epi32(static_cast<int>(x)));
  }
  static inline __m512 load_bias(const Out* b, __mmask16 mask) { return load_bf16_as_fp32(b, mask); }
  static inline void store(Out* out, __m512 y, __mmask16 mask) {
    _mm256_mask_storeu_epi16(out, mask, (__m256i)_mm512_cvtneps_pbh(y));
  }
};

// int8 weights (one scale per output row, applied after the sum) against bfloat16 x: each 32-byte step of a
// block (16 rows x 2 columns) is widened to 32 bfloat16 (exact: |q| <= 127) for one vdpbf16ps; bfloat16 out.
struct I8 : BF16 {
  using Elem = int8_t;
  static inline Vec load(const Elem* w) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(raw)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(raw, 1)));
    return _mm512_cvtne2ps_pbh(hi, lo);
  }
};
#endif

struct F32 {
  using Lane = float;
  using Elem = float;
  using Out = float;
  static constexpr int64_t kGroup = 1;
  using Vec = __m512;
  static inline Vec load(const Elem* w) { return _mm512_loadu_ps(w); }
  static inline __m512 fma(__m512 acc, Vec w, Lane x) { return _mm512_fmadd_ps(w, _mm512_set1_ps(x), acc); }
  static inline __m512 load_bias(const Out* b, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, b); }
  static inline void store(Out* out, __m512 y, __mmask16 mask) { _mm512_mask_storeu_ps(out, mask, y); }
};

// x: MB rows (row stride ldx lanes), w: NB consecutive blocks of `steps` x 16 x G elements,
// out: MB rows (stride ldo) x valid columns starting at column 0 of the first block.
// Prefetch: `lines` 64-byte lines from `ahead` into L2, `per_step` of them per step (none where ahead is null).
template <typename T, int MB, int NB>
static inline void tile(const typename T::Lane* __restrict x, int64_t ldx, const typename T::Elem* __restrict w,
                        int64_t steps, const uint16_t* __restrict scale, const typename T::Out* __restrict bias,
                        typename T::Out* __restrict out, int64_t ldo, int64_t valid, const char* ahead,
                        int64_t per_step, int64_t lines) {
  constexpr int64_t kStep = kBlock * T::kGroup;  // weight elements per step and block (one 64-byte vector)
  __m512 acc[MB][NB];
#pragma GCC unroll 14
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 2
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_setzero_ps();
  const int64_t block_elems = steps * kStep;
  for (int64_t p = 0; p < steps; ++p) {
    typename T::Vec wv[NB];
#pragma GCC unroll 2
    for (int j = 0; j < NB; ++j) wv[j] = T::load(w + j * block_elems + p * kStep);
    if (ahead != nullptr)
      for (int64_t l = p * per_step; l < std::min(lines, (p + 1) * per_step); ++l) sglkit::vec::prefetch_l2(ahead + 64 * l);
#pragma GCC unroll 14
    for (int m = 0; m < MB; ++m) {
      const typename T::Lane xv = x[m * ldx + p];
#pragma GCC unroll 2
      for (int j = 0; j < NB; ++j) acc[m][j] = T::fma(acc[m][j], wv[j], xv);
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NB; ++j) {
    const int64_t cols = valid - j * kBlock;
    if (cols <= 0) break;
    const __mmask16 mask = cols >= kBlock ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
    const __m512 b = bias ? T::load_bias(bias + j * kBlock, mask) : _mm512_setzero_ps();
    if (scale != nullptr) {  // int8: sum(x q) * scale[n] (+ bias)
      const __m512 sc = load_bf16_as_fp32(scale + j * kBlock, mask);
#pragma GCC unroll 14
      for (int m = 0; m < MB; ++m) acc[m][j] = _mm512_mul_ps(acc[m][j], sc);
    }
#pragma GCC unroll 14
    for (int m = 0; m < MB; ++m) T::store(out + m * ldo + j * kBlock, _mm512_add_ps(acc[m][j], b), mask);
  }
}

// All row tiles of one pair (or one) of blocks; `next`, `next_bytes`: the weights the thread runs next (or null),
// which the tiles after the first prefetch.
template <typename T, int NB>
static void row_tiles(const typename T::Lane* x, int64_t M, int64_t ldx, const typename T::Elem* w, int64_t steps,
                      const uint16_t* scale, const typename T::Out* bias, typename T::Out* out, int64_t ldo,
                      int64_t valid, const char* next, int64_t next_bytes) {
  const int64_t later_tiles = (std::max<int64_t>(M - kMaxRows, 0) + kMaxRows - 1) / kMaxRows;
  const bool prefetch = next != nullptr && M - kMaxRows >= kMinPrefetchRows &&
                        kMaxRows * ldx * static_cast<int64_t>(sizeof(typename T::Lane)) <= kPrefetchMaxTileX;
  const int64_t lines = prefetch ? (next_bytes + 63) / 64 : 0;
  const int64_t per_step = later_tiles > 0 ? (lines + later_tiles * steps - 1) / (later_tiles * steps) : 0;
  int64_t fetched = 0;  // lines of `next` prefetched so far
  // the prefetch arguments of the tile starting at row m
  auto ahead = [&](int64_t m) { return m > 0 && fetched < lines ? next + 64 * fetched : nullptr; };
  int64_t m = 0;
  for (; m + kMaxRows <= M; m += kMaxRows) {
    tile<T, kMaxRows, NB>(x + m * ldx, ldx, w, steps, scale, bias, out + m * ldo, ldo, valid, ahead(m), per_step,
                          lines - fetched);
    if (m > 0) fetched = std::min(lines, fetched + per_step * steps);
  }
  const typename T::Lane* xr = x + m * ldx;
  typename T::Out* o = out + m * ldo;
  const char* tail_ahead = ahead(m);
  switch (M - m) {
#define SGLKIT_TAIL(R) \
  case R:              \
    tile<T, R, NB>(xr, ldx, w, steps, scale, bias, o, ldo, valid, tail_ahead, per_step, lines - fetched); \
    break;
    SGLKIT_TAIL(1) SGLKIT_TAIL(2) SGLKIT_TAIL(3) SGLKIT_TAIL(4) SGLKIT_TAIL(5) SGLKIT_TAIL(6)
    SGLKIT_TAIL(7) SGLKIT_TAIL(8) SGLKIT_TAIL(9) SGLKIT_TAIL(10) SGLKIT_TAIL(11) SGLKIT_TAIL(12) SGLKIT_TAIL(13)
#undef SGLKIT_TAIL
    default:
      break;
  }
}

// All output blocks of one call, split over ATen's threads. x: [M, K] as lanes, w: [blocks, K/G, 16, G].
template <typename T>
static void run(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& scales, const torch::Tensor& bias,
                torch::Tensor& out, int64_t n) {
  const int64_t M = x.size(0), blocks = w.size(0), steps = w.size(1);
  const auto* xp = reinterpret_cast<const typename T::Lane*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const typename T::Elem*>(w.data_ptr());
  const auto* bp = bias.defined() ? reinterpret_cast<const typename T::Out*>(bias.data_ptr()) : nullptr;
  const auto* sp = scales.defined() ? reinterpret_cast<const uint16_t*>(scales.data_ptr()) : nullptr;
  auto* op = reinterpret_cast<typename T::Out*>(out.data_ptr());
  const int64_t block_elems = steps * kBlock * T::kGroup;
  const int64_t groups = (blocks + kMaxBlocks - 1) / kMaxBlocks;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t b0 = g * kMaxBlocks;
      const int64_t col = b0 * kBlock;
      const int64_t valid = std::min<int64_t>(n - col, kMaxBlocks * kBlock);
      const auto* wg = wp + b0 * block_elems;
      const auto* bg = bp ? bp + col : nullptr;
      const uint16_t* sg = sp ? sp + col : nullptr;
      // the thread's next pair of blocks (the last pair may be a single block)
      const int64_t next_blocks = g + 1 < g1 ? std::min<int64_t>(kMaxBlocks, blocks - b0 - kMaxBlocks) : 0;
      const char* next = next_blocks > 0 ? reinterpret_cast<const char*>(wg + kMaxBlocks * block_elems) : nullptr;
      const int64_t next_bytes = next_blocks * block_elems * static_cast<int64_t>(sizeof(typename T::Elem));
      if (b0 + kMaxBlocks <= blocks)
        row_tiles<T, kMaxBlocks>(xp, M, steps, wg, steps, sg, bg, op + col, n, valid, next, next_bytes);
      else
        row_tiles<T, 1>(xp, M, steps, wg, steps, sg, bg, op + col, n, valid, nullptr, 0);
    }
  });
}

#endif  // SGLKIT_BLOCKED_GEMM

}  // namespace

namespace sglkit {

// Which weight dtypes this build (this CPU) runs: "bfloat16" and "int8" (bfloat16 x) need AVX512-BF16,
// "float32" AVX-512F/BW/VL.
bool gemm_supported(const std::string& dtype) {
#ifdef SGLKIT_BLOCKED_GEMM
  if (dtype == "float32") return true;
#endif
#ifdef SGLKIT_BLOCKED_GEMM_BF16
  if (dtype == "bfloat16" || dtype == "int8") return true;
#endif
  return false;
}

// x: [M, K] (K = steps * G), w: [ceil(N/16), K/G, 16, G], bias: [N] or None -> [M, N]. w of x's dtype, or int8
// (G = 2) with scales [N] bfloat16 and x / bias / out bfloat16: out = (x q^T) * scales + bias.
torch::Tensor blocked_linear(const torch::Tensor& x, const torch::Tensor& w, int64_t n,
                             const c10::optional<torch::Tensor>& bias, const c10::optional<torch::Tensor>& scales) {
  const bool int8 = w.scalar_type() == at::kChar;
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || int8 || w.scalar_type() == at::kFloat, "blocked_linear: bfloat16, int8 or float32 weights");
  const char* name = int8 ? "int8" : bf16 ? "bfloat16" : "float32";
  TORCH_CHECK(gemm_supported(name), "blocked_linear: no kernel for ", name, " weights in this CPU's build");
  const int64_t group = bf16 || int8 ? 2 : 1;
  const auto x_dtype = int8 ? at::kBFloat16 : w.scalar_type();
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == x_dtype && x.device().is_cpu(),
              "x: [M, K] on CPU, ", int8 ? "bfloat16 for int8 weights" : "of the weight's dtype");
  TORCH_CHECK(w.dim() == 4 && w.size(2) == kBlock && w.size(3) == group, "w: [N/16, K/", group, ", 16, ", group, "]");
  const int64_t M = x.size(0), K = x.size(1), blocks = w.size(0);
  TORCH_CHECK(K == group * w.size(1), "x has ", K, " columns, the weight ", group * w.size(1));
  TORCH_CHECK(n > (blocks - 1) * kBlock && n <= blocks * kBlock, "n=", n, " does not match ", blocks, " blocks");
  torch::Tensor sc;
  if (int8) {
    TORCH_CHECK(scales.has_value() && scales->scalar_type() == at::kBFloat16 && scales->numel() == n,
                "int8 weights need scales: [N] bfloat16");
    sc = scales->contiguous();
  }
  const torch::Tensor xc = x.contiguous();
  const torch::Tensor wc = w.contiguous();
  torch::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    bc = bias->contiguous();
    TORCH_CHECK(bc.numel() == n && bc.scalar_type() == x_dtype, "bias: [N] of x's dtype");
  }
  torch::Tensor out = torch::empty({M, n}, x.options());
  if (M == 0) return out;
#ifdef SGLKIT_BLOCKED_GEMM
  if (!bf16 && !int8) run<F32>(xc, wc, sc, bc, out, n);
#endif
#ifdef SGLKIT_BLOCKED_GEMM_BF16
  if (bf16) run<BF16>(xc, wc, sc, bc, out, n);
  if (int8) run<I8>(xc, wc, sc, bc, out, n);
#endif
  return out;
}

}  // namespace sglkit
