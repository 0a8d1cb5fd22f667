// Model layers, CPU: decode attention read straight from the paged KV pool (one query token per request).
// Called by the torch_native backend's forward_decode (sglkit/layers/cpu_kernels/decode_attention.py) and by the
// decode stack (decode_stack.cpp); bound to Python in module.cpp.
//
// One task is a request and a range of its KV heads (at most 16 query heads: one vector of scores per token).
// Its KV slots are its row of the request-to-token table (req_to_token[req_pool_indices[b], :seq_lens[b]]); every
// K and V row is read once, in place, from the pool: no gathered or padded copy, no per-step index tensors.
//   1. Scores, token by token: the task's part of the token's K row is read front to back and dotted with each
//      query head of the task (bfloat16 pairs by vdpbf16ps where the CPU has AVX512-BF16, else FMAs), and the
//      16 per-head partial sums are reduced together into one vector of scores, one lane per query head.
//   2. Softmax per lane (query head) over the tokens: max, exp, sum.
//   3. P.V in tiles of 16 tokens, per KV head, with that head's query heads' accumulators in registers
//      (bfloat16 V splits into its even and odd elements, two shifts, instead of a widening per 16 values).
// Memory: the slots come through the table, so the hardware prefetcher cannot follow them. The scores pass
// prefetches each K row kAheadK tokens ahead and the V rows into L2 (the last of them, up to kVBudget bytes, as
// it ends; the V pass then keeps that distance), and the V pass prefetches the first K rows of the thread's next
// task. Measured on 32 requests x 192 tokens, 32 layers of the 360M shape (bfloat16, engine slot layout), in one
// process: 10.0-10.1 ms a step against 14.8-15.0 ms for the previous kernel (one task per (request, KV head));
// a loop that only reads the same rows takes 7.8-9.5 ms (docs/cpu.md).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SGLKIT_DECODE_ATTENTION 1
#include "vec16.h"
#endif

namespace {

constexpr int64_t kMaxGroup = 16;     // query heads per KV head
constexpr int64_t kTaskHeads = 16;    // query heads per task: lanes of a score vector
constexpr int64_t kTile = 16;         // tokens per P.V tile
constexpr int64_t kAheadK = 8;        // K rows prefetched ahead in the scores pass
constexpr int64_t kVBudget = 256 * 1024;  // bytes of V rows prefetched before the V pass reads them
constexpr int64_t kAccRegs = 24;      // accumulator registers of a P.V tile

#ifdef SGLKIT_DECODE_ATTENTION
using namespace sglkit::vec;

// Rows of T: R raw 512-bit vectors per head of D; scores by dot(); V as A float vectors per head (A / R parts of
// each raw vector).
template <typename T, int64_t D>
struct Rows;

template <int64_t D>
struct Rows<float, D> {
  static constexpr int64_t R = D / kLanes, A = R;
  static inline __m512i load(const float* p, int64_t r) { return _mm512_loadu_si512(p + r * kLanes); }
  static inline __m512 dot(__m512 acc, __m512i q, __m512i k) {
    return _mm512_fmadd_ps(_mm512_castsi512_ps(q), _mm512_castsi512_ps(k), acc);
  }
  static inline __m512 part(__m512i raw, int64_t) { return _mm512_castsi512_ps(raw); }
  // out[0:D] = acc * inv
  static inline void store(float* out, const float* acc, __m512 inv) {
    for (int64_t r = 0; r < R; ++r) _mm512_storeu_ps(out + r * kLanes, _mm512_mul_ps(_mm512_loadu_ps(acc + r * kLanes), inv));
  }
};

// bfloat16: raw vector r holds elements [32r, 32r + 32) (masked past D); V's accumulators hold the even and the
// odd elements of each raw vector apart, recombined by the store.
template <int64_t D>
struct Rows<c10::BFloat16, D> {
  static constexpr int64_t R = (D + 31) / 32, A = 2 * R;
  static inline __mmask32 mask(int64_t r) {
    const int64_t n = D - 32 * r;
    return n >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << n) - 1);
  }
  static inline __m512i load(const c10::BFloat16* p, int64_t r) { return _mm512_maskz_loadu_epi16(mask(r), p + 32 * r); }
  static inline __m512 even(__m512i raw) { return _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16)); }
  static inline __m512 odd(__m512i raw) {
    return _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static inline __m512 dot(__m512 acc, __m512i q, __m512i k) {
#ifdef __AVX512BF16__
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(q), reinterpret_cast<__m512bh>(k));
#else
    return _mm512_fmadd_ps(odd(q), odd(k), _mm512_fmadd_ps(even(q), even(k), acc));
#endif
  }
  static inline __m512 part(__m512i raw, int64_t s) { return s == 0 ? even(raw) : odd(raw); }
  static inline void store(c10::BFloat16* out, const float* acc, __m512 inv) {
    for (int64_t r = 0; r < R; ++r) {
      const __m512i e = bf16_rounded_bits(_mm512_mul_ps(_mm512_loadu_ps(acc + 2 * r * kLanes), inv));
      const __m512i o = bf16_rounded_bits(_mm512_mul_ps(_mm512_loadu_ps(acc + (2 * r + 1) * kLanes), inv));
      const __m512i bits = _mm512_or_si512(_mm512_and_si512(o, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))),
                                           _mm512_srli_epi32(e, 16));
      _mm512_mask_storeu_epi16(out + 32 * r, mask(r), bits);
    }
  }
};

