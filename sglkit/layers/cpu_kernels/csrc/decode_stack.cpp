// Model layers, CPU: a whole decode pass through a Llama-style decoder stack in one call
// (sglkit/models/cpu_decode_stack.py -> here -> this extension's GEMM, fused ops and decode attention).
//
// The per-layer Python of an eager decode step (module calls, views, dispatch: ~6 ms of a ~30 ms batch-1 step
// on the 360M shape) is gone; every op is the same kernel call the layers make, in the same order, on the same
// tensors, so the result is bit-identical to the module path.
#include "kernels.h"

namespace sglkit {
namespace {
enum Slot : int64_t {
  kInputNorm = 0,
  kQkv = 1,  // weight, scales, bias follow each linear's weight
  kO = 4,
  kPostNorm = 7,
  kGateUp = 8,
  kDown = 11,
  kKBuf = 14,
  kVBuf = 15,
  kQNorm = 16,
  kKNorm = 17,
};
constexpr int64_t kScales = 1, kBias = 2;
}  // namespace

DecodeStack::DecodeStack(std::vector<c10::optional<torch::Tensor>> tensors, std::vector<int64_t> dims,
                         std::vector<double> eps, double scaling, bool fused_norm, bool weight_fp32, double offset)
    : tensors_(std::move(tensors)), eps_(std::move(eps)), scaling_(scaling), offset_(offset),
      fused_norm_(fused_norm), weight_fp32_(weight_fp32) {
  TORCH_CHECK(dims.size() == 6, "dims: hidden, heads, KV heads, head dim, intermediate, rotary dim");
  hidden_ = dims[0], heads_ = dims[1], kv_heads_ = dims[2], head_dim_ = dims[3], intermediate_ = dims[4];
  rotary_dim_ = dims[5];
  TORCH_CHECK(!tensors_.empty() && tensors_.size() % kPerLayer == 0, "tensors: ", kPerLayer, " per layer");
  num_layers_ = static_cast<int64_t>(tensors_.size()) / kPerLayer;
  TORCH_CHECK(static_cast<int64_t>(eps_.size()) == 4 * num_layers_, "eps: four per layer");
  for (int64_t layer = 0; layer < num_layers_; ++layer) {
    for (int64_t slot : {kInputNorm, kQkv, kO, kPostNorm, kGateUp, kDown, kKBuf, kVBuf}) {
      TORCH_CHECK(has(layer, slot), "layer ", layer, ": tensor ", slot, " missing");
    }
    TORCH_CHECK(has(layer, kQNorm) == has(layer, kKNorm), "layer ", layer, ": a q norm and a k norm, or neither");
  }
}

const c10::optional<torch::Tensor>& DecodeStack::at(int64_t layer, int64_t slot) const {
  return tensors_[layer * kPerLayer + slot];
}

bool DecodeStack::has(int64_t layer, int64_t slot) const {
  const c10::optional<torch::Tensor>& t = at(layer, slot);
  return t.has_value() && t->defined();
}

// x [B, K] -> [B, n], as the layer's linear method computes it: bf16 / fp32 blocked weights take the bias in the
// kernel; int8 ones (int8wo) run on x cast to bfloat16, cast back, then add the bias.
torch::Tensor DecodeStack::linear(const torch::Tensor& x, int64_t layer, int64_t slot, int64_t n) const {
  const torch::Tensor& w = *at(layer, slot);
  const c10::optional<torch::Tensor>& scales = at(layer, slot + kScales);
  const c10::optional<torch::Tensor>& bias = at(layer, slot + kBias);
  if (w.scalar_type() == at::kChar) {
    torch::Tensor out = blocked_linear(x.to(at::kBFloat16), w, n, c10::nullopt, scales).to(x.scalar_type());
    return bias.has_value() && bias->defined() ? out + *bias : out;
  }
  return blocked_linear(x, w, n, bias, c10::nullopt);
}

// x [..., H] (+ residual) -> (norm(x + residual), x + residual); without a residual the second is x itself.
std::tuple<torch::Tensor, torch::Tensor> DecodeStack::norm(const torch::Tensor& x,
                                                           const c10::optional<torch::Tensor>& residual,
                                                           const torch::Tensor& weight, double eps) const {
  if (fused_norm_) {
    auto [out, summed] = rms_norm(x, residual, weight, eps, weight_fp32_, offset_);
    return {out, residual.has_value() ? *summed : x};
  }
  // RMSNorm's torch code (float32 models keep it: bit-equal to HF): float32 math, cast, times the weight.
  const torch::Tensor summed = residual.has_value() ? x + *residual : x;
  torch::Tensor x32 = summed.to(at::kFloat);
  x32 = x32 * torch::rsqrt(x32.pow(2).mean({-1}, /*keepdim=*/true) + eps);
  return {weight * x32.to(summed.scalar_type()), summed};
}

std::tuple<torch::Tensor, torch::Tensor> DecodeStack::forward(const torch::Tensor& hidden,
                                                              const torch::Tensor& positions,
                                                              const torch::Tensor& req_to_token,
                                                              const torch::Tensor& req_pool_indices,
                                                              const torch::Tensor& seq_lens,
                                                              const torch::Tensor& out_cache_loc,
                                                              const torch::Tensor& cos_sin_cache) const {
  TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) == hidden_, "hidden: [B, ", hidden_, "]");
  const int64_t batch = hidden.size(0);
  const int64_t q_size = heads_ * head_dim_, kv_size = kv_heads_ * head_dim_;
  torch::Tensor x = hidden;
  c10::optional<torch::Tensor> residual;
  for (int64_t layer = 0; layer < num_layers_; ++layer) {
    const double* eps = &eps_[4 * layer];
    auto [h, res] = norm(x, residual, *at(layer, kInputNorm), eps[0]);
    // attention: qkv -> RoPE -> K/V into the pool -> decode attention -> o_proj
    const torch::Tensor qkv = linear(h, layer, kQkv, q_size + 2 * kv_size);  // [B, q + 2 kv]
    torch::Tensor q = qkv.narrow(1, 0, q_size).view({batch, heads_, head_dim_});
    torch::Tensor k = qkv.narrow(1, q_size, kv_size).view({batch, kv_heads_, head_dim_});
    if (has(layer, kQNorm)) {  // per-head norms over head_dim, on the strided views (Qwen3)
      q = std::get<0>(norm(q, c10::nullopt, *at(layer, kQNorm), eps[2]));
      k = std::get<0>(norm(k, c10::nullopt, *at(layer, kKNorm), eps[3]));
    }
    const torch::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({batch, kv_heads_, head_dim_});
    auto [q_rot, k_rot] = rotary_embedding(positions, q, k, cos_sin_cache, rotary_dim_);
    torch::Tensor k_buf = *at(layer, kKBuf), v_buf = *at(layer, kVBuf);
    store_kv(k_buf, v_buf, out_cache_loc, k_rot, v);
    const torch::Tensor attn =
        decode_attention(q_rot, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, scaling_);  // [B, Hq, D]
    const torch::Tensor o = linear(attn.reshape({batch, q_size}), layer, kO, hidden_);
    // MLP: norm with the residual -> gate_up -> SiLU-and-mul -> down
    auto [h2, res2] = norm(o, res, *at(layer, kPostNorm), eps[1]);
    const torch::Tensor gate_up = linear(h2, layer, kGateUp, 2 * intermediate_);
    x = linear(silu_and_mul(gate_up), layer, kDown, hidden_);
    residual = res2;
  }
  return {x, *residual};
}
}  // namespace sglkit
