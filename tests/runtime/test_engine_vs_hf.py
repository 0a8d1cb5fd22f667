"""Greedy decoding of sglkit.Engine equals HF transformers token for token, for every architecture,
alone, batched, chunked, on radix-cache hits and under KV-pool retraction; prompt logprobs match HF."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sglkit
from sglkit.testing import make_tiny_model


def _phi3_longrope(original_max: int, partial_rotary_factor: float = 1.0, **extra) -> dict:
    """Phi-3 LongRoPE parameters for head_dim 16 (distinct short / long factors per frequency)."""
    half = int(16 * partial_rotary_factor) // 2
    return {
        **extra,
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": partial_rotary_factor,
        "short_factor": [1.0 + 0.3 * ((3 * i) % 5) for i in range(half)],
        "long_factor": [1.5 + 2.5 * i + (i % 3) for i in range(half)],
        "original_max_position_embeddings": original_max,
    }


# (id, architecture, make_tiny_model overrides). Windowed cases use an 8-token window: most prompts (6-60 tokens)
# and every generation run several windows past it, through extend, chunked extend, decode and shared prefixes.
ARCH_CASES = [
    ("llama", "LlamaForCausalLM", {}),
    ("llama-tied", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    ("mistral", "MistralForCausalLM", {}),
    ("mistral-window-8", "MistralForCausalLM", {"sliding_window": 8}),
    ("qwen2", "Qwen2ForCausalLM", {}),
    (
        "qwen2-window-8-layer-1",
        "Qwen2ForCausalLM",
        {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    ),
    ("qwen3-tied", "Qwen3ForCausalLM", {"tie_word_embeddings": True}),
    # Phi-3 (fused qkv / gate_up checkpoints). LongRoPE picks its factor set per request by length; a request
    # crossing original_max after part of it is cached keeps short-rotated keys where HF recomputes (see
    # sglkit.layers.rotary.LongRopeRotaryEmbedding), and chunked prefill or a radix hit can leave any prefix
    # cached. So each case keeps every pass on one side: original_max 1 (every request is longer from its second
    # token; position 0 rotates alike in both sets; attention_factor given, HF's formula divides by ln 1) or 128
    # (every request shorter). tests/models/test_phi3.py covers mixed and crossing requests.
    ("phi3", "Phi3ForCausalLM", {}),
    ("phi3-longrope-long", "Phi3ForCausalLM", {"rope_parameters": _phi3_longrope(1, attention_factor=1.3)}),
    ("phi3-longrope-short", "Phi3ForCausalLM", {"rope_parameters": _phi3_longrope(128)}),
    (
        "phi3-partial-rotary-tied-window-8",  # Phi-4-mini style, with Phi-3-mini-4k's window scaled down
        "Phi3ForCausalLM",
        {
            "rope_parameters": _phi3_longrope(1, partial_rotary_factor=0.75, attention_factor=1.19),
            "tie_word_embeddings": True,
            "sliding_window": 8,
        },
    ),
    # Gemma: local (windowed) and global layers alternate; HF's soft-caps (Gemma 2); local rope base 100 (Gemma 3).
    ("gemma2-window-8", "Gemma2ForCausalLM", {"sliding_window": 8, "tie_word_embeddings": True}),
    (
        "gemma3-window-8",
        "Gemma3ForCausalLM",
        {"sliding_window": 8, "rope_local_base_freq": 100.0, "final_logit_softcapping": 10.0},
    ),
    ("olmo2", "Olmo2ForCausalLM", {}),
    ("mixtral", "MixtralForCausalLM", {}),
    ("qwen2-moe-dense-layer-1", "Qwen2MoeForCausalLM", {"num_hidden_layers": 3, "mlp_only_layers": (1,)}),
    ("qwen3-moe", "Qwen3MoeForCausalLM", {}),
    # Families without an sglkit implementation: model_impl="auto" serves them with the transformers fallback.
    ("gpt-neox", "GPTNeoXForCausalLM", {}),
    ("phi-fallback", "PhiForCausalLM", {}),
    # An "engine_kwargs" entry goes to sglkit.Engine, not to make_tiny_model: Llama forced onto the fallback.
    ("llama-fallback", "LlamaForCausalLM", {"engine_kwargs": {"model_impl": "transformers"}}),
]
# Model folder -> the sglkit.Engine keyword arguments of its case ("engine_kwargs" of ARCH_CASES).
CASE_ENGINE_KWARGS: dict[str, dict] = {}
MAX_NEW = 12
WORDS = (
    "the capital of France is Paris and the capital of Japan is Tokyo while numbers like 12 and 345 "
    "appear in lists of items such as apples pears and plums"
).split()


def make_prompts(num: int) -> list[str]:
    """Prompts of clearly different lengths."""
    return [" ".join(WORDS[(3 * i) % 7 : (3 * i) % 7 + 3 + (5 * i) % 23]) for i in range(num)]


class HFReference:
    """HF transformers greedy decoding by full recomputation (the reference nobody here wrote)."""

    def __init__(self, path: str) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    @torch.no_grad()
    def greedy(self, input_ids: list[int], num_new: int) -> list[int]:
        ids = list(input_ids)
        for _ in range(num_new):
            logits = self.model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
        return ids[len(input_ids) :]

    @torch.no_grad()
    def prompt_logprobs(self, input_ids: list[int]) -> list[float]:
        logits = self.model(torch.tensor([input_ids])).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        return [float(lp[i, input_ids[i + 1]]) for i in range(len(input_ids) - 1)]


def greedy_params(n: int = MAX_NEW) -> dict:
    return {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}


def assert_no_leak(llm) -> None:
    ok, detail = llm.scheduler.check_memory_leak()
    assert ok, detail
    assert llm.flush_cache()
    assert llm.scheduler.allocator.available_size() == llm.scheduler.max_total_num_tokens


@pytest.fixture(scope="module", params=ARCH_CASES, ids=lambda c: c[0])
def arch_case(request, tiny_model_factory, tmp_path_factory):
    case_id, arch, kwargs = request.param
    kwargs = dict(kwargs)
    engine_kwargs = kwargs.pop("engine_kwargs", {})
    if engine_kwargs or any(isinstance(value, dict) for value in kwargs.values()):  # unhashable: built here
        path = str(make_tiny_model(tmp_path_factory.mktemp(case_id), arch, **kwargs))
    else:
        path = tiny_model_factory(arch, **kwargs)
    CASE_ENGINE_KWARGS[str(path)] = engine_kwargs
    return path, HFReference(path)


@pytest.fixture(scope="module")
def reference_outputs(arch_case):
    path, hf = arch_case
    prompts = make_prompts(16)
    ids = [hf.tokenizer.encode(p) for p in prompts]
    return prompts, ids, [hf.greedy(x, MAX_NEW) for x in ids]


def test_single_prompts_match_hf(arch_case, reference_outputs):
    path, _ = arch_case
    prompts, _, expected = reference_outputs
    engine_kwargs = CASE_ENGINE_KWARGS[str(path)]
    with sglkit.Engine(model_path=path, max_total_tokens=4096, random_seed=0, **engine_kwargs) as llm:
        for prompt, want in list(zip(prompts, expected))[:4]:
            out = llm.generate(prompt, greedy_params())
            assert out["output_ids"] == want
            assert out["meta_info"]["finish_reason"] == {"type": "length", "length": MAX_NEW}
        assert_no_leak(llm)


def test_batch_chunked_and_radix_hits_match_hf(arch_case, reference_outputs):
    path, _ = arch_case
    prompts, ids, expected = reference_outputs
    engine_kwargs = {"chunked_prefill_size": 4, **CASE_ENGINE_KWARGS[str(path)]}
    with sglkit.Engine(model_path=path, max_total_tokens=4096, random_seed=0, **engine_kwargs) as llm:
        first = llm.generate(prompts, [greedy_params()] * len(prompts))
        assert [o["output_ids"] for o in first] == expected
        assert min(len(x) for x in ids) > 4  # every prompt was split into chunks
        second = llm.generate(prompts, [greedy_params()] * len(prompts))
        assert [o["output_ids"] for o in second] == expected
        assert all(o["meta_info"]["cached_tokens"] > 0 for o in second)
        assert_no_leak(llm)


def test_retraction_under_a_tiny_kv_pool_matches_hf(arch_case, reference_outputs):
    path, _ = arch_case
    prompts, ids, expected = reference_outputs
    need = sum(len(x) + MAX_NEW for x in ids)
    pool = max(len(x) for x in ids) + MAX_NEW + 40
    assert pool < need / 3
    engine_kwargs = CASE_ENGINE_KWARGS[str(path)]
    with sglkit.Engine(model_path=path, max_total_tokens=pool, random_seed=0, **engine_kwargs) as llm:
        outs = llm.generate(prompts, [greedy_params()] * len(prompts))
        assert [o["output_ids"] for o in outs] == expected
        assert llm.scheduler.stats.num_retracted_reqs > 0
        assert_no_leak(llm)


@pytest.mark.parametrize("chunked_prefill_size", [None, 4], ids=["whole", "chunked"])
def test_prompt_and_output_logprobs_match_hf(arch_case, chunked_prefill_size):
    """Prompt logprobs cover the whole prompt also when it is prefilled in chunks of 4 tokens."""
    path, hf = arch_case
    prompt = " ".join(WORDS[:20])
    input_ids = hf.tokenizer.encode(prompt)
    kwargs = {"chunked_prefill_size": chunked_prefill_size} if chunked_prefill_size else {}
    kwargs.update(CASE_ENGINE_KWARGS[str(path)])
    with sglkit.Engine(model_path=path, max_total_tokens=2048, random_seed=0, **kwargs) as llm:
        out = llm.generate(
            prompt, greedy_params(3), return_logprob=True, logprob_start_len=0, top_logprobs_num=3
        )
        meta = out["meta_info"]
        got = meta["input_token_logprobs"]
        assert got[0][0] is None and got[0][1] == input_ids[0]
        assert [t for _, t, _ in got] == input_ids
        want = hf.prompt_logprobs(input_ids)
        assert torch.allclose(torch.tensor([lp for lp, _, _ in got[1:]]), torch.tensor(want), atol=1e-4)
        full = input_ids + out["output_ids"]
        want_out = hf.prompt_logprobs(full)[len(input_ids) - 1 :]
        got_out = [lp for lp, _, _ in meta["output_token_logprobs"]]
        assert torch.allclose(torch.tensor(got_out), torch.tensor(want_out), atol=1e-4)
        assert all(len(top) == 3 for top in meta["output_top_logprobs"])
        assert meta["output_top_logprobs"][0][0][1] == out["output_ids"][0]  # greedy picks the top-1
        assert_no_leak(llm)


def test_shared_prefix_batch_matches_hf(arch_case):
    """Prompts sharing a long prefix: in-batch deferral, radix hits, and the shared-prefix decode path."""
    path, hf = arch_case
    system = " ".join(WORDS * 2)  # well over 32 tokens
    prompts = [f"{system} {w} {v}" for w, v in zip(WORDS[:6], WORDS[6:12])]
    expected = [hf.greedy(hf.tokenizer.encode(p), MAX_NEW) for p in prompts]
    engine_kwargs = CASE_ENGINE_KWARGS[str(path)]
    with sglkit.Engine(model_path=path, max_total_tokens=4096, random_seed=0, **engine_kwargs) as llm:
        outs = llm.generate(prompts, [greedy_params()] * len(prompts))
        assert [o["output_ids"] for o in outs] == expected
        assert sum(o["meta_info"]["cached_tokens"] > 32 for o in outs) == len(prompts) - 1
        assert_no_leak(llm)


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        {"schedule_policy": "fcfs", "max_running_requests": 3},
        {"schedule_policy": "lpm", "max_prefill_tokens": 24, "chunked_prefill_size": -1},
        {"disable_radix_cache": True, "chunked_prefill_size": 7},
    ],
    ids=["fcfs-3-running", "lpm-small-prefill-budget", "no-radix-chunk7"],
)
def test_scheduler_knobs_keep_outputs(tiny_model_factory, engine_kwargs):
    """Policies and budgets change batching, never the tokens."""
    path = tiny_model_factory("LlamaForCausalLM")
    hf = HFReference(path)
    prompts = make_prompts(10)
    expected = [hf.greedy(hf.tokenizer.encode(p), MAX_NEW) for p in prompts]
    with sglkit.Engine(model_path=path, max_total_tokens=4096, random_seed=0, **engine_kwargs) as llm:
        outs = llm.generate(prompts, [greedy_params()] * len(prompts))
        assert [o["output_ids"] for o in outs] == expected
        assert_no_leak(llm)
