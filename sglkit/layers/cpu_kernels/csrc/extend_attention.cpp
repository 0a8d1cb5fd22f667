// Model layers, CPU: causal prefill ("extend") attention read straight from the paged KV pool, flash style.
// Called by the torch_native backend's forward_extend (sglkit/layers/cpu_kernels/extend_attention.py); bound to
// Python in module.cpp.
//
// Request b has prefix_lens[b] tokens already cached and extend_lens[b] new ones (their K/V already written to
// the pool); new token j sits at position prefix + j and attends to the keys at positions 0 .. prefix + j, whose
// slots are req_to_token[req_pool_indices[b], :]. One task is (request, KV head, block of kQueryTokens new
// tokens): its M = tokens x G query rows (the G query heads of that KV head share every K/V load) stream the
// keys in blocks of kKeys with an online softmax (running max and sum per row), so no [M, seq] score matrix and no
// gathered K/V copy exists. Both products are register-tiled dot products over 32-bit "units": a pair of
// bfloat16 (vdpbf16ps, AVX512-BF16) or one float32 (FMA). Per key block, K is staged as [units][kKeys] and V as
// [key units][D]; for bfloat16, P is rounded to bfloat16 for the P.V product (as flash attention kernels do).
// Tasks go largest first to the threads through an atomic counter (causal blocks differ in cost).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SGLKIT_EXTEND_ATTENTION 1
#include "vec16.h"
#endif

namespace {

constexpr int64_t kKeys = 32;                 // keys per block (64 measured no faster)
constexpr int64_t kKeyVecs = kKeys / 16;  // vectors of scores per row and block
constexpr int64_t kQueryTokens = 32;   // new tokens per task
constexpr int64_t kRowTile = 8;        // query rows per score tile
constexpr int64_t kMaxGroup = 16;

#ifdef SGLKIT_EXTEND_ATTENTION
using namespace sglkit::vec;

// The dot step over 32-bit units: bfloat16 pairs (vdpbf16ps) or float32 (FMA).
template <typename T>
struct Units;
template <>
struct Units<float> {
  static constexpr int64_t kPer = 1;  // elements per unit
  static inline __m512 dot(__m512 acc, __m512i a, __m512i b) {
    return _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), acc);
  }
};
#ifdef __AVX512BF16__
template <>
struct Units<c10::BFloat16> {
  static constexpr int64_t kPer = 2;
  static inline __m512 dot(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
  }
};
#endif

// Per-thread buffers of one task.
struct Scratch {
  std::vector<uint32_t> q;       // [M padded, D units]
  std::vector<uint32_t> k;       // [D units, kKeys]: unit u of key n at [u * kKeys + n]
  std::vector<uint32_t> v;       // [kKeys units, D]: for bfloat16 (V[2i][d], V[2i+1][d]) at [i * D + d]
  std::vector<uint32_t> p;       // [M padded, kKeys units]
  std::vector<float> s;          // [M padded, kKeys]
  std::vector<float> o;          // [M padded, D]
  std::vector<float> row_max, row_sum;
};

// K rows of keys [k0, k0 + n) (n <= kKeys; missing keys zero) -> scratch.k as [units][kKeys].
template <typename T, typename I>
void stage_k(const T* k_buf, int64_t kv_stride, const I* slots, int64_t k0, int64_t n, int64_t d, Scratch& s) {
  const int64_t units = d / Units<T>::kPer;
  for (int64_t key = 0; key < kKeys; ++key) {
    if (key >= n) {
      for (int64_t u = 0; u < units; ++u) s.k[u * kKeys + key] = 0;
      continue;
    }
    const uint32_t* row = reinterpret_cast<const uint32_t*>(k_buf + static_cast<int64_t>(slots[k0 + key]) * kv_stride);
    for (int64_t u = 0; u < units; ++u) s.k[u * kKeys + key] = row[u];
  }
}

