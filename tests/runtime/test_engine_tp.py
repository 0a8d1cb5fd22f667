"""sglkit.Engine(tp_size=2) (runtime/scheduler/tp_engine.py, mirror.py, rank_process.py) answers exactly as tp_size=1,
which test_engine_vs_hf.py ties to HF transformers: for every generation architecture, under batching, chunked
prefill, retraction in a tiny KV pool and radix-cache hits; prompt logprobs within 1e-4; no KV leak on any rank;
no rank process outlives its Engine, even when the Engine's process is killed.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

import sglkit
from sglkit.runtime.scheduler.mirror import RankFailedError
from tests.runtime.test_engine_vs_hf import MAX_NEW, WORDS, greedy_params, make_prompts

# (id, architecture, make_tiny_model overrides): head counts divide by 2, except the KV heads of the case with
# one KV head, which every rank keeps whole (replicated).
TP_CASES = [
    ("llama", "LlamaForCausalLM", {}),
    ("llama-1-kv-head", "LlamaForCausalLM", {"num_key_value_heads": 1}),
    ("mistral-window-8", "MistralForCausalLM", {"sliding_window": 8}),
    ("qwen2", "Qwen2ForCausalLM", {}),
    ("qwen3-tied", "Qwen3ForCausalLM", {"tie_word_embeddings": True}),
    ("gemma2-window-8", "Gemma2ForCausalLM", {"sliding_window": 8, "tie_word_embeddings": True}),
    (
        "gemma3-window-8",
        "Gemma3ForCausalLM",
        {"sliding_window": 8, "rope_local_base_freq": 100.0, "final_logit_softcapping": 10.0},
    ),
    ("phi3", "Phi3ForCausalLM", {}),
    ("olmo2", "Olmo2ForCausalLM", {}),
    ("mixtral", "MixtralForCausalLM", {}),
    ("qwen2-moe-dense-layer-1", "Qwen2MoeForCausalLM", {"num_hidden_layers": 3, "mlp_only_layers": (1,)}),
    ("qwen3-moe", "Qwen3MoeForCausalLM", {}),
]
NUM_PROMPTS = 16
# Constrained decoding under tp: every rank compiles and advances its own matcher and masks its own logits.
CONSTRAINED_PARAMS = [
    {"regex": "(yes|no), [0-9]{2,4}", "temperature": 0, "max_new_tokens": 12},
    {
        "json_schema": '{"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}',
        "temperature": 0.8,
        "sampling_seed": 3,
        "max_new_tokens": 16,
    },
    {"ebnf": 'root ::= ("x" | "y"){2,6}', "temperature": 0.8, "sampling_seed": 5, "max_new_tokens": 8},
]
LOGPROB_PROMPT = " ".join(WORDS[:20])


def run_scenario(path: str, tp_size: int) -> dict:
    """Everything the comparison needs from one Engine: two passes over 16 prompts in a tiny KV pool with 8-token
    chunks (retraction, then radix hits), prompt + output logprobs, and the leak check of every rank."""
    prompts = make_prompts(NUM_PROMPTS)
    with sglkit.Engine(
        model_path=path, tp_size=tp_size, max_total_tokens=120, chunked_prefill_size=8, random_seed=0
    ) as llm:
        assert max(len(llm.tokenizer.encode(p)) for p in prompts) > 2 * 8  # prompts are split into chunks
        first = llm.generate(prompts, [greedy_params()] * NUM_PROMPTS)
        retracted = llm.scheduler.stats.num_retracted_reqs
        second = llm.generate(prompts, [greedy_params()] * NUM_PROMPTS)
        logprobs = llm.generate(
            LOGPROB_PROMPT, greedy_params(3), return_logprob=True, logprob_start_len=0, top_logprobs_num=3
        )
        constrained = llm.generate(prompts[:3], CONSTRAINED_PARAMS)
        leak = llm.scheduler.check_memory_leak()
        flushed = llm.flush_cache()
        leak_after_flush = llm.scheduler.check_memory_leak()
        ranks = llm.get_server_info().get("tp_ranks")
    return {
        "first": [(o["output_ids"], o["meta_info"]["cached_tokens"]) for o in first],
        "second": [(o["output_ids"], o["meta_info"]["cached_tokens"]) for o in second],
        "retracted": retracted,
        "logprobs": logprobs,
        "constrained": [o["text"] for o in constrained],
        "leak": leak,
        "flushed": flushed,
        "leak_after_flush": leak_after_flush,
        "ranks": ranks,
    }


@pytest.fixture(scope="module", params=TP_CASES, ids=lambda c: c[0])
def tp_runs(request, tiny_model_factory):
    """(tp_size=1 run, tp_size=2 run) of one architecture."""
    _, arch, kwargs = request.param
    path = tiny_model_factory(arch, **kwargs)
    return run_scenario(path, 1), run_scenario(path, 2)


def test_greedy_tokens_equal_tp1_batched_chunked_and_retracted(tp_runs):
    ref, got = tp_runs
    assert got["first"] == ref["first"]  # the same tokens and the same cache hits: the same schedule
    assert all(len(ids) == MAX_NEW for ids, _ in got["first"])
    assert got["retracted"] == ref["retracted"] > 0


def test_constrained_outputs_equal_tp1(tp_runs):
    ref, got = tp_runs
    assert got["constrained"] == ref["constrained"]
    assert got["constrained"][1] in ('{"a": true}', '{"a": false}')


def test_second_pass_hits_the_radix_cache_on_every_rank_alike(tp_runs):
    ref, got = tp_runs
    assert got["second"] == ref["second"]
    assert [ids for ids, _ in got["second"]] == [ids for ids, _ in ref["first"]]
    assert any(cached > 0 for _, cached in got["second"])


def test_prompt_and_output_logprobs_within_1e_4(tp_runs):
    ref, got = tp_runs
    want, have = ref["logprobs"]["meta_info"], got["logprobs"]["meta_info"]
    assert got["logprobs"]["output_ids"] == ref["logprobs"]["output_ids"]
    for key in ("input_token_logprobs", "output_token_logprobs"):
        assert [t for _, t, _ in have[key]] == [t for _, t, _ in want[key]]
        assert have[key][0][0] is None or key == "output_token_logprobs"
        start = 1 if key == "input_token_logprobs" else 0
        assert torch.allclose(
            torch.tensor([lp for lp, _, _ in have[key][start:]]),
            torch.tensor([lp for lp, _, _ in want[key][start:]]),
            atol=1e-4,
        )
    assert [[t for _, t, _ in top] for top in have["output_top_logprobs"]] == [
        [t for _, t, _ in top] for top in want["output_top_logprobs"]
    ]


def test_no_kv_leak_on_any_rank(tp_runs):
    _, got = tp_runs
    for key in ("leak", "leak_after_flush"):
        ok, detail = got[key]
        assert ok, detail
        assert "TP0:" in detail and "TP1:" in detail
    assert got["flushed"]
    assert [rank["num_cached_tokens"] for rank in got["ranks"]] == [0, 0]  # the flush reached rank 1 too


def _rank_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children()
        if "multiprocessing.spawn" in " ".join(p.cmdline()) and p.is_running()
    ]


def test_shutdown_stops_the_ranks_and_a_dead_rank_fails_the_engine(llama_path):
    before = {p.pid for p in _rank_processes()}
    llm = sglkit.Engine(model_path=llama_path, tp_size=2, max_total_tokens=512, random_seed=0)
    try:
        followers = [p for p in _rank_processes() if p.pid not in before]
        assert len(followers) == 1
        assert os.getsid(followers[0].pid) == followers[0].pid  # its own session: the session watchdog's unit
        assert llm.generate("Hello", greedy_params(2))["output_ids"]
        followers[0].kill()
        followers[0].wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(RankFailedError, match="collective failed"):
            llm.generate("Hello again", greedy_params(2))
        assert time.monotonic() - started < 30  # no hang until the collective timeout
    finally:
        llm.shutdown()
    with sglkit.Engine(model_path=llama_path, tp_size=2, max_total_tokens=512, random_seed=0) as again:
        assert again.generate("Hello", greedy_params(2))["output_ids"]  # a second group in the same process
        followers = [p for p in _rank_processes() if p.pid not in before]
    assert psutil.wait_procs(followers, timeout=10)[1] == []


DRIVER = """
import sys, threading, time
import sglkit

