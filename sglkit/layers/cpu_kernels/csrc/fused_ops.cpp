// Model layers, CPU: the decoder layer's small ops fused into one pass each (RMSNorm / RotaryEmbedding / SiluAndMul
// / the KV pool write -> here), where eager torch runs 3 to 16 ops and as many temporaries per call. Bound to
// Python in module.cpp; called through sglkit/layers/cpu_kernels/fused_ops.py.
//
// Numerics are the torch code's (sglkit/layers/norm.py, rotary.py, activation.py): every intermediate a torch
// op would return in the input dtype is rounded to it here too (round_to), so bfloat16 results match eager torch
// up to the order of one float32 sum (RMSNorm's sum of squares) and the last bit of exp (SiLU).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SGLKIT_FUSED_OPS 1
#include "vec16.h"
#endif

namespace {

constexpr int64_t kGrainElements = 16384;  // elements per thread chunk: smaller calls run on one thread

int64_t grain_rows(int64_t row_elements) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_elements, 1)); }

#ifdef SGLKIT_FUSED_OPS
using namespace sglkit::vec;

// One row of H: [new_res = round(x + res)], then out = norm(row) * weight (see rms_norm below).
template <typename T>
void rms_norm_row(const T* x, const T* res, T* new_res, const T* w, T* out, int64_t h, float eps, bool weight_fp32,
                  float offset) {
  __m512 sq = _mm512_setzero_ps();
  const T* row = x;
  for (int64_t i = 0; i < h; i += kLanes) {
    const __mmask16 m = first_lanes(h - i);
    __m512 v = load16(x + i, m);
    if (res != nullptr) {
      v = round_to<T>(_mm512_add_ps(v, load16(res + i, m)));
      store16(new_res + i, v, m);
    }
    sq = _mm512_fmadd_ps(v, v, sq);
  }
  if (res != nullptr) row = new_res;
  const float mean = _mm512_reduce_add_ps(sq) / static_cast<float>(h);
  const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(mean + eps));
  const __m512 off = _mm512_set1_ps(offset);
  for (int64_t i = 0; i < h; i += kLanes) {
    const __mmask16 m = first_lanes(h - i);
    const __m512 normed = _mm512_mul_ps(load16(row + i, m), inv);
    const __m512 weight = load16(w + i, m);
    const __m512 y = weight_fp32 ? _mm512_mul_ps(normed, _mm512_add_ps(off, weight))  // (x32 * (off + w)).to(T)
                                 : _mm512_mul_ps(weight, round_to<T>(normed));        // w * x32.to(T)
    store16(out + i, y, m);
  }
}

// One head: dst[0:R/2] = x1 c - x2 s, dst[R/2:R] = x2 c + x1 s (each product and the sum rounded to T, as the
// torch code's three ops), dst[R:D] = src[R:D].
template <typename T>
void rope_head(const T* src, T* dst, int64_t d, int64_t half, const float* cos, const float* sin) {
  for (int64_t i = 0; i < half; i += kLanes) {
    const __mmask16 m = first_lanes(half - i);
    const __m512 c = round_to<T>(load16(cos + i, m)), s = round_to<T>(load16(sin + i, m));
    const __m512 x1 = load16(src + i, m), x2 = load16(src + half + i, m);
    store16(dst + i, _mm512_sub_ps(round_to<T>(_mm512_mul_ps(x1, c)), round_to<T>(_mm512_mul_ps(x2, s))), m);
    store16(dst + half + i, _mm512_add_ps(round_to<T>(_mm512_mul_ps(x2, c)), round_to<T>(_mm512_mul_ps(x1, s))), m);
  }
  if (2 * half < d) std::memcpy(dst + 2 * half, src + 2 * half, (d - 2 * half) * sizeof(T));
}

// One row: out[0:I] = round(silu(g)) * u for g = x[0:I], u = x[I:2I]; silu(g) = g / (1 + e^-g), as torch computes.
template <typename T>
void silu_and_mul_row(const T* x, T* out, int64_t inter) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < inter; i += kLanes) {
    const __mmask16 m = first_lanes(inter - i);
    const __m512 g = load16(x + i, m);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    store16(out + i, _mm512_mul_ps(round_to<T>(silu), load16(x + inter + i, m)), m);
  }
}

// f(T* nullptr) for T = float or bfloat16, as t says (checked by the caller).
template <typename F>
void for_dtype(at::ScalarType t, F&& f) {
  if (t == at::kFloat)
    f(static_cast<float*>(nullptr));
  else
    f(static_cast<c10::BFloat16*>(nullptr));
}
#endif  // SGLKIT_FUSED_OPS