// V rows of keys [k0, k0 + n) -> scratch.v as [key units][D] (bfloat16: rows 2i and 2i+1 interleaved).
template <typename T, typename I>
void stage_v(const T* v_buf, int64_t kv_stride, const I* slots, int64_t k0, int64_t n, int64_t d, Scratch& s) {
  if constexpr (Units<T>::kPer == 1) {
    for (int64_t key = 0; key < kKeys; ++key) {
      float* dst = reinterpret_cast<float*>(s.v.data() + key * d);
      if (key < n) std::memcpy(dst, v_buf + static_cast<int64_t>(slots[k0 + key]) * kv_stride, d * sizeof(float));
      else std::memset(dst, 0, d * sizeof(float));
    }
  } else {
    // vpermt2w indices: out[2t] = a[t], out[2t + 1] = b[t], for t in [0, 16) (lo) and [16, 32) (hi)
    alignas(64) uint16_t lo_idx[32], hi_idx[32];
    for (int t = 0; t < 16; ++t) {
      lo_idx[2 * t] = t, lo_idx[2 * t + 1] = 32 + t;
      hi_idx[2 * t] = 16 + t, hi_idx[2 * t + 1] = 48 + t;
    }
    const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
    for (int64_t i = 0; i < kKeys / 2; ++i) {
      const int64_t a = 2 * i, b = 2 * i + 1;
      const T* ra = a < n ? v_buf + static_cast<int64_t>(slots[k0 + a]) * kv_stride : nullptr;
      const T* rb = b < n ? v_buf + static_cast<int64_t>(slots[k0 + b]) * kv_stride : nullptr;
      uint32_t* dst = s.v.data() + i * d;
      for (int64_t c = 0; c < d; c += 32) {
        const __mmask32 m = d - c >= 32 ? 0xFFFFFFFFu : ((1u << (d - c)) - 1);
        const __m512i va = ra ? _mm512_maskz_loadu_epi16(m, ra + c) : _mm512_setzero_si512();
        const __m512i vb = rb ? _mm512_maskz_loadu_epi16(m, rb + c) : _mm512_setzero_si512();
        const __m512i p0 = _mm512_permutex2var_epi16(va, lo, vb), p1 = _mm512_permutex2var_epi16(va, hi, vb);
        const int64_t left = d - c;  // units (d values) of this chunk
        _mm512_mask_storeu_epi32(dst + c, first_lanes(left), p0);
        if (left > 16) _mm512_mask_storeu_epi32(dst + c + 16, first_lanes(left - 16), p1);
      }
    }
  }
}

