"""The transformers fallback (sglkit.models.transformers_backend): HF layers on our paged KV pool.

Logits through the pool (packed prompts, prefix in the pool, decode) equal plain HF transformers within 1e-4
(float32); Llama through the fallback equals our own Llama; ``model_impl`` selects the implementation.
"""

from __future__ import annotations

import logging

import pytest
import torch

from sglkit.core.forward_batch import ForwardMode
from sglkit.core.model_config import ModelConfig
from sglkit.models import load_model
from sglkit.models.llama import LlamaForCausalLM
from sglkit.models.loader import MODEL_IMPLS, iterate_weights, resolve_model_class
from sglkit.models.transformers_backend import ATTENTION_IMPLEMENTATION, TransformersForCausalLM
from sglkit.testing import make_tiny_model
from tests.models.conftest import SCENARIOS, HFComparison, PagedRunner

# name -> (make_tiny_model keyword arguments, model_impl)
FALLBACK_CASES: dict[str, tuple[dict, str]] = {
    "gpt-neox": (dict(architecture="GPTNeoXForCausalLM"), "auto"),
    "gpt-neox-tied-sequential": (
        dict(architecture="GPTNeoXForCausalLM", tie_word_embeddings=True, use_parallel_residual=False),
        "auto",
    ),
    "phi-qk-layernorm": (dict(architecture="PhiForCausalLM", qk_layernorm=True), "auto"),
    "llama": (dict(architecture="LlamaForCausalLM"), "transformers"),
    "llama-tied": (dict(architecture="LlamaForCausalLM", tie_word_embeddings=True), "transformers"),
    "mistral-window-8": (dict(architecture="MistralForCausalLM", sliding_window=8), "transformers"),
}


@pytest.fixture(scope="module")
def fallback_path(tmp_path_factory):
    """Return a function case name -> folder of its tiny checkpoint (built once per module)."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            kwargs = dict(FALLBACK_CASES[name][0])
            cache[name] = make_tiny_model(tmp_path_factory.mktemp(name), kwargs.pop("architecture"), **kwargs)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def fallback_comparison(fallback_path, hf_model):
    """Return a function case name -> HFComparison of the fallback (loaded once per case)."""
    cache: dict[str, HFComparison] = {}

    def get(name: str) -> HFComparison:
        if name not in cache:
            path = fallback_path(name)
            cache[name] = HFComparison(path, hf_model(path), model_impl=FALLBACK_CASES[name][1])
        return cache[name]

    return get


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", list(FALLBACK_CASES))
def test_fallback_matches_hf(fallback_comparison, name, scenario):
    comparison = fallback_comparison(name)
    assert isinstance(comparison.model, TransformersForCausalLM)
    getattr(comparison, scenario)()


def _gemma2_checkpoint(path) -> None:
    """A tiny Gemma 2 (sliding window 4 on alternate layers, tight score and logit soft caps) saved locally."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=5.0,
        initializer_range=0.2,
        architectures=["Gemma2ForCausalLM"],
    )
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(str(path))


def test_gemma2_softcaps_window_and_scaling_match_hf(tmp_path):
    """Options HF passes to the attention function (soft cap, window, scaling) and the final logit cap."""
    from transformers import AutoModelForCausalLM

    _gemma2_checkpoint(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    comparison = HFComparison(tmp_path, hf, model_impl="transformers")
    for scenario in SCENARIOS:
        getattr(comparison, scenario)()
    layers = comparison.model.attention.layers
    assert [layers[i].sliding_window for i in range(4)] == [4, None, 4, None]
    assert all(layer.logit_cap == 3.0 and layer.scaling == 24**-0.5 for layer in layers.values())


def test_llama_fallback_equals_our_llama(tiny_model_path):
    path = tiny_model_path("llama")
    ours, config = load_model(path, dtype="float32", model_impl="sglkit")
    fallback, _ = load_model(path, dtype="float32", model_impl="transformers")
    assert isinstance(ours, LlamaForCausalLM) and isinstance(fallback, TransformersForCausalLM)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(6, config.vocab_size, (n,), generator=gen).tolist() for n in (9, 4, 17)]
    runners = [PagedRunner(ours, config), PagedRunner(fallback, config)]
    results = [runner.forward(list(enumerate(prompts))) for runner in runners]
    for step in range(3):
        batch = [(i, [(11 * i + step + 30) % config.vocab_size]) for i in range(len(prompts))]
        for runner, outs in zip(runners, results, strict=True):
            outs.extend(runner.forward(batch, ForwardMode.DECODE))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_dense_mask_and_one_radix_layer_per_hf_layer(fallback_comparison, monkeypatch):
    """HF builds no [T, T] mask for our attention; each HF layer gets RadixAttention(layer_id=layer_idx)."""
    from transformers import AttentionInterface

    from sglkit.models import transformers_backend

    comparison = fallback_comparison("gpt-neox")
    masks = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        assert query.shape[0] == 1 and query.shape[1] == 4  # [1, H, T, D]
        return transformers_backend.sglkit_attention_forward(
            module, query, key, value, attention_mask, **kwargs
        )

    monkeypatch.setitem(AttentionInterface._global_mapping, ATTENTION_IMPLEMENTATION, spy)
    comparison.packed_extend()
    assert masks and all(mask is None for mask in masks)
    layers = comparison.model.attention.layers
    assert sorted(layers) == [0, 1] and all(layers[i].layer_id == i for i in layers)