// a[0..15] -> one vector whose lane i is the sum of a[i]'s lanes.
static inline __m512 sum16(const __m512* a) {
  __m512 s1[8], s2[4], s3[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] of x = a[2i], y = a[2i+1]
    s1[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: that lane's sums of a[4i .. 4i+3]
    const __m512d u = _mm512_castps_pd(s1[2 * i]), w = _mm512_castps_pd(s1[2 * i + 1]);
    s2[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(u, w)), _mm512_castpd_ps(_mm512_unpackhi_pd(u, w)));
  }
  for (int i = 0; i < 2; ++i)  // 128-bit lanes (0+1, 2+3) of s2[2i], then of s2[2i+1]
    s3[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2 * i], s2[2 * i + 1], 0x88),
                          _mm512_shuffle_f32x4(s2[2 * i], s2[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s3[0], s3[1], 0x88), _mm512_shuffle_f32x4(s3[0], s3[1], 0xDD));
}

// acc (GB query heads x A vectors, in memory) += sum over the tile's n tokens of p[i * kTaskHeads + g] * V row i.
template <typename T, int64_t D, int64_t GB>
static void tile_pv(float* acc_mem, const float* p, const T* const* rows, int64_t col, int64_t n) {
  using Row = Rows<T, D>;
  constexpr int64_t A = Row::A, parts = A / Row::R;
  // every loop over a register array fully unrolled: GCC otherwise keeps acc[][] on the stack
  __m512 acc[GB][A];
#pragma GCC unroll 6
  for (int64_t g = 0; g < GB; ++g)
#pragma GCC unroll 16
    for (int64_t a = 0; a < A; ++a) acc[g][a] = _mm512_loadu_ps(acc_mem + (g * A + a) * kLanes);
  for (int64_t i = 0; i < n; ++i) {
    const T* v = rows[i] + col;
    __m512 vv[A];
#pragma GCC unroll 16
    for (int64_t r = 0; r < Row::R; ++r) {
      const __m512i raw = Row::load(v, r);
#pragma GCC unroll 2
      for (int64_t s = 0; s < parts; ++s) vv[r * parts + s] = Row::part(raw, s);
    }
#pragma GCC unroll 6
    for (int64_t g = 0; g < GB; ++g) {
      const __m512 pg = _mm512_set1_ps(p[i * kTaskHeads + g]);
#pragma GCC unroll 16
      for (int64_t a = 0; a < A; ++a) acc[g][a] = _mm512_fmadd_ps(pg, vv[a], acc[g][a]);
    }
  }
#pragma GCC unroll 6
  for (int64_t g = 0; g < GB; ++g)
#pragma GCC unroll 16
    for (int64_t a = 0; a < A; ++a) _mm512_storeu_ps(acc_mem + (g * A + a) * kLanes, acc[g][a]);
}

// Query heads per P.V tile for head dim D: as many as kAccRegs accumulators hold, at most 6.
template <typename T, int64_t D>
constexpr int64_t kHeadsPerTile = std::min<int64_t>(6, std::max<int64_t>(1, kAccRegs / Rows<T, D>::A));