// scores[m, 0:kKeys] = scale * q[m] . k[key] for rows [m0, m0 + kRowTile).
template <typename T>
void score_tile(const Scratch& s, int64_t m0, int64_t units, float scale, float* out) {
  __m512 acc[kRowTile][kKeyVecs];
  for (int64_t r = 0; r < kRowTile; ++r)
    for (int64_t j = 0; j < kKeyVecs; ++j) acc[r][j] = _mm512_setzero_ps();
  const uint32_t* q = s.q.data() + m0 * units;
  for (int64_t u = 0; u < units; ++u) {
    __m512i kv[kKeyVecs];
    for (int64_t j = 0; j < kKeyVecs; ++j) kv[j] = _mm512_loadu_si512(s.k.data() + u * kKeys + 16 * j);
    for (int64_t r = 0; r < kRowTile; ++r) {
      const __m512i qb = _mm512_set1_epi32(static_cast<int>(q[r * units + u]));
      for (int64_t j = 0; j < kKeyVecs; ++j) acc[r][j] = Units<T>::dot(acc[r][j], qb, kv[j]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < kRowTile; ++r)
    for (int64_t j = 0; j < kKeyVecs; ++j) _mm512_storeu_ps(out + r * kKeys + 16 * j, _mm512_mul_ps(acc[r][j], sc));
}

// o[m + r, :] += p[m + r, :] . v for R consecutive rows (each V vector loaded once for all R); D = C * 16.
template <typename T, int64_t C, int64_t R>
void accumulate_rows(Scratch& s, int64_t m) {
  constexpr int64_t units = kKeys / Units<T>::kPer;
  constexpr int64_t d = C * kLanes;
  float* o = s.o.data() + m * d;
  __m512 acc[R][C];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + r * d + c * kLanes);
  const uint32_t* p = s.p.data() + m * units;
  for (int64_t u = 0; u < units; ++u) {
    __m512i pb[R];
    for (int64_t r = 0; r < R; ++r) pb[r] = _mm512_set1_epi32(static_cast<int>(p[r * units + u]));
    for (int64_t c = 0; c < C; ++c) {
      const __m512i vv = _mm512_loadu_si512(s.v.data() + u * d + c * kLanes);
      for (int64_t r = 0; r < R; ++r) acc[r][c] = Units<T>::dot(acc[r][c], pb[r], vv);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) _mm512_storeu_ps(o + r * d + c * kLanes, acc[r][c]);
}

// One task: new tokens [j0, j0 + tokens) of one request, KV head h.
template <typename T, typename I, int64_t C>
void attend_block(const T* q, int64_t q_stride, const T* k_buf, const T* v_buf, int64_t kv_stride, const I* slots,
                  int64_t prefix, int64_t j0, int64_t tokens, int64_t group, float scale, T* out, int64_t out_stride,
                  Scratch& s) {
  constexpr int64_t d = C * kLanes;
  const int64_t units = d / Units<T>::kPer, rows = tokens * group;
  const int64_t padded = (rows + kRowTile - 1) / kRowTile * kRowTile;
  s.q.assign(padded * units, 0);
  for (int64_t j = 0; j < tokens; ++j)  // row m = j * group + g
    std::memcpy(s.q.data() + j * group * units, q + (j0 + j) * q_stride, group * d * sizeof(T));
  s.o.assign(padded * d, 0.0f);
  s.row_max.assign(padded, -INFINITY);
  s.row_sum.assign(padded, 0.0f);
  const int64_t keys = prefix + j0 + tokens;  // the last token's position + 1
  for (int64_t k0 = 0; k0 < keys; k0 += kKeys) {
    const int64_t n = std::min(kKeys, keys - k0);
    stage_k<T, I>(k_buf, kv_stride, slots, k0, n, d, s);
    stage_v<T, I>(v_buf, kv_stride, slots, k0, n, d, s);
    for (int64_t m0 = 0; m0 < padded; m0 += kRowTile) score_tile<T>(s, m0, units, scale, s.s.data() + m0 * kKeys);
    // Rows see keys up to their own position: the first `skipped` rows (all keys of the block ahead) add nothing.
    const int64_t skipped = std::min(rows, std::max<int64_t>(0, k0 - prefix - j0) * group);
    for (int64_t m = skipped; m < rows; ++m) {
      const int64_t visible = std::min<int64_t>(prefix + j0 + m / group + 1 - k0, n);  // causal: keys < visible
      float* sr = s.s.data() + m * kKeys;
      __mmask16 lanes[kKeyVecs];
      __m512 sv[kKeyVecs], e[kKeyVecs];
      __m512 vmax_block = _mm512_set1_ps(-INFINITY);
      for (int64_t j = 0; j < kKeyVecs; ++j) {
        lanes[j] = first_lanes(std::max<int64_t>(visible - 16 * j, 0));
        sv[j] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), lanes[j], _mm512_loadu_ps(sr + 16 * j));
        vmax_block = _mm512_max_ps(vmax_block, sv[j]);
      }
      const float block_max = _mm512_reduce_max_ps(vmax_block);
      const float new_max = std::max(s.row_max[m], block_max);
      const float correction = std::exp(s.row_max[m] - new_max);  // 0 on the first block (-inf)
      const __m512 vmax = _mm512_set1_ps(new_max);
      __m512 esum = _mm512_setzero_ps();
      for (int64_t j = 0; j < kKeyVecs; ++j) {
        e[j] = _mm512_maskz_mov_ps(lanes[j], exp16(_mm512_sub_ps(sv[j], vmax)));
        esum = _mm512_add_ps(esum, e[j]);
      }
      s.row_sum[m] = s.row_sum[m] * correction + _mm512_reduce_add_ps(esum);
      s.row_max[m] = new_max;
      float* orow = s.o.data() + m * d;
      if (correction != 1.0f)
        for (int64_t c = 0; c < C; ++c)
          _mm512_storeu_ps(orow + c * kLanes, _mm512_mul_ps(_mm512_loadu_ps(orow + c * kLanes), _mm512_set1_ps(correction)));
      uint32_t* pr = s.p.data() + m * (kKeys / Units<T>::kPer);
      if constexpr (Units<T>::kPer == 1) {
        for (int64_t j = 0; j < kKeyVecs; ++j) _mm512_storeu_ps(reinterpret_cast<float*>(pr) + 16 * j, e[j]);
      } else {
        for (int64_t j = 0; j < kKeyVecs; j += 2)  // keys 32 j' .. 32 j' + 31 in order, as 16 pairs
          _mm512_storeu_si512(pr + 8 * j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(e[j + 1], e[j])));
      }
    }
    constexpr int64_t kPair = C <= 8 ? 2 : 1;  // two rows' accumulators fit the 32 registers up to D = 128
    int64_t m = skipped;
    for (; m + kPair <= rows; m += kPair) accumulate_rows<T, C, kPair>(s, m);
    for (; m < rows; ++m) accumulate_rows<T, C, 1>(s, m);
  }
  for (int64_t m = 0; m < rows; ++m) {
    const __m512 inv = _mm512_set1_ps(1.0f / s.row_sum[m]);
    T* dst = out + (j0 + m / group) * out_stride + (m % group) * d;
    for (int64_t c = 0; c < C; ++c) store16(dst + c * kLanes, _mm512_mul_ps(_mm512_loadu_ps(s.o.data() + m * d + c * kLanes), inv));
  }
}