void check_float_or_bf16(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name, ": float32 or bfloat16");
}

// [..., last] with a unit last stride as [rows, last] rows of stride ld (a view where it can be one).
torch::Tensor as_rows(const torch::Tensor& t) {
  torch::Tensor rows = t.reshape({-1, t.size(-1)});
  return rows.stride(-1) == 1 ? rows : rows.contiguous();
}

}  // namespace

namespace sglkit {

// Whether this build has the fused ops (an AVX-512 F/BW/VL build).
bool fused_ops_supported() {
#ifdef SGLKIT_FUSED_OPS
  return true;
#else
  return false;
#endif
}

// x [..., H], residual [..., H] or None, weight [H] (x's dtype) -> (out, new_residual): new_residual = x + residual
// rounded to x's dtype (None without a residual), out = norm(new_residual or x): x32 * rsqrt(mean(x32^2) + eps),
// then weight * that cast to x's dtype, or with weight_fp32 (x32 * (offset + weight)) cast.
std::tuple<torch::Tensor, c10::optional<torch::Tensor>> rms_norm(const torch::Tensor& x,
                                                                 const c10::optional<torch::Tensor>& residual,
                                                                 const torch::Tensor& weight, double eps,
                                                                 bool weight_fp32, double offset) {
  check_float_or_bf16(x, "x");
  const int64_t h = x.size(-1);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.numel() == h && weight.is_contiguous(),
              "weight: [", h, "] contiguous, of x's dtype");
  const torch::Tensor xr = as_rows(x);
  torch::Tensor rr, new_res;
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type(), "residual: x's shape and dtype");
    rr = as_rows(*residual);
    new_res = torch::empty(x.sizes(), x.options());
  }
  torch::Tensor out = torch::empty(x.sizes(), x.options());
  bool done = false;
#ifdef SGLKIT_FUSED_OPS
  const int64_t rows = xr.size(0);
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = xr.data_ptr<T>();
    const T* rp = residual.has_value() ? rr.data_ptr<T>() : nullptr;
    T* np = residual.has_value() ? new_res.data_ptr<T>() : nullptr;
    const T* wp = weight.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const int64_t xld = xr.stride(0), rld = residual.has_value() ? rr.stride(0) : 0;
    at::parallel_for(0, rows, grain_rows(h), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        rms_norm_row<T>(xp + r * xld, rp ? rp + r * rld : nullptr, np ? np + r * h : nullptr, wp, op + r * h, h,
                        static_cast<float>(eps), weight_fp32, static_cast<float>(offset));
    });
    done = true;
  };
  for_dtype(x.scalar_type(), run);
#endif
  TORCH_CHECK(done, "rms_norm: not in this build");
  if (!residual.has_value()) return {out, c10::nullopt};
  return {out, new_res};
}

// positions [T] (cos|sin cache rows), q [T, Hq, D], k [T, Hkv, D] (strided heads allowed, unit last stride),
// cache [rows, R] float32 (cos | sin halves) -> new contiguous (q, k) with the first R dims of each head rotated.
std::tuple<torch::Tensor, torch::Tensor> rotary_embedding(const torch::Tensor& positions, const torch::Tensor& q,
                                                          const torch::Tensor& k, const torch::Tensor& cache,
                                                          int64_t rotary_dim) {
  check_float_or_bf16(q, "q");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && k.scalar_type() == q.scalar_type(), "q [T, Hq, D], k [T, Hkv, D], one dtype");
  TORCH_CHECK(q.stride(-1) == 1 && k.stride(-1) == 1, "q and k with a unit last stride");
  const int64_t tokens = q.size(0), d = q.size(2);
  TORCH_CHECK(k.size(0) == tokens && k.size(2) == d && positions.numel() == tokens, "one position per token");
  TORCH_CHECK(rotary_dim % 2 == 0 && rotary_dim > 0 && rotary_dim <= d, "rotary_dim ", rotary_dim, " of head dim ", d);
  TORCH_CHECK(cache.scalar_type() == at::kFloat && cache.dim() == 2 && cache.size(1) == rotary_dim && cache.stride(1) == 1,
              "cache [rows, rotary_dim] float32");
  const torch::Tensor pos = positions.to(torch::kLong).contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(pp[t] >= 0 && pp[t] < cache.size(0), "position ", pp[t], " outside the rotary cache of ", cache.size(0), " rows");
  torch::Tensor q_out = torch::empty(q.sizes(), q.options()), k_out = torch::empty(k.sizes(), k.options());
  bool done = false;