def test_hf_model_called_directly_is_refused(fallback_comparison):
    model = fallback_comparison("gpt-neox").model
    with pytest.raises(RuntimeError, match="TransformersForCausalLM.forward"):
        model.hf_model(torch.tensor([[7, 8, 9]]))


def test_load_weights_round_trip_and_update(fallback_path, hf_model, tmp_path):
    """A checkpoint of the same shapes (another seed) replaces the weights; the logits follow HF's."""
    path = fallback_path("gpt-neox")
    other = make_tiny_model(tmp_path / "other", "GPTNeoXForCausalLM", seed=5)
    model, config = load_model(path, dtype="float32")
    tokens = list(range(6, 20))
    model.load_weights(iterate_weights(other, show_progress=False))
    (logits,) = PagedRunner(model, config).forward([("a", tokens)])
    ref = hf_model(other)(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    names = model.load_weights(model.hf_model.state_dict().items())  # its own state_dict loads back
    assert "gpt_neox.embed_in.weight" in names


def test_load_weights_is_strict(fallback_path):
    path = fallback_path("gpt-neox")
    model, _ = load_model(path, dtype="float32")
    weights = dict(iterate_weights(path, show_progress=False))
    with pytest.raises(ValueError, match="Unexpected weight 'gpt_neox.extra.weight'"):
        model.load_weights([*weights.items(), ("gpt_neox.extra.weight", torch.zeros(2))])
    bad = {**weights, "lm_head.weight": torch.zeros(3, 64)}
    with pytest.raises(ValueError, match=r"'lm_head.weight' has shape \(3, 64\)"):
        model.load_weights(bad.items())
    weights.pop("gpt_neox.final_layer_norm.bias")
    with pytest.raises(ValueError, match="did not provide.*gpt_neox.final_layer_norm.bias"):
        model.load_weights(weights.items())
    legacy = {**weights, "gpt_neox.layers.0.attention.masked_bias": torch.zeros(1)}  # HF ignores it too
    legacy["gpt_neox.final_layer_norm.bias"] = torch.zeros(64)
    model.load_weights(legacy.items())


def test_legacy_tensor_names_load_through_transformers(fallback_path, hf_model, tmp_path):
    """Released GPT-NeoX checkpoints name the head ``embed_out.weight``: transformers' loading renames it."""
    from safetensors.torch import save_file

    path = fallback_path("gpt-neox")
    weights = dict(iterate_weights(path, show_progress=False))
    weights["embed_out.weight"] = weights.pop("lm_head.weight")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file(weights, str(tmp_path / "model.safetensors"))
    model, config = load_model(tmp_path, dtype="float32")
    tokens = list(range(6, 20))
    (logits,) = PagedRunner(model, config).forward([("a", tokens)])
    ref = hf_model(path)(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_engine_update_weights_from_disk(fallback_path, tmp_path):
    """/update_weights_from_disk through the fallback: new weights serve; a bad folder rolls back."""
    import sglkit

    path = fallback_path("gpt-neox")
    other = make_tiny_model(tmp_path / "other", "GPTNeoXForCausalLM", seed=5)
    wider = make_tiny_model(tmp_path / "wider", "GPTNeoXForCausalLM", hidden_size=96)
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    with sglkit.Engine(model_path=str(other), max_total_tokens=512, random_seed=0) as llm:
        want = llm.generate("the capital of France", params)["output_ids"]
    with sglkit.Engine(model_path=str(path), max_total_tokens=512, random_seed=0) as llm:
        before = llm.generate("the capital of France", params)["output_ids"]
        assert llm.get_server_info()["model_impl"] == "auto"
        assert isinstance(llm.scheduler.model_runner.model, TransformersForCausalLM)  # auto picked it
        ok, message = llm.update_weights_from_disk(str(other))
        assert ok, message
        assert llm.generate("the capital of France", params)["output_ids"] == want != before
        ok, message = llm.update_weights_from_disk(str(wider))
        assert not ok and "Rolling back" in message
        assert llm.generate("the capital of France", params)["output_ids"] == want


def test_load_checkpoint_refuses_missing_tensors(fallback_path, tmp_path):
    from safetensors.torch import save_file

    path = fallback_path("gpt-neox")
    model, _ = load_model(path, dtype="float32")
    weights = dict(iterate_weights(path, show_progress=False))
    weights.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.weight")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"could not load .* strictly: missing_keys .*dense_4h_to_h"):
        model.load_checkpoint(tmp_path)


def test_tied_head_is_the_embedding(fallback_comparison):
    hf_model = fallback_comparison("gpt-neox-tied-sequential").model.hf_model
    assert hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight


def test_model_config_reads_gpt_neox_sizes():
    """GPT-NeoX configs name no num_key_value_heads / head_dim: MHA of hidden_size // num_attention_heads."""
    from transformers import GPTNeoXConfig

    config = ModelConfig.from_hf(GPTNeoXConfig(hidden_size=96, num_attention_heads=6, rotary_pct=0.5))
    assert (config.num_key_value_heads, config.head_dim) == (6, 16)


class TestModelImplSelection:
    """Which class the loader builds for each ``model_impl``, and its errors."""

    def test_choices(self):
        from sglkit.server_args import MODEL_IMPLS as SERVER_ARGS_IMPLS

        assert MODEL_IMPLS == SERVER_ARGS_IMPLS == ("auto", "sglkit", "transformers")

    def test_auto_prefers_sglkit_then_transformers(self):
        assert resolve_model_class(["LlamaForCausalLM"]) is LlamaForCausalLM
        assert resolve_model_class(["GPTNeoXForCausalLM"]) is TransformersForCausalLM
        assert resolve_model_class(["PhiForCausalLM"], model_impl="auto") is TransformersForCausalLM

    def test_transformers_always_uses_the_fallback(self):
        assert resolve_model_class(["LlamaForCausalLM"], model_impl="transformers") is TransformersForCausalLM

    def test_sglkit_never_falls_back(self):
        with pytest.raises(ValueError, match="not supported by sglkit as generation models"):
            resolve_model_class(["GPTNeoXForCausalLM"], model_impl="sglkit")

    def test_unknown_architecture_keeps_the_registry_error(self):
        with pytest.raises(ValueError, match="not supported by sglkit.*Supported architectures"):
            resolve_model_class(["NoSuchModelForCausalLM"])
        with pytest.raises(ValueError, match="not causal-LM classes of the installed transformers"):
            resolve_model_class(["NoSuchModelForCausalLM"], model_impl="transformers")
        with pytest.raises(ValueError, match="not supported by sglkit.*cannot run them either"):
            resolve_model_class(["NoSuchModelForCausalLM"])
        with pytest.raises(ValueError, match="not causal-LM classes"):
            resolve_model_class(["BertModel"], model_impl="transformers")  # exists, but no causal LM

    def test_layers_that_drop_attention_kwargs_are_refused(self):
        """StableLM's decoder layer does not pass **kwargs to its attention (transformers 5)."""
        with pytest.raises(ValueError, match=r"StableLmForCausalLM does not pass attention arguments"):
            resolve_model_class(["StableLmForCausalLM"])

    def test_config_of_another_family_is_refused(self):
        from transformers import LlamaConfig

        with pytest.raises(
            ValueError, match="GPT2LMHeadModel needs a GPT2Config, but the config is a LlamaConfig"
        ):
            resolve_model_class(["GPT2LMHeadModel"], model_impl="transformers", hf_config=LlamaConfig())

    def test_embedding_models_are_not_served_by_the_fallback(self):
        with pytest.raises(ValueError, match="generation models only"):
            resolve_model_class(["LlamaForCausalLM"], is_embedding=True, model_impl="transformers")
        with pytest.raises(ValueError, match="not supported by sglkit as embedding models"):
            resolve_model_class(["GPTNeoXForCausalLM"], is_embedding=True)

    def test_invalid_choice(self):
        with pytest.raises(ValueError, match="model_impl must be one of"):
            resolve_model_class(["LlamaForCausalLM"], model_impl="vllm")

    def test_choice_is_logged(self, fallback_path, caplog):
        with caplog.at_level(logging.INFO, logger="sglkit.models.loader"):
            load_model(fallback_path("gpt-neox"), dtype="float32")
        assert "Model implementation: transformers (TransformersForCausalLM for ['GPTNeoXForCausalLM']" in (
            caplog.text
        )


def test_window_applied_only_through_the_mask_is_refused(tmp_path):
    """PhiMoE applies its sliding window through HF's mask only, which the fallback does not build."""
    from transformers import PhimoeConfig, PhimoeForCausalLM

    config = PhimoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        sliding_window=4,
        architectures=["PhimoeForCausalLM"],
    )
    torch.manual_seed(0)
    PhimoeForCausalLM(config).save_pretrained(str(tmp_path))
    model, model_config = load_model(tmp_path, dtype="float32")
    with pytest.raises(ValueError, match="sliding window of 4, but PhimoeAttention does not pass it"):
        PagedRunner(model, model_config).forward([("a", [5, 6, 7])])