template <typename T, int64_t D>
static void tile_pv_heads(int64_t heads, float* acc_mem, const float* p, const T* const* rows, int64_t col, int64_t n) {
  switch (heads) {
#define SGLKIT_TILE_HEADS(G)                                                                   \
  case G:                                                                                      \
    if constexpr (G <= kHeadsPerTile<T, D>) return tile_pv<T, D, G>(acc_mem, p, rows, col, n); \
    break;
    SGLKIT_TILE_HEADS(1) SGLKIT_TILE_HEADS(2) SGLKIT_TILE_HEADS(3) SGLKIT_TILE_HEADS(4) SGLKIT_TILE_HEADS(5)
    SGLKIT_TILE_HEADS(6)
#undef SGLKIT_TILE_HEADS
    default:
      break;
  }
  TORCH_CHECK(false, "decode_attention: ", heads, " heads in one P.V tile");
}

// One task: request b's KV heads [h0, h1).
struct Task {
  int64_t b, h0, h1;
};

// Per-thread buffers: P [len][kTaskHeads] (scores, then softmax numerators), the P.V accumulators.
struct Scratch {
  std::vector<float> p, acc;
};

template <typename T, typename I, int64_t D>
struct Kernel {
  using Row = Rows<T, D>;
  const T *q, *k, *v;                        // q [B, Hq, D]; pool rows at slot * kv_stride
  T* out;                                    // [B, Hq, D]
  const I* table;                            // request-to-token rows, ld apart
  const int64_t *rows, *lens;                // per request
  int64_t heads, group, kv_stride, ld;
  float scale;

  const I* slots(const Task& t) const { return table + rows[t.b] * ld; }
  const T* row(const T* base, const I* s, int64_t i, const Task& t) const {
    return base + static_cast<int64_t>(s[i]) * kv_stride + t.h0 * D;
  }
  int64_t row_lines(const Task& t) const { return ((t.h1 - t.h0) * D * static_cast<int64_t>(sizeof(T)) + 63) / 64; }
  int64_t v_ahead(const Task& t) const {  // V rows prefetched before the V pass reads them
    return std::max<int64_t>(kTile, kVBudget / (row_lines(t) * 64));
  }

  void operator()(const Task& t, const Task* next, Scratch& s) const {
    const I* sl = slots(t);
    const int64_t len = lens[t.b], task_heads = (t.h1 - t.h0) * group, lines = row_lines(t);
    const int64_t ahead_v = std::min(len, v_ahead(t));
    const T* qt = q + (t.b * heads + t.h0 * group) * D;
    int64_t col_of[kTaskHeads];  // query head j of the task -> its KV head's offset in the task's row part
    for (int64_t j = 0; j < kTaskHeads; ++j) col_of[j] = j < task_heads ? (j / group) * D : 0;
    s.p.resize(len * kTaskHeads);
    float* p = s.p.data();
    // 1. scores[token][j] = scale * q_j . k_token
    const __m512 vscale = _mm512_set1_ps(scale);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < len; ++i) {
      if (i + kAheadK < len) prefetch_lines_l2(row(k, sl, i + kAheadK, t), lines);
      if (i >= len - ahead_v) prefetch_lines_l2(row(v, sl, i - (len - ahead_v), t), lines);
      const T* kr = row(k, sl, i, t);
      __m512 acc[kTaskHeads];
#pragma GCC unroll 16
      for (int64_t j = 0; j < kTaskHeads; ++j) {
        acc[j] = _mm512_setzero_ps();
        if (j < task_heads)
#pragma GCC unroll 16
          for (int64_t r = 0; r < Row::R; ++r)
            acc[j] = Row::dot(acc[j], Row::load(qt + j * D, r), Row::load(kr + col_of[j], r));
      }
      const __m512 sc = _mm512_mul_ps(sum16(acc), vscale);
      vmax = _mm512_max_ps(vmax, sc);
      _mm512_storeu_ps(p + i * kTaskHeads, sc);
    }
    // 2. softmax numerators per lane, in place
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t i = 0; i < len; ++i) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + i * kTaskHeads), vmax));
      _mm512_storeu_ps(p + i * kTaskHeads, e);
      vsum = _mm512_add_ps(vsum, e);
    }
    // 3. P.V by tiles; meanwhile the V rows ahead_v on and the next task's first K rows come into L2
    constexpr int64_t A = Row::A, GB = kHeadsPerTile<T, D>;
    s.acc.assign(task_heads * A * kLanes, 0.0f);
    const int64_t tiles = (len + kTile - 1) / kTile;
    const I* next_slots = next ? slots(*next) : nullptr;
    const int64_t next_rows = next ? std::min(lens[next->b], v_ahead(*next)) : 0;
    const int64_t next_per_tile = (next_rows + tiles - 1) / tiles, next_lines = next ? row_lines(*next) : 0;
    const T* tile_rows[kTile];
    for (int64_t i0 = 0, tile = 0; i0 < len; i0 += kTile, ++tile) {
      const int64_t n = std::min(kTile, len - i0);
      for (int64_t i = i0 + ahead_v; i < std::min(len, i0 + ahead_v + kTile); ++i)
        prefetch_lines_l2(row(v, sl, i, t), lines);
      for (int64_t i = tile * next_per_tile; i < std::min(next_rows, (tile + 1) * next_per_tile); ++i)
        prefetch_lines_l2(row(k, next_slots, i, *next), next_lines);
      for (int64_t i = 0; i < n; ++i) tile_rows[i] = row(v, sl, i0 + i, t);
      for (int64_t h = 0; h < t.h1 - t.h0; ++h)
        for (int64_t g0 = 0; g0 < group; g0 += GB) {
          const int64_t j = h * group + g0;
          tile_pv_heads<T, D>(std::min(GB, group - g0), s.acc.data() + j * A * kLanes,
                              p + i0 * kTaskHeads + j, tile_rows, h * D, n);
        }
    }
    alignas(64) float inv[kTaskHeads];
    _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), vsum));
    T* ot = out + (t.b * heads + t.h0 * group) * D;
    for (int64_t j = 0; j < task_heads; ++j) Row::store(ot + j * D, s.acc.data() + j * A * kLanes, _mm512_set1_ps(inv[j]));
  }
};

