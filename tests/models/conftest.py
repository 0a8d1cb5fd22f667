"""Fixtures for model tests: tiny checkpoints per variant, and a hand-built paged-KV runner (PagedRunner)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from sglkit.core.forward_batch import ForwardMode
from sglkit.testing.paged_runner import PagedRunner

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,  # head_dim 16 -> high, medium and low frequency bands all present
}

# Gemma 3: global layers with a large linear-scaled base, local layers their own base (as released, scaled down).
GEMMA3_ROPE = {
    "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
}

# Phi-3 LongRoPE (8 = head_dim / 2 factors each; attention factor from 2048 / 8, HF's default formula).
PHI3_LONGROPE = {
    "rope_type": "longrope",
    "rope_theta": 10000.0,
    "short_factor": [1.0, 1.05, 1.3, 1.1, 1.7, 2.4, 2.0, 3.1],
    "long_factor": [1.2, 2.5, 1.9, 4.0, 7.5, 6.0, 15.0, 40.0],
    "original_max_position_embeddings": 8,
}

# name -> make_tiny_model keyword arguments
VARIANTS: dict[str, dict] = {
    "llama": dict(architecture="LlamaForCausalLM"),
    "llama-tied": dict(architecture="LlamaForCausalLM", tie_word_embeddings=True),
    "mistral": dict(architecture="MistralForCausalLM"),
    "mistral-tied": dict(architecture="MistralForCausalLM", tie_word_embeddings=True),
    "qwen2": dict(architecture="Qwen2ForCausalLM"),
    "qwen2-tied": dict(architecture="Qwen2ForCausalLM", tie_word_embeddings=True),
    "qwen3": dict(architecture="Qwen3ForCausalLM"),
    "qwen3-tied": dict(architecture="Qwen3ForCausalLM", tie_word_embeddings=True),
    "llama-llama3-rope": dict(architecture="LlamaForCausalLM", rope_parameters=LLAMA3_ROPE),
    "llama-linear-rope": dict(
        architecture="LlamaForCausalLM",
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    ),
    "llama-sharded": dict(architecture="LlamaForCausalLM", num_shards=3, seed=7),
    "llama-head-dim-32": dict(architecture="LlamaForCausalLM", head_dim=32),
    "qwen3-head-dim-32-bias": dict(architecture="Qwen3ForCausalLM", head_dim=32, attention_bias=True),
    "llama-bias": dict(
        architecture="LlamaForCausalLM", attention_bias=True, mlp_bias=True, num_key_value_heads=4
    ),
    # Phi-3: fused qkv_proj / gate_up_proj checkpoints. LongRoPE with original_max 8: the 5-token prompt stays
    # on the short factors through decode, the 11- and 23-token ones (and every prefix-reuse pass) on the long.
    "phi3": dict(architecture="Phi3ForCausalLM"),
    "phi3-longrope": dict(architecture="Phi3ForCausalLM", rope_parameters=PHI3_LONGROPE),
    "phi3-partial-rotary": dict(  # Phi-4-mini style: 3/4 of each head rotates, LongRoPE, tied embeddings
        architecture="Phi3ForCausalLM",
        tie_word_embeddings=True,
        rope_parameters=dict(
            PHI3_LONGROPE,
            partial_rotary_factor=0.75,
            short_factor=[1.0, 1.2, 1.1, 1.6, 2.5, 3.0],
            long_factor=[1.5, 3.0, 2.2, 7.0, 12.0, 31.0],
        ),
    ),
    "phi3-window-6": dict(architecture="Phi3ForCausalLM", sliding_window=6),  # prompts of 11 and 23 cross it
    # MoE: Mixtral (4 experts, top-2), and top-1 of 6 with an 8-token window; Qwen2-MoE (shared expert) with
    # layer 1 dense (mlp_only_layers), and with decoder_sparse_step 2 (layers 1, 3 sparse); Qwen3-MoE
    # (norm_topk_prob) top-3 of 8 with layer 0 dense, and tied with attention biases, not renormalised.
    "mixtral": dict(architecture="MixtralForCausalLM", num_hidden_layers=4),
    "mixtral-top1-window": dict(
        architecture="MixtralForCausalLM", num_experts_per_tok=1, num_local_experts=6, sliding_window=8
    ),
    "qwen2-moe": dict(
        architecture="Qwen2MoeForCausalLM", num_hidden_layers=4, decoder_sparse_step=1, mlp_only_layers=[1]
    ),
    "qwen2-moe-step-2": dict(architecture="Qwen2MoeForCausalLM", num_hidden_layers=4, decoder_sparse_step=2),
    "qwen3-moe": dict(
        architecture="Qwen3MoeForCausalLM", num_hidden_layers=4, num_experts_per_tok=3, mlp_only_layers=[0]
    ),
    "qwen3-moe-tied-bias": dict(
        architecture="Qwen3MoeForCausalLM",
        tie_word_embeddings=True,
        attention_bias=True,
        norm_topk_prob=False,
    ),
    # Gemma 2 / 3: HF's own soft-caps (Gemma 2: 50 on scores, 30 on logits), tied as released; 4 layers so
    # local and global layers each appear twice.
    "gemma2": dict(architecture="Gemma2ForCausalLM", tie_word_embeddings=True, num_hidden_layers=4),
    "gemma2-window-6": dict(  # the 23-token prompts cross the window; tighter caps, untied head
        architecture="Gemma2ForCausalLM",
        sliding_window=6,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=4.0,
        num_hidden_layers=4,
    ),
    "gemma3": dict(
        architecture="Gemma3ForCausalLM",
        tie_word_embeddings=True,
        num_hidden_layers=4,
        sliding_window=6,
        rope_parameters=GEMMA3_ROPE,
    ),
    "gemma3-untied-softcap": dict(
        architecture="Gemma3ForCausalLM", final_logit_softcapping=4.0, head_dim=32, attention_bias=True
    ),
    "olmo2": dict(architecture="Olmo2ForCausalLM"),
    "olmo2-tied-bias": dict(
        architecture="Olmo2ForCausalLM", tie_word_embeddings=True, attention_bias=True, head_dim=32
    ),
}


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Return a function variant name -> folder of that tiny checkpoint (built once per session)."""
    from sglkit.testing import make_tiny_model

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            kwargs = dict(VARIANTS[name])
            cache[name] = make_tiny_model(tmp_path_factory.mktemp(name), kwargs.pop("architecture"), **kwargs)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def hf_model():
    """Return a function path -> HF reference model (float32, eval), loaded once per path."""
    from transformers import AutoModelForCausalLM

    cache: dict[str, torch.nn.Module] = {}

    def get(path):
        if str(path) not in cache:
            cache[str(path)] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return cache[str(path)]

    return get


