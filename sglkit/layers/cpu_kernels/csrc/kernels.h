// Model layers, CPU: the entry points of sglkit's CPU kernels, shared by the bindings (module.cpp) and by the
// decode stack (decode_stack.cpp), which calls them in sequence without going back to Python.
#pragma once

#include <torch/extension.h>

#include <string>
#include <tuple>
#include <vector>

namespace sglkit {
bool gemm_supported(const std::string& dtype);
torch::Tensor blocked_linear(const torch::Tensor& x, const torch::Tensor& w, int64_t n,
                             const c10::optional<torch::Tensor>& bias, const c10::optional<torch::Tensor>& scales);
bool decode_attention_supported(int64_t head_dim, int64_t group);
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                               const torch::Tensor& req_to_token, const torch::Tensor& req_pool_indices,
                               const torch::Tensor& seq_lens, double scale);
bool extend_attention_supported(const std::string& dtype, int64_t head_dim, int64_t group);
torch::Tensor extend_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                               const torch::Tensor& req_to_token, const torch::Tensor& req_pool_indices,
                               const torch::Tensor& prefix_lens, const torch::Tensor& extend_lens, double scale);
bool fused_ops_supported();
std::tuple<torch::Tensor, c10::optional<torch::Tensor>> rms_norm(const torch::Tensor& x,
                                                                 const c10::optional<torch::Tensor>& residual,
                                                                 const torch::Tensor& weight, double eps,
                                                                 bool weight_fp32, double offset);
std::tuple<torch::Tensor, torch::Tensor> rotary_embedding(const torch::Tensor& positions, const torch::Tensor& q,
                                                          const torch::Tensor& k, const torch::Tensor& cache,
                                                          int64_t rotary_dim);
torch::Tensor silu_and_mul(const torch::Tensor& x);
void store_kv(torch::Tensor& k_buf, torch::Tensor& v_buf, const torch::Tensor& loc, const torch::Tensor& k,
              const torch::Tensor& v);

// A decode pass through a Llama-style stack of decoder layers (pre-norm; fused qkv, RoPE, attention from the
// paged pool, o_proj; fused gate/up, SiLU-and-mul, down), every op one of the kernels above.
class DecodeStack {
 public:
  // Per layer, in this order (None where a layer has no such tensor): input norm weight; qkv weight, its int8
  // scales, its bias; o_proj weight, scales, bias; post-attention norm weight; gate_up weight, scales, bias;
  // down weight, scales, bias; the layer's K and V pool buffers; the per-head q and k norm weights (Qwen3; both
  // or neither). Weights are blocked_linear's layout.
  static constexpr int64_t kPerLayer = 18;

  // dims: hidden, query heads, KV heads, head dim, intermediate, rotary dim; eps: four per layer (input norm,
  // post-attention norm, q norm, k norm); fused_norm: the fused RMSNorm kernel (with weight_fp32 / offset), else
  // the torch code of RMSNorm (normalise in float32, cast, times the weight).
  DecodeStack(std::vector<c10::optional<torch::Tensor>> tensors, std::vector<int64_t> dims, std::vector<double> eps,
              double scaling, bool fused_norm, bool weight_fp32, double offset);

  // hidden [B, H] (the embeddings), positions [B] -> (last layer's MLP output [B, H], residual [B, H]): their
  // sum is the stack's output, as DecoderModel's layer loop returns them before the final norm.
  std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& hidden, const torch::Tensor& positions,
                                                   const torch::Tensor& req_to_token,
                                                   const torch::Tensor& req_pool_indices,
                                                   const torch::Tensor& seq_lens, const torch::Tensor& out_cache_loc,
                                                   const torch::Tensor& cos_sin_cache) const;

  int64_t num_layers() const { return num_layers_; }

 private:
  std::tuple<torch::Tensor, torch::Tensor> norm(const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
                                                const torch::Tensor& weight, double eps) const;
  torch::Tensor linear(const torch::Tensor& x, int64_t layer, int64_t slot, int64_t n) const;
  const c10::optional<torch::Tensor>& at(int64_t layer, int64_t slot) const;
  bool has(int64_t layer, int64_t slot) const;

  std::vector<c10::optional<torch::Tensor>> tensors_;
  std::vector<double> eps_;
  int64_t num_layers_, hidden_, heads_, kv_heads_, head_dim_, intermediate_, rotary_dim_;
  double scaling_, offset_;
  bool fused_norm_, weight_fp32_;
};
}  // namespace sglkit
