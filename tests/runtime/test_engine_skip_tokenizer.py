"""sglkit.Engine(skip_tokenizer_init=True): token ids in, token ids out, on a copy of the tiny model without its
tokenizer files. Same tokens as a normal engine; what needs a tokenizer raises ValueError naming the parameter
(and the engine keeps serving); EOS ids come from the model's config; embeddings take input_ids too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import sglkit
from tests.embedding_reference import tiny_embedding_model  # noqa: F401
from tests.runtime.test_engine import check_leak

PROMPT_IDS = [[10, 11, 12, 13], [40, 41], [7, 300, 301, 302, 303]]
EOS_ID = 5  # the tiny model's eos_token_id (config.json, generation_config.json)
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "chat_template*")


def without_tokenizer(model_path: str, dest: Path) -> str:
    """Copy ``model_path`` to ``dest`` without its tokenizer files."""
    shutil.copytree(model_path, dest)
    for pattern in TOKENIZER_FILES:
        for file in dest.glob(pattern):
            file.unlink()
    assert not list(dest.glob("tokenizer*"))
    return str(dest)


def greedy(n: int, **extra) -> dict:
    return {"temperature": 0, "max_new_tokens": n, "ignore_eos": True, **extra}


@pytest.fixture(scope="module")
def reference(llama_path):
    """Greedy output ids of a normal engine for PROMPT_IDS."""
    with sglkit.Engine(model_path=llama_path, max_total_tokens=2048) as llm:
        return [o["output_ids"] for o in llm.generate(input_ids=PROMPT_IDS, sampling_params=greedy(6))]


@pytest.fixture(scope="module")
def llm(llama_path, tmp_path_factory):
    path = without_tokenizer(llama_path, tmp_path_factory.mktemp("no_tokenizer") / "model")
    with sglkit.Engine(model_path=path, max_total_tokens=2048, skip_tokenizer_init=True) as engine:
        yield engine


def test_no_tokenizer_is_loaded(llm):
    assert llm.tokenizer is None and llm.scheduler.tokenizer is None
    assert llm.scheduler.eos_token_ids == {EOS_ID}  # from config.json and generation_config.json


def test_token_ids_in_and_out(llm, reference):
    one = llm.generate(input_ids=PROMPT_IDS[0], sampling_params=greedy(6))
    assert one["output_ids"] == reference[0] and one["text"] == ""
    assert one["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    batch = llm.generate(input_ids=PROMPT_IDS, sampling_params=greedy(6))
    assert [o["output_ids"] for o in batch] == reference
    chunks = list(llm.generate(input_ids=PROMPT_IDS[2], sampling_params=greedy(6), stream=True))
    assert [i for c in chunks for i in c["output_ids"]] == reference[2]  # the Engine streams deltas
    assert all(c["text"] == "" for c in chunks)
    with_logprobs = llm.generate(
        input_ids=PROMPT_IDS[1], sampling_params=greedy(6), return_logprob=True, top_logprobs_num=2
    )
    entries = with_logprobs["meta_info"]["output_token_logprobs"]
    assert [e[1] for e in entries] == reference[1] and all(e[2] is None for e in entries)
    check_leak(llm)


def test_eos_stop_token_ids_and_min_new_tokens(llm):
    force_eos = {"temperature": 0, "max_new_tokens": 8, "logit_bias": {str(EOS_ID): 100.0}}
    out = llm.generate(input_ids=PROMPT_IDS[0], sampling_params=force_eos)
    assert out["output_ids"] == [EOS_ID]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS_ID}
    held = llm.generate(input_ids=PROMPT_IDS[0], sampling_params={**force_eos, "min_new_tokens": 2})
    assert len(held["output_ids"]) == 3 and held["output_ids"][-1] == EOS_ID
    ids = llm.generate(input_ids=PROMPT_IDS[1], sampling_params=greedy(8))["output_ids"]
    stopped = llm.generate(input_ids=PROMPT_IDS[1], sampling_params=greedy(8, stop_token_ids=[ids[3]]))
    assert stopped["output_ids"] == ids[: ids.index(ids[3]) + 1]
    check_leak(llm)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt": "Hello"}, "text"),
        ({"prompt": ["Hello", "there"]}, "text"),
        ({"input_ids": [10, 11], "sampling_params": {"stop": "x"}}, "stop"),
        ({"input_ids": [10, 11], "sampling_params": {"stop_regex": "[0-9]"}}, "stop_regex"),
        ({"input_ids": [10, 11], "sampling_params": {"regex": "[0-9]+"}}, "regex"),
        ({"input_ids": [10, 11], "sampling_params": {"json_schema": "{}"}}, "json_schema"),
        ({"input_ids": [10, 11], "sampling_params": {"ebnf": 'root ::= "a"'}}, "ebnf"),
    ],
)
def test_refusals_name_the_parameter(llm, kwargs, param):
    with pytest.raises(ValueError, match="--skip-tokenizer-init") as info:
        llm.generate(**kwargs)
    assert info.value.param == param
    assert llm.generate(input_ids=[10], sampling_params=greedy(1))["output_ids"]  # still serving


def test_embedding_engine_takes_input_ids(tiny_embedding_model, tmp_path):  # noqa: F811
    source = tiny_embedding_model("Qwen2Model")
    with sglkit.Engine(model_path=source, is_embedding=True) as normal:
        want = normal.encode(input_ids=[10, 11, 12])["embedding"]
    path = without_tokenizer(source, tmp_path / "embedding")
    with sglkit.Engine(model_path=path, is_embedding=True, skip_tokenizer_init=True) as llm:
        assert llm.tokenizer is None
        assert llm.encode(input_ids=[10, 11, 12])["embedding"] == pytest.approx(want, abs=1e-6)
        with pytest.raises(ValueError, match="--skip-tokenizer-init") as info:
            llm.encode("Hello")
        assert info.value.param == "text"
