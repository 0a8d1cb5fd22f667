"""Output path text (sglkit/runtime/scheduler/output.py): detokenization is lazy (done when an output is built, or
every step only for requests with stop strings / stop_regex) and gives the text a per-token decode gives."""

from __future__ import annotations

import random

import pytest

from sglkit.core.req import Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.scheduler.detokenizer import IncrementalDetokenizer
from sglkit.runtime.scheduler.output import append_token, make_output, should_stream
from sglkit.testing import make_tokenizer

CONTEXT_LEN = 4096


class CountingTokenizer:
    """The tiny tokenizer, counting decode calls."""

    def __init__(self, tokenizer) -> None:
        self.inner, self.num_decodes = tokenizer, 0

    def decode(self, *args, **kwargs):
        self.num_decodes += 1
        return self.inner.decode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def params(**kwargs) -> SamplingParams:
    p = SamplingParams.from_dict({"max_new_tokens": 40, "ignore_eos": True, **kwargs})
    p.normalize()
    return p


def stream_of_ids(tokenizer, seed: int, n: int = 40) -> list[int]:
    text = "Hello café 日本 東京 🙂 rocket 🚀 naïve Zoë! 🦄 and then some more words " * 2
    ids = tokenizer.encode(text, add_special_tokens=False)
    rng = random.Random(seed)
    return [rng.choice(ids + [rng.randrange(len(tokenizer))]) for _ in range(n)]


def per_token_text(tokenizer, prompt: list[int], ids: list[int], p: SamplingParams) -> str:
    detok = IncrementalDetokenizer(tokenizer, prompt, p.skip_special_tokens, p.spaces_between_special_tokens)
    text = "".join(detok.append([t]) for t in ids)
    return text + detok.flush()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_lazy_text_equals_per_token_text(tokenizer, seed, skip_special_tokens):
    p = params(skip_special_tokens=skip_special_tokens)
    prompt = tokenizer.encode("Once upon a time")
    ids = stream_of_ids(tokenizer, seed)
    req = Req(rid="r", origin_input_ids=prompt, sampling_params=p)
    for t in ids:
        append_token(req, t, set(), CONTEXT_LEN, tokenizer)
    assert req.finished()
    assert make_output(req).text_delta == per_token_text(tokenizer, prompt, ids, p)


def test_no_decode_per_step_without_stop_strings(tokenizer):
    counting = CountingTokenizer(tokenizer)
    prompt = tokenizer.encode("Once upon a time")
    ids = tokenizer.encode(
        " there was a small model that wrote words one at a time", add_special_tokens=False
    )
    req = Req(rid="r", origin_input_ids=prompt, sampling_params=params(max_new_tokens=len(ids) + 1))
    for t in ids:
        append_token(req, t, set(), CONTEXT_LEN, counting)
    assert counting.num_decodes == 0 and req.text == ""
    out = make_output(req)  # e.g. an abort: the text so far comes with it
    assert counting.num_decodes <= 2
    assert out.text_delta == req.text == " there was a small model that wrote words one at a time"


def test_streamed_chunks_join_to_the_final_text(tokenizer):
    prompt = tokenizer.encode("Once upon a time")
    ids = stream_of_ids(tokenizer, 3)
    p = params(stream_interval=3)
    req = Req(rid="r", origin_input_ids=prompt, sampling_params=p, stream=True)
    chunks = []
    for t in ids:
        append_token(req, t, set(), CONTEXT_LEN, tokenizer)
        if req.finished() or should_stream(req, 1):
            chunks.append(make_output(req).text_delta)
    assert "".join(chunks) == per_token_text(tokenizer, prompt, ids, p)


def test_stop_strings_still_checked_every_step(tokenizer):
    counting = CountingTokenizer(tokenizer)
    prompt = tokenizer.encode("Once")
    ids = tokenizer.encode(" hello world and the stop word here then more", add_special_tokens=False)
    req = Req(rid="r", origin_input_ids=prompt, sampling_params=params(stop=["stop"]))
    for t in ids:
        append_token(req, t, set(), CONTEXT_LEN, counting)
        if req.finished():
            break
    assert req.finished_reason.type == "stop" and req.finished_reason.matched == "stop"
    assert len(req.output_ids) < len(ids) and counting.num_decodes > 0
    assert make_output(req).text_delta == " hello world and the "
