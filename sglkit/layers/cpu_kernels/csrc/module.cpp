// Model layers, CPU: the Python bindings of sglkit's CPU kernels (one extension; sglkit/layers/cpu_kernels).
#include <torch/extension.h>

#include <string>

namespace sglkit {
bool gemm_supported(const std::string& dtype);
torch::Tensor blocked_linear(const torch::Tensor& x, const torch::Tensor& w, int64_t n,
                             const c10::optional<torch::Tensor>& bias);
bool decode_attention_supported(int64_t head_dim, int64_t group);
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                               const torch::Tensor& req_to_token, const torch::Tensor& req_pool_indices,
                               const torch::Tensor& seq_lens, double scale);
}  // namespace sglkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemm_supported", &sglkit::gemm_supported,
        "Whether blocked_linear runs weights of this dtype (\"bfloat16\" / \"float32\") in this build.");
  m.def("blocked_linear", &sglkit::blocked_linear, "x [M, K] @ blocked W^T (+ bias) -> [M, N], x's dtype",
        pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("n"), pybind11::arg("bias") = pybind11::none());
  m.def("decode_attention_supported", &sglkit::decode_attention_supported,
        "Whether decode_attention takes this head dim and query heads per KV head.");
  m.def("decode_attention", &sglkit::decode_attention,
        "One decode token per request attending to its KV straight from the paged pool -> [B, Hq, D]");
}
