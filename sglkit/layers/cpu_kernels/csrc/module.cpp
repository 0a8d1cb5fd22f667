// Model layers, CPU: the Python bindings of sglkit's CPU kernels (one extension; sglkit/layers/cpu_kernels).
#include "kernels.h"

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
  pybind11::class_<sglkit::DecodeStack>(m, "DecodeStack",
                                        "A decode pass through a Llama-style decoder stack, all layers in one call")
      .def(pybind11::init<std::vector<c10::optional<torch::Tensor>>, std::vector<int64_t>, std::vector<double>,
                          double, bool, bool, double>(),
           pybind11::arg("tensors"), pybind11::arg("dims"), pybind11::arg("eps"), pybind11::arg("scaling"),
           pybind11::arg("fused_norm"), pybind11::arg("weight_fp32"), pybind11::arg("offset"))
      .def("forward", &sglkit::DecodeStack::forward,
           "hidden [B, H], positions [B] and the pass's tables -> (last MLP output, residual)")
      .def_property_readonly("num_layers", &sglkit::DecodeStack::num_layers);
  m.attr("DECODE_STACK_PER_LAYER") = sglkit::DecodeStack::kPerLayer;
}