def assert_bfloat16_close_to_hf(path, atol: float = 1e-1) -> None:
    """Our bfloat16 logits of a 30-token prompt through the paged pool vs HF's bfloat16 forward of ``path``: close at
    bfloat16's resolution, no further from HF's float32 logits than HF's own bfloat16 run, same direction.

    On an AVX-512 CPU sglkit's own bfloat16 kernels (attention, fused norm) sum in another order than torch's, so a
    hidden value can land one bfloat16 ulp from HF's and move a logit by a few hundredths; with torch's kernels the
    two runs are bit-equal.
    """
    from transformers import AutoModelForCausalLM

    from sglkit.models import load_model

    model, config = load_model(path, dtype="bfloat16")
    prompt = list(range(10, 40))
    (logits,) = PagedRunner(model, config, dtype=torch.bfloat16).forward([("a", prompt)])
    assert logits.dtype == torch.float32
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)(torch.tensor([prompt])).logits[
            0
        ]
        ref_fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)(
            torch.tensor([prompt])
        ).logits[0]
    torch.testing.assert_close(logits, ref.float(), atol=atol, rtol=2e-2)
    ours_error, hf_error = ((x - ref_fp32).abs().mean() for x in (logits, ref.float()))
    assert ours_error <= 1.1 * hf_error
    assert torch.nn.functional.cosine_similarity(logits, ref_fp32, dim=-1).min() > 0.99


