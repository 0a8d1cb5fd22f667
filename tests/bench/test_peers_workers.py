"""sglkit.bench.peers workers as subprocesses: the JSON job in, the figures line out, the exit code 2 of a peer
whose library is missing, real sglkit and HF workers on a tiny Llama (same greedy ids), and the llama.cpp /
vLLM-CPU workers when their side venvs exist (skipped with the reason otherwise)."""

from __future__ import annotations

import importlib.util

import pytest

from sglkit.bench.peers.compare import build_job, compare, format_table
from sglkit.bench.peers.runner import PeerUnavailable, local_spec, peer_venv, run_worker
from sglkit.bench.workloads import random_prompts
from sglkit.testing import make_tiny_model


@pytest.fixture(scope="module")
def head64_llama(tmp_path_factory) -> str:
    """A tiny Llama with head_dim 64 (vLLM's CPU attention has no kernel for the default tiny head_dim 16)."""
    path = tmp_path_factory.mktemp("peers") / "llama-head64"
    return str(make_tiny_model(path, hidden_size=128, num_attention_heads=2, num_key_value_heads=1))


def _job(model: str, num_prompts: int = 2, output_len: int = 4) -> dict:
    prompts = random_prompts(num_prompts, 8, 500, seed=0, reserved_ids=set(range(8)))
    return build_job(model, "float32", prompts, output_len, ttft_prompt=prompts[0] * 2)


def test_check_mode_echoes_the_job_with_defaults_in_the_peer_worker():
    # The llama.cpp worker's JSON handling needs no llama_cpp: --check only reads and echoes the job.
    figures = run_worker(local_spec("llama.cpp", "llamacpp_worker"), {"model": "m"}, check_only=True)
    assert figures["peer"] == "llama.cpp"
    assert figures["job"]["model"] == "m" and figures["job"]["figures"] == ["decode", "batch", "ttft"]


def test_worker_without_its_library_raises_not_available(head64_llama):
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama_cpp is importable in this venv")
    with pytest.raises(PeerUnavailable, match=r"llama.cpp: not available: No module named 'llama_cpp'"):
        run_worker(local_spec("llama.cpp", "llamacpp_worker"), {**_job(head64_llama), "gguf": "x.gguf"})


def test_bad_job_is_reported_not_raised():
    figures = run_worker(local_spec("HF transformers", "hf_worker"), {"figures": ["decode"]})
    assert figures["error"].startswith("bad job:")


def test_sglkit_and_hf_workers_agree_on_greedy_ids(head64_llama):
    job = _job(head64_llama)
    results = compare(["sglkit", "hf"], job, log=lambda *_: None)
    for side in ("sglkit", "hf"):
        figures = results[side]
        assert "error" not in figures, figures
        assert figures["batch_output_tokens"] == 2 * 4 and len(figures["decode_outputs"]) == 4
        assert figures["decode_tok_s"] > 0 and figures["ttft_s"] > 0 and figures["peak_rss_mb"] > 100
    assert results["sglkit"]["outputs"] == results["hf"]["outputs"]
    assert "2/2 first, 2/2 all" in format_table(results)[3]


def _peer_or_skip(peer: str) -> None:
    try:
        peer_venv(peer)
    except PeerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_llamacpp_worker_on_a_gguf_of_the_same_weights(head64_llama):
    _peer_or_skip("llamacpp")
    job = _job(head64_llama)
    results = compare(["sglkit", "llamacpp"], job, log=lambda *_: None)
    figures = results["llamacpp"]
    assert "error" not in figures, figures
    assert figures["version"].startswith("llama-cpp-python") and figures["batch_output_tokens"] == 8
    # float32 GGUF of the same weights: the first greedy token of each prompt matches sglkit's
    assert [o[:1] for o in figures["outputs"]] == [o[:1] for o in results["sglkit"]["outputs"]]


@pytest.mark.slow
def test_vllm_worker_on_the_same_folder(head64_llama):
    _peer_or_skip("vllm")
    results = compare(["sglkit", "vllm"], _job(head64_llama), log=lambda *_: None)
    figures = results["vllm"]
    assert "error" not in figures, figures
    assert figures["version"].startswith("vllm") and figures["batch_output_tokens"] == 8
    assert [o[:1] for o in figures["outputs"]] == [o[:1] for o in results["sglkit"]["outputs"]]