struct Task {
  int64_t b, h, j0, tokens, cost;
};

template <typename T, typename I, int64_t C>
void run(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf, const torch::Tensor& table,
         const int64_t* rows, const int64_t* prefix, const int64_t* extend, int64_t batch, double scale,
         torch::Tensor& out) {
  constexpr int64_t d = C * kLanes;
  const int64_t heads = q.size(1), kv_heads = k_buf.size(1), group = heads / kv_heads;
  const int64_t kv_stride = kv_heads * d, tok_stride = heads * d, ld = table.stride(0);
  std::vector<Task> tasks;
  std::vector<int64_t> starts(batch);
  for (int64_t b = 0, start = 0; b < batch; start += extend[b], ++b) {
    starts[b] = start;
    for (int64_t j0 = 0; j0 < extend[b]; j0 += kQueryTokens) {
      const int64_t tokens = std::min(kQueryTokens, extend[b] - j0);
      for (int64_t h = 0; h < kv_heads; ++h) tasks.push_back({b, h, j0, tokens, tokens * (prefix[b] + j0 + tokens)});
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const T* qp = q.data_ptr<T>();
  const T* kp = k_buf.data_ptr<T>();
  const T* vp = v_buf.data_ptr<T>();
  const I* tp = table.data_ptr<I>();
  T* op = out.data_ptr<T>();
  const int64_t units = d / Units<T>::kPer, max_rows = (kQueryTokens * group + kRowTile - 1) / kRowTile * kRowTile;
  std::atomic<int64_t> next{0};
  const int64_t count = static_cast<int64_t>(tasks.size());
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), count), 1, [&](int64_t, int64_t) {
    Scratch s;
    s.k.resize(units * kKeys);
    s.v.resize(kKeys / Units<T>::kPer * d);
    s.p.resize(max_rows * kKeys / Units<T>::kPer);
    s.s.resize(max_rows * kKeys);
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) {
      const Task& t = tasks[i];
      const int64_t offset = starts[t.b] * tok_stride + t.h * group * d;
      attend_block<T, I, C>(qp + offset, tok_stride, kp + t.h * d, vp + t.h * d, kv_stride, tp + rows[t.b] * ld,
                            prefix[t.b], t.j0, t.tokens, group, static_cast<float>(scale), op + offset, tok_stride, s);
    }
  });
}

template <typename T, typename I>
bool dispatch_head_dim(int64_t d, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& table, const int64_t* rows, const int64_t* prefix, const int64_t* extend,
                       int64_t batch, double scale, torch::Tensor& out) {
  switch (d) {
#define SGLKIT_HEAD_DIM(D)                                                           \
  case D:                                                                            \
    run<T, I, D / kLanes>(q, k, v, table, rows, prefix, extend, batch, scale, out); \
    return true;
    SGLKIT_HEAD_DIM(16) SGLKIT_HEAD_DIM(32) SGLKIT_HEAD_DIM(48) SGLKIT_HEAD_DIM(64) SGLKIT_HEAD_DIM(80)
    SGLKIT_HEAD_DIM(96) SGLKIT_HEAD_DIM(112) SGLKIT_HEAD_DIM(128) SGLKIT_HEAD_DIM(256)
#undef SGLKIT_HEAD_DIM
    default:
      return false;
  }
}

template <typename T>
bool dispatch(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& table,
              const int64_t* rows, const int64_t* prefix, const int64_t* extend, int64_t batch, double scale,
              torch::Tensor& out) {
  if (table.scalar_type() == at::kInt)
    return dispatch_head_dim<T, int32_t>(q.size(2), q, k, v, table, rows, prefix, extend, batch, scale, out);
  return dispatch_head_dim<T, int64_t>(q.size(2), q, k, v, table, rows, prefix, extend, batch, scale, out);
}

#endif  // SGLKIT_EXTEND_ATTENTION

}  // namespace