def start():
    llm = sglkit.Engine(model_path=sys.argv[1], tp_size=2, max_total_tokens=512, random_seed=0)
    llm.generate("Hello", {"max_new_tokens": 2})
    print("ready", flush=True)

if __name__ == "__main__":
    # From a non-main thread the parent-death signal would follow that thread, so it is not used: the session
    # watchdog alone must end the rank when this process dies.
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    time.sleep(600)
"""


def test_a_killed_engine_process_leaves_no_rank_behind(llama_path, tmp_path):
    driver_path = tmp_path / "driver.py"
    driver_path.write_text(textwrap.dedent(DRIVER))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    driver = subprocess.Popen(
        [sys.executable, str(driver_path), llama_path], stdout=subprocess.PIPE, text=True, env=env
    )
    ranks: list[psutil.Process] = []
    try:
        ready, _, _ = select.select([driver.stdout], [], [], 180)
        assert ready and driver.stdout.readline().strip() == "ready"
        ranks = [
            p
            for p in psutil.Process(driver.pid).children(recursive=True)
            if "multiprocessing.spawn" in " ".join(p.cmdline())
        ]
        assert len(ranks) == 1
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        assert psutil.wait_procs(ranks, timeout=15)[1] == []
    finally:
        for proc in ranks:
            if proc.is_running():
                proc.kill()
        if driver.poll() is None:
            driver.kill()
        driver.wait(timeout=10)
