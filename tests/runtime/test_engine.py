"""sglkit.Engine behaviour: finish reasons, stop strings, streaming, seeds, n, errors, abort, leaks."""

from __future__ import annotations

import pytest

import sglkit
from sglkit.core.messages import TokenizedGenerateReq
from sglkit.core.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def llm(llama_path):
    with sglkit.Engine(model_path=llama_path, max_total_tokens=2048, random_seed=0) as engine:
        yield engine


def check_leak(llm) -> None:
    ok, detail = llm.scheduler.check_memory_leak()
    assert ok, detail


def greedy(n: int, **extra) -> dict:
    return {"temperature": 0, "max_new_tokens": n, "ignore_eos": True, **extra}


def test_top_k_one_equals_greedy_and_seeds_repeat(llm):
    prompt = "The capital of France is"
    want = llm.generate(prompt, greedy(10))["output_ids"]
    got = llm.generate(prompt, {"temperature": 1.0, "top_k": 1, "max_new_tokens": 10, "ignore_eos": True})
    assert got["output_ids"] == want
    sampled = {"temperature": 1.0, "max_new_tokens": 10, "ignore_eos": True, "sampling_seed": 1234}
    a = llm.generate(prompt, sampled)["output_ids"]
    # Same seed, now alongside other requests in the batch: same tokens.
    batch = llm.generate([prompt, "Hello", "List three"], [sampled, greedy(5), {"max_new_tokens": 7}])
    assert batch[0]["output_ids"] == a
    other = llm.generate(prompt, {**sampled, "sampling_seed": 99})["output_ids"]
    assert other != a
    check_leak(llm)


def test_stop_token_ids_and_stop_strings(llm):
    prompt = "The capital of France is"
    ids = llm.generate(prompt, greedy(12))["output_ids"]
    stop_id = ids[4]
    out = llm.generate(prompt, greedy(12, stop_token_ids=[stop_id]))
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert out["output_ids"][-1] == stop_id and len(out["output_ids"]) == ids.index(stop_id) + 1
    full = llm.generate(prompt, greedy(12))["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    trimmed = llm.generate(prompt, greedy(12, stop=[stop]))
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert trimmed["text"] == full[: full.index(stop)]
    kept = llm.generate(prompt, greedy(12, stop=stop, no_stop_trim=True))
    assert kept["text"] == full[: full.index(stop) + len(stop)]
    # A stream never shows text the final answer trims.
    chunks = list(llm.generate(prompt, greedy(12, stop=[stop]), stream=True))
    assert "".join(c["text"] for c in chunks) == trimmed["text"]
    check_leak(llm)


def test_eos_finishes_unless_ignored(llm):
    eos = sorted(llm.scheduler.eos_token_ids)[0]
    out = llm.generate("Hi", {"temperature": 0, "max_new_tokens": 5, "logit_bias": {str(eos): 100.0}})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": eos}
    assert out["output_ids"] == [eos] and out["text"] == ""
    out = llm.generate(
        "Hi", {"temperature": 0, "max_new_tokens": 5, "ignore_eos": True, "logit_bias": {str(eos): 100.0}}
    )
    assert out["meta_info"]["finish_reason"]["type"] == "length" and len(out["output_ids"]) == 5
    out = llm.generate(
        "Hi", {"temperature": 0, "max_new_tokens": 5, "min_new_tokens": 3, "logit_bias": {str(eos): 100.0}}
    )
    assert len(out["output_ids"]) == 4 and out["output_ids"][-1] == eos


def test_stream_concatenates_to_the_whole(llm):
    prompts = ["The capital of France is", "Numbers like 12 and"]
    whole = llm.generate(prompts, greedy(9))
    chunks = list(llm.generate(prompts, greedy(9), stream=True))
    for i, full in enumerate(whole):
        mine = [c for c in chunks if c["index"] == i]
        assert "".join(c["text"] for c in mine) == full["text"]
        assert sum((c["output_ids"] for c in mine), []) == full["output_ids"]
        assert mine[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]


def test_n_and_input_ids(llm):
    ids = llm.tokenizer.encode("The capital of France is")
    outs = llm.generate(input_ids=ids, sampling_params={"n": 3, "max_new_tokens": 4, "temperature": 1.0})
    assert len(outs) == 3 and all(len(o["output_ids"]) <= 4 for o in outs)
    one = llm.generate(input_ids=ids, sampling_params=greedy(4))
    assert one["meta_info"]["prompt_tokens"] == len(ids)
    check_leak(llm)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"min_new_tokens": 5, "max_new_tokens": 2}, "min_new_tokens"),
        ({"logit_bias": {"999999": 1.0}}, "logit_bias"),
        ({"no_such_param": 1}, "no_such_param"),
    ],
)
def test_invalid_sampling_params_raise_and_engine_keeps_serving(llm, params, field):
    with pytest.raises(ValueError, match=field):
        llm.generate("Hello", params)
    assert llm.generate("Hello", greedy(2))["meta_info"]["completion_tokens"] == 2
    check_leak(llm)


def test_bad_prompts_raise_clear_errors(llm):
    context_len = llm.scheduler.context_len
    with pytest.raises(ValueError, match="longer than the model's context length"):
        llm.generate(input_ids=[5] * (context_len + 1), sampling_params=greedy(2))
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate(input_ids=[5] * (context_len - 4), sampling_params=greedy(10))
    with pytest.raises(ValueError, match="empty"):
        llm.generate("", greedy(2))
    with pytest.raises(ValueError, match="out of vocabulary"):
        llm.generate(input_ids=[1, 10**6], sampling_params=greedy(2))
    with pytest.raises(ValueError, match="input_ids"):
        llm.generate(input_ids=[1, -3], sampling_params=greedy(2))
    assert llm.generate("Hello", greedy(2))["meta_info"]["completion_tokens"] == 2
    check_leak(llm)


def test_abort_frees_kv_and_reports_abort(llm):
    scheduler = llm.scheduler
    params = SamplingParams.from_dict(greedy(50))
    params.normalize()
    for rid in ("a", "b"):
        assert (
            scheduler.add_request(TokenizedGenerateReq(rid, llm.tokenizer.encode("Hello there"), params))
            is None
        )
    scheduler.step()
    scheduler.step()
    outs = scheduler.abort_request("a")
    assert [o.rid for o in outs] == ["a"] and outs[0].meta_info["finish_reason"] == {"type": "abort"}
    outs = scheduler.abort_request(abort_all=True)
    assert [o.rid for o in outs] == ["b"]
    assert scheduler.is_idle()
    check_leak(llm)


def test_early_stop_of_a_stream_releases_the_request(llm):
    stream = llm.generate("The capital", greedy(30), stream=True)
    next(stream)
    stream.close()
    assert llm.scheduler.is_idle()
    check_leak(llm)


def test_flush_and_stats(llm):
    llm.generate(["The capital of France is"] * 2, greedy(3))
    info = llm.get_server_info()
    assert info["num_finished_reqs"] > 0 and info["max_total_num_tokens"] == 2048
    assert llm.flush_cache()
    assert llm.scheduler.tree_cache.total_size() == 0


def test_shutdown_is_final(llama_path):
    engine = sglkit.Engine(model_path=llama_path, max_total_tokens=256)
    engine.shutdown()
    engine.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate("Hello")