namespace sglkit {

// Whether extend_attention runs q/K/V of this dtype ("float32" / "bfloat16"), head dim and group in this build.
bool extend_attention_supported(const std::string& dtype, int64_t head_dim, int64_t group) {
  bool dtype_ok = false;
#ifdef SGLKIT_EXTEND_ATTENTION
  dtype_ok = dtype == "float32";
#ifdef __AVX512BF16__
  dtype_ok = dtype_ok || dtype == "bfloat16";
#endif
#endif
  const bool dim_ok = (head_dim % 16 == 0 && head_dim <= 128) || head_dim == 256;
  return dtype_ok && dim_ok && group >= 1 && group <= kMaxGroup;
}

// q: [T, Hq, D] (the new tokens of all requests, packed in request order); k_buf, v_buf: [S, Hkv, D] (q's dtype,
// the new tokens' K/V already stored); req_to_token: [R, C] int32/int64; req_pool_indices, prefix_lens,
// extend_lens: [B] -> [T, Hq, D]: causal attention of each new token over its request's cached and new keys.
torch::Tensor extend_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                               const torch::Tensor& req_to_token, const torch::Tensor& req_pool_indices,
                               const torch::Tensor& prefix_lens, const torch::Tensor& extend_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_buf.dim() == 3 && v_buf.dim() == 3, "q [T, Hq, D], k/v [S, Hkv, D]");
  TORCH_CHECK(q.device().is_cpu() && k_buf.device().is_cpu() && v_buf.device().is_cpu(), "CPU tensors");
  TORCH_CHECK(k_buf.scalar_type() == q.scalar_type() && v_buf.scalar_type() == q.scalar_type(), "q, k and v of one dtype");
  TORCH_CHECK(k_buf.is_contiguous() && v_buf.is_contiguous() && req_to_token.stride(1) == 1,
              "contiguous KV buffers and table rows");
  TORCH_CHECK(req_to_token.scalar_type() == at::kInt || req_to_token.scalar_type() == at::kLong,
              "req_to_token: int32 or int64");
  const int64_t heads = q.size(1), d = q.size(2), kv_heads = k_buf.size(1), batch = req_pool_indices.numel();
  TORCH_CHECK(k_buf.size(2) == d && v_buf.sizes() == k_buf.sizes(), "K/V head dim ", k_buf.size(2), " != ", d);
  TORCH_CHECK(heads % kv_heads == 0, heads, " query heads over ", kv_heads, " KV heads");
  const std::string dtype = q.scalar_type() == at::kBFloat16 ? "bfloat16" : q.scalar_type() == at::kFloat ? "float32" : "";
  TORCH_CHECK(extend_attention_supported(dtype, d, heads / kv_heads), "unsupported dtype, head dim ", d, " or group");
  TORCH_CHECK(prefix_lens.numel() == batch && extend_lens.numel() == batch, "one row, prefix and extend length per request");
  const torch::Tensor rows = req_pool_indices.to(torch::kLong).contiguous();
  const torch::Tensor prefix = prefix_lens.to(torch::kLong).contiguous();
  const torch::Tensor extend = extend_lens.to(torch::kLong).contiguous();
  const int64_t *rp = rows.data_ptr<int64_t>(), *pp = prefix.data_ptr<int64_t>(), *ep = extend.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(rp[b] >= 0 && rp[b] < req_to_token.size(0) && pp[b] >= 0 && ep[b] >= 0 &&
                    pp[b] + ep[b] <= req_to_token.size(1),
                "request ", b, ": row ", rp[b], ", prefix ", pp[b], ", extend ", ep[b], " outside the table");
    total += ep[b];
  }
  TORCH_CHECK(total == q.size(0), "extend lengths sum to ", total, ", q has ", q.size(0), " tokens");
  const torch::Tensor qc = q.contiguous();
  torch::Tensor out = torch::empty_like(qc);
  bool done = false;
#ifdef SGLKIT_EXTEND_ATTENTION
  if (q.scalar_type() == at::kFloat)
    done = dispatch<float>(qc, k_buf, v_buf, req_to_token, rp, pp, ep, batch, scale, out);
#ifdef __AVX512BF16__
  else
    done = dispatch<c10::BFloat16>(qc, k_buf, v_buf, req_to_token, rp, pp, ep, batch, scale, out);
#endif
#endif
  TORCH_CHECK(done, "extend_attention: no kernel for ", q.scalar_type(), " with head dim ", d);
  return out;
}

}  // namespace sglkit