#ifdef SGLKIT_FUSED_OPS
  const int64_t hq = q.size(1), hk = k.size(1), half = rotary_dim / 2;
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* qp = q.data_ptr<T>();
    const T* kp = k.data_ptr<T>();
    T* qo = q_out.data_ptr<T>();
    T* ko = k_out.data_ptr<T>();
    const float* cp = cache.data_ptr<float>();
    at::parallel_for(0, tokens, grain_rows((hq + hk) * d), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const float* cos = cp + pp[t] * cache.stride(0);
        for (int64_t h = 0; h < hq; ++h)
          rope_head<T>(qp + t * q.stride(0) + h * q.stride(1), qo + (t * hq + h) * d, d, half, cos, cos + half);
        for (int64_t h = 0; h < hk; ++h)
          rope_head<T>(kp + t * k.stride(0) + h * k.stride(1), ko + (t * hk + h) * d, d, half, cos, cos + half);
      }
    });
    done = true;
  };
  for_dtype(q.scalar_type(), run);
#endif
  TORCH_CHECK(done, "rotary_embedding: not in this build");
  return {q_out, k_out};
}

// x [..., 2I] -> [..., I] = silu(x[..., :I]) * x[..., I:] (silu rounded to x's dtype first, as torch's two ops).
torch::Tensor silu_and_mul(const torch::Tensor& x) {
  check_float_or_bf16(x, "x");
  TORCH_CHECK(x.size(-1) % 2 == 0, "an even last dim");
  const torch::Tensor xr = as_rows(x);
  const int64_t inter = x.size(-1) / 2, rows = xr.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = inter;
  torch::Tensor out = torch::empty(shape, x.options());
  bool done = false;
#ifdef SGLKIT_FUSED_OPS
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = xr.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const int64_t ld = xr.stride(0);
    at::parallel_for(0, rows, grain_rows(2 * inter), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) silu_and_mul_row<T>(xp + r * ld, op + r * inter, inter);
    });
    done = true;
  };
  for_dtype(x.scalar_type(), run);
#endif
  TORCH_CHECK(done, "silu_and_mul: not in this build");
  return out;
}

// k_buf, v_buf [S, Hkv, D] (contiguous), loc [T] int64/int32, k, v [T, Hkv, D] of the buffers' dtype with
// contiguous tokens (any token stride) -> k_buf[loc[t]] = k[t], v_buf[loc[t]] = v[t]. Every slot is checked first.
void store_kv(torch::Tensor& k_buf, torch::Tensor& v_buf, const torch::Tensor& loc, const torch::Tensor& k,
              const torch::Tensor& v) {
  TORCH_CHECK(k_buf.is_contiguous() && v_buf.is_contiguous() && k_buf.sizes() == v_buf.sizes(), "contiguous K/V buffers of one shape");
  TORCH_CHECK(k.scalar_type() == k_buf.scalar_type() && v.scalar_type() == k_buf.scalar_type(), "k, v of the buffers' dtype");
  const int64_t tokens = loc.numel(), slots = k_buf.size(0), row = k_buf.numel() / std::max<int64_t>(slots, 1);
  TORCH_CHECK(k.dim() == 3 && k.sizes() == v.sizes() && k.size(0) == tokens && k.size(1) * k.size(2) == row,
              "k, v: [T, Hkv, D] matching the buffers and loc");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(2) == 1 && v.stride(1) == v.size(2),
              "k, v: each token's heads contiguous");
  const torch::Tensor slot = loc.to(torch::kLong).contiguous();
  const int64_t* sp = slot.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) TORCH_CHECK(sp[t] >= 0 && sp[t] < slots, "slot ", sp[t], " outside the pool of ", slots);
  const int64_t bytes = row * k.element_size();
  char* kb = static_cast<char*>(k_buf.data_ptr());
  char* vb = static_cast<char*>(v_buf.data_ptr());
  const char* kp = static_cast<const char*>(k.data_ptr());
  const char* vp = static_cast<const char*>(v.data_ptr());
  const int64_t kld = k.stride(0) * k.element_size(), vld = v.stride(0) * v.element_size();
  at::parallel_for(0, tokens, grain_rows(2 * row), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::memcpy(kb + sp[t] * bytes, kp + t * kld, bytes);
      std::memcpy(vb + sp[t] * bytes, vp + t * vld, bytes);
    }
  });
}

}  // namespace sglkit