template <typename T, typename I, int64_t D>
static void run(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                const torch::Tensor& req_to_token, const int64_t* rows, const int64_t* lens, double scale,
                torch::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), kv_heads = k_buf.size(1), group = heads / kv_heads;
  const Kernel<T, I, D> kernel{q.data_ptr<T>(), k_buf.data_ptr<T>(), v_buf.data_ptr<T>(), out.data_ptr<T>(),
                               req_to_token.data_ptr<I>(), rows, lens, heads, group, kv_heads * D,
                               req_to_token.stride(0), static_cast<float>(scale)};
  // KV heads per task: at most kTaskHeads query heads, and at least ~4 tasks a thread where the batch is small
  const int64_t threads = at::get_num_threads();
  const int64_t max_per = std::max<int64_t>(1, kTaskHeads / group);
  const int64_t want_tasks = std::max<int64_t>(1, (4 * threads + batch - 1) / batch);
  const int64_t per = std::max<int64_t>(1, std::min(max_per, (kv_heads + want_tasks - 1) / want_tasks));
  std::vector<Task> tasks;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < kv_heads; h += per) tasks.push_back({b, h, std::min(kv_heads, h + per)});
  // longest requests first, handed out through a counter; a thread claims its next task before the V pass of
  // the current one, so that pass can prefetch the next task's K rows
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& a, const Task& b) { return lens[a.b] > lens[b.b]; });
  const int64_t count = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, std::min(threads, count), 1, [&](int64_t, int64_t) {
    thread_local Scratch s;  // kept between calls: no allocation per layer
    int64_t cur = counter.fetch_add(1);
    while (cur < count) {
      const int64_t nxt = counter.fetch_add(1);
      kernel(tasks[cur], nxt < count ? &tasks[nxt] : nullptr, s);
      cur = nxt;
    }
  });
}