@pytest.fixture
def paged_runner():
    """Return a function (model, config, dtype=float32) -> fresh PagedRunner."""
    return PagedRunner


PROMPT_LENGTHS = (11, 5, 23)


class HFComparison:
    """Our logits (paged, packed) vs HF full-sequence logits for one tiny checkpoint, in four scenarios."""

    def __init__(self, path, hf_model, atol: float = 1e-4, model_impl: str = "auto") -> None:
        from sglkit.models import load_model

        self.model, self.config = load_model(path, dtype="float32", model_impl=model_impl)
        self.hf_model = hf_model
        self.atol = atol
        gen = torch.Generator().manual_seed(0)
        self.prompts = [
            torch.randint(6, self.config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS
        ]

    @torch.no_grad()
    def reference(self, token_ids: list[int]) -> torch.Tensor:
        """[L] -> HF logits [L, V] of the whole sequence."""
        return self.hf_model(torch.tensor([token_ids])).logits[0].float()

    def assert_close(self, ours: torch.Tensor, ref: torch.Tensor) -> None:
        assert ours.dtype == torch.float32 and ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=self.atol, rtol=1e-4)

    def single_prefill(self) -> None:
        """(a) one prompt, one extend pass from an empty cache."""
        (logits,) = PagedRunner(self.model, self.config).forward([("a", self.prompts[0])])
        self.assert_close(logits, self.reference(self.prompts[0]))

    def packed_extend(self) -> None:
        """(b) three prompts of different lengths packed into one extend pass."""
        outs = PagedRunner(self.model, self.config).forward([(i, p) for i, p in enumerate(self.prompts)])
        for logits, prompt in zip(outs, self.prompts, strict=True):
            self.assert_close(logits, self.reference(prompt))

    def prefix_extend(self) -> None:
        """(c) prefix already in the pool: chunked prefill of one request, and a second request sharing it."""
        runner = PagedRunner(self.model, self.config)
        prompt, other = self.prompts[2], self.prompts[0]
        runner.forward([("a", prompt[:9])])
        runner.fork("a", "b", 6)  # "b" reuses a's first 6 KV slots (a radix hit)
        tail_a, tail_b = runner.forward([("a", prompt[9:]), ("b", other)])
        self.assert_close(tail_a, self.reference(prompt)[9:])
        self.assert_close(tail_b, self.reference(prompt[:6] + other)[6:])

    def decode_after_prefill(self) -> None:
        """(d) prefill three prompts, then two decode steps with one new token each."""
        runner = PagedRunner(self.model, self.config)
        runner.forward([(i, p) for i, p in enumerate(self.prompts)])
        seqs = [list(p) for p in self.prompts]
        for step in range(2):
            next_ids = [(7 * i + 3 * step + 40) % self.config.vocab_size for i in range(len(seqs))]
            outs = runner.forward([(i, [t]) for i, t in enumerate(next_ids)], ForwardMode.DECODE)
            for seq, t, logits in zip(seqs, next_ids, outs, strict=True):
                seq.append(t)
                self.assert_close(logits, self.reference(seq)[-1:])


SCENARIOS = (
    "single_prefill",
    "packed_extend",
    "prefix_extend",
    "decode_after_prefill",
)  # test files repeat this


@pytest.fixture(scope="session")
def hf_comparison(tiny_model_path, hf_model):
    """Return a function variant name -> HFComparison (our model loaded once per variant)."""
    cache: dict[str, HFComparison] = {}

    def get(name: str) -> HFComparison:
        if name not in cache:
            path = tiny_model_path(name)
            cache[name] = HFComparison(path, hf_model(path))
        return cache[name]

    return get
