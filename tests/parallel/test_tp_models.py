"""Tensor parallelism, model side: every generation family at tp_size 2 (two spawned gloo ranks) gives the logits
of tp_size 1 within 1e-4 (float32), through a paged forward with packed prompts, decode steps, a chunked
prefill and a cached prefix; each rank holds only its share of the weights and of the KV heads.

One pair of ranks runs all variants in sequence (a spawn costs seconds; a variant a fraction of one).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from spawn import run_on_ranks
from tp_scenarios import scenario_logits

# name -> make_tiny_model keyword arguments (tiny preset: 4 query heads, 2 KV heads, hidden 64, vocab 512).
TP_VARIANTS: dict[str, dict] = {
    "llama": dict(architecture="LlamaForCausalLM"),
    # One KV head, replicated on both ranks; a vocabulary not divisible by 2 (padded shards); every bias.
    "llama-kv1-odd-vocab-bias": dict(
        architecture="LlamaForCausalLM",
        num_key_value_heads=1,
        vocab_size=509,
        attention_bias=True,
        mlp_bias=True,
    ),
    "mistral-tied-window": dict(
        architecture="MistralForCausalLM", tie_word_embeddings=True, sliding_window=8
    ),
    "qwen2": dict(architecture="Qwen2ForCausalLM"),
    "qwen3-tied-odd-vocab": dict(architecture="Qwen3ForCausalLM", tie_word_embeddings=True, vocab_size=511),
    "gemma2": dict(
        architecture="Gemma2ForCausalLM",
        tie_word_embeddings=True,
        num_hidden_layers=4,
        sliding_window=6,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=4.0,
    ),
    "gemma3-kv1-untied": dict(
        architecture="Gemma3ForCausalLM",
        num_key_value_heads=1,
        final_logit_softcapping=4.0,
        sliding_window=6,
        attention_bias=True,
        vocab_size=509,
    ),
    "phi3": dict(architecture="Phi3ForCausalLM"),
    "phi3-kv1-tied": dict(architecture="Phi3ForCausalLM", num_key_value_heads=1, tie_word_embeddings=True),
    "olmo2-bias": dict(architecture="Olmo2ForCausalLM", attention_bias=True),
    "olmo2-kv1-odd-vocab": dict(architecture="Olmo2ForCausalLM", num_key_value_heads=1, vocab_size=509),
    "mixtral-window": dict(architecture="MixtralForCausalLM", sliding_window=8),
    "qwen2-moe": dict(
        architecture="Qwen2MoeForCausalLM", num_hidden_layers=3, decoder_sparse_step=1, mlp_only_layers=[1]
    ),
    "qwen3-moe-tied-bias": dict(
        architecture="Qwen3MoeForCausalLM", tie_word_embeddings=True, attention_bias=True, mlp_only_layers=[0]
    ),
}


def _rank_run(rank: int, paths: dict[str, str], fallback_path: str) -> dict:
    """On one rank: each variant's scenario logits and parameter count; and the refusals at tp_size 2."""
    from sglkit.models import load_model
    from sglkit.models.llama_embedding import LlamaEmbeddingModel
    from sglkit.models.transformers_backend import TransformersForCausalLM

    results = {}
    for name, path in paths.items():
        out = scenario_logits(path)
        model, _ = load_model(path, dtype="float32")
        out["num_params"] = sum(p.numel() for p in model.parameters())
        results[name] = out
    refusals = {}
    for label, build in (
        ("transformers", lambda: load_model(fallback_path, model_impl="transformers")),
        ("embedding", lambda: LlamaEmbeddingModel(load_model(fallback_path)[1])),
        ("transformers-class", lambda: TransformersForCausalLM(load_model(fallback_path)[1])),
    ):
        try:
            build()
            refusals[label] = None
        except ValueError as e:
            refusals[label] = str(e)
    return {"variants": results, "refusals": refusals}


@pytest.fixture(scope="module")
def tp_paths(tmp_path_factory) -> dict[str, str]:
    """Variant name -> folder of its tiny checkpoint."""
    from sglkit.testing import make_tiny_model

    root = tmp_path_factory.mktemp("tp_models")
    return {name: str(make_tiny_model(root / name, **kwargs)) for name, kwargs in TP_VARIANTS.items()}


@pytest.fixture(scope="module")
def tp_runs(tp_paths) -> list[dict]:
    """Both ranks' results (one spawn for all variants)."""
    return run_on_ranks(_rank_run, tp_paths, tp_paths["llama"], timeout_s=240)


@pytest.fixture(scope="module")
def tp1_runs(tp_paths) -> dict[str, dict]:
    """Variant name -> the same scenarios at tp_size 1 (this process, no parallel state)."""
    from sglkit.models import load_model

    results = {}
    for name, path in tp_paths.items():
        results[name] = scenario_logits(path)
        results[name]["num_params"] = sum(p.numel() for p in load_model(path)[0].parameters())
    return results


@pytest.mark.parametrize("name", list(TP_VARIANTS))
def test_tp2_logits_equal_tp1(name, tp_runs, tp1_runs):
    ref = tp1_runs[name]["logits"]
    rank0, rank1 = (run["variants"][name]["logits"] for run in tp_runs)
    vocab = TP_VARIANTS[name].get("vocab_size", 512)
    assert len(rank0) == len(rank1) == len(ref)
    for ours, other, expected in zip(rank0, rank1, ref, strict=True):
        assert ours.dtype == torch.float32 and ours.shape == expected.shape and ours.shape[-1] == vocab
        assert torch.equal(ours, other)  # every rank has the same full logits (same sampling everywhere)
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(TP_VARIANTS))
def test_each_rank_holds_its_share(name, tp_runs, tp1_runs):
    kv_total = TP_VARIANTS[name].get("num_key_value_heads", 2)
    expected_kv = max(1, kv_total // 2)  # split, or one replicated head per rank
    full = tp1_runs[name]["num_params"]
    for run in tp_runs:
        got = run["variants"][name]
        assert got["kv_heads"] == expected_kv
        assert got["kv_pool_shape"][1] == expected_kv
        assert got["num_params"] < 0.75 * full  # sharded, not the whole model (norms, routers replicated)
    assert tp1_runs[name]["kv_heads"] == kv_total


def test_transformers_fallback_and_embedding_models_refuse_tp(tp_runs):
    for run in tp_runs:
        refusals = run["refusals"]
        assert (
            "transformers fallback" in refusals["transformers"]
            and "tensor parallelism" in refusals["transformers"]
        )
        assert "tensor parallelism" in refusals["transformers-class"]
        assert "Embedding models do not support tensor parallelism" in refusals["embedding"]


def test_model_runner_sizes_the_pool_with_this_ranks_kv_heads():
    from sglkit.runtime.executor.model_runner import ModelRunner

    config = SimpleNamespace(num_key_value_heads=8)
    runner = SimpleNamespace(model=SimpleNamespace(num_kv_heads_per_rank=2), model_config=config)
    assert ModelRunner.num_kv_heads_per_rank.fget(runner) == 2
    runner = SimpleNamespace(model=torch.nn.Linear(1, 1), model_config=config)  # no attribute: the config's
    assert ModelRunner.num_kv_heads_per_rank.fget(runner) == 8