template <typename T, typename I>
static bool dispatch_head_dim(int64_t d, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& table, const int64_t* rows, const int64_t* lens, double scale,
                              torch::Tensor& out) {
  switch (d) {
#define SGLKIT_HEAD_DIM(D)                                   \
  case D:                                                    \
    run<T, I, D>(q, k, v, table, rows, lens, scale, out);    \
    return true;
    SGLKIT_HEAD_DIM(16) SGLKIT_HEAD_DIM(32) SGLKIT_HEAD_DIM(48) SGLKIT_HEAD_DIM(64) SGLKIT_HEAD_DIM(80)
    SGLKIT_HEAD_DIM(96) SGLKIT_HEAD_DIM(112) SGLKIT_HEAD_DIM(128) SGLKIT_HEAD_DIM(256)
#undef SGLKIT_HEAD_DIM
    default:
      return false;
  }
}

#endif  // SGLKIT_DECODE_ATTENTION

}  // namespace

namespace sglkit {

// Whether decode_attention takes this head dim and group size (query heads per KV head) in this build.
bool decode_attention_supported(int64_t head_dim, int64_t group) {
#ifdef SGLKIT_DECODE_ATTENTION
  const bool dim_ok = (head_dim % 16 == 0 && head_dim <= 128) || head_dim == 256;
  return dim_ok && group >= 1 && group <= kMaxGroup;
#else
  (void)head_dim;
  (void)group;
  return false;
#endif
}

// q: [B, Hq, D]; k_buf, v_buf: [S, Hkv, D] (q's dtype: float32 or bfloat16); req_to_token: [R, C] int32/int64;
// req_pool_indices, seq_lens: [B] int64 -> [B, Hq, D] in q's dtype.
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                               const torch::Tensor& req_to_token, const torch::Tensor& req_pool_indices,
                               const torch::Tensor& seq_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_buf.dim() == 3 && v_buf.dim() == 3, "q [B, Hq, D], k/v [S, Hkv, D]");
  TORCH_CHECK(q.device().is_cpu() && k_buf.device().is_cpu() && v_buf.device().is_cpu(), "CPU tensors");
  TORCH_CHECK(k_buf.scalar_type() == q.scalar_type() && v_buf.scalar_type() == q.scalar_type(),
              "q, k and v of one dtype");
  TORCH_CHECK(k_buf.is_contiguous() && v_buf.is_contiguous() && req_to_token.stride(1) == 1,
              "contiguous KV buffers and table rows");
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(2), kv_heads = k_buf.size(1);
  TORCH_CHECK(k_buf.size(2) == d && v_buf.sizes() == k_buf.sizes(), "K/V head dim ", k_buf.size(2), " != ", d);
  TORCH_CHECK(heads % kv_heads == 0, heads, " query heads over ", kv_heads, " KV heads");
  TORCH_CHECK(decode_attention_supported(d, heads / kv_heads), "unsupported head dim ", d, " or group");
  TORCH_CHECK(req_pool_indices.numel() == batch && seq_lens.numel() == batch, "one row and length per request");
  const torch::Tensor qc = q.contiguous();
  const torch::Tensor rows = req_pool_indices.to(torch::kLong).contiguous();
  const torch::Tensor lens = seq_lens.to(torch::kLong).contiguous();
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= req_to_token.size(1) && rp[b] >= 0 && rp[b] < req_to_token.size(0),
                "request ", b, ": row ", rp[b], ", length ", lp[b], " outside the table");
  torch::Tensor out = torch::empty_like(qc);
  bool done = false;
#ifdef SGLKIT_DECODE_ATTENTION
  const bool i32 = req_to_token.scalar_type() == at::kInt;
  TORCH_CHECK(i32 || req_to_token.scalar_type() == at::kLong, "req_to_token: int32 or int64");
  if (q.scalar_type() == at::kFloat)
    done = i32 ? dispatch_head_dim<float, int32_t>(d, qc, k_buf, v_buf, req_to_token, rp, lp, scale, out)
               : dispatch_head_dim<float, int64_t>(d, qc, k_buf, v_buf, req_to_token, rp, lp, scale, out);
  else if (q.scalar_type() == at::kBFloat16)
    done = i32 ? dispatch_head_dim<c10::BFloat16, int32_t>(d, qc, k_buf, v_buf, req_to_token, rp, lp, scale, out)
               : dispatch_head_dim<c10::BFloat16, int64_t>(d, qc, k_buf, v_buf, req_to_token, rp, lp, scale, out);
#endif
  TORCH_CHECK(done, "decode_attention: no kernel for ", q.scalar_type(), " with head dim ", d);
  return out;
}

}  // namespace sglkit
