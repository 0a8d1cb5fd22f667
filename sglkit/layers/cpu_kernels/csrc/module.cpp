// Model layers, CPU: the Python bindings of sglkit's CPU kernels (one extension; sglkit/layers/cpu_kernels).
#include <torch/extension.h>

#include <string>
#include <tuple>

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
}  // namespace sglkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemm_supported", &sglkit::gemm_supported,
        "Whether blocked_linear runs weights of this dtype (\"bfloat16\" / \"float32\" / \"int8\") in this build.");
  m.def("blocked_linear", &sglkit::blocked_linear,
        "x [M, K] @ blocked W^T (int8: times scales) (+ bias) -> [M, N], x's dtype", pybind11::arg("x"),
        pybind11::arg("w"), pybind11::arg("n"), pybind11::arg("bias") = pybind11::none(),
        pybind11::arg("scales") = pybind11::none());
  m.def("decode_attention_supported", &sglkit::decode_attention_supported,
        "Whether decode_attention takes this head dim and query heads per KV head.");
  m.def("decode_attention", &sglkit::decode_attention,
        "One decode token per request attending to its KV straight from the paged pool -> [B, Hq, D]");
  m.def("extend_attention_supported", &sglkit::extend_attention_supported,
        "Whether extend_attention takes this dtype, head dim and query heads per KV head.");
  m.def("extend_attention", &sglkit::extend_attention,
        "Causal attention of each request's new tokens over its cached and new KV in the paged pool -> [T, Hq, D]");
  m.def("fused_ops_supported", &sglkit::fused_ops_supported, "Whether this build has the fused small ops.");
  m.def("rms_norm", &sglkit::rms_norm, "RMSNorm with an optional residual add -> (out, new residual or None)",
        pybind11::arg("x"), pybind11::arg("residual"), pybind11::arg("weight"), pybind11::arg("eps"),
        pybind11::arg("weight_fp32"), pybind11::arg("offset"));
  m.def("rotary_embedding", &sglkit::rotary_embedding, "NeoX RoPE of q [T, Hq, D] and k [T, Hkv, D] -> new (q, k)");
  m.def("silu_and_mul", &sglkit::silu_and_mul, "x [..., 2I] -> silu(x[..., :I]) * x[..., I:]");
  m.def("store_kv", &sglkit::store_kv, "k_buf[loc] = k, v_buf[loc] = v (one pass, slots checked)");
}
