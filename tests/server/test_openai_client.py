"""The official ``openai`` client, unchanged, against the real server (sglkit/server/openai_*.py).

Sync and async clients, streaming and not, for /v1/models, /v1/chat/completions and /v1/completions, with the
quick-start seed's cells, logprobs, seeds, SGLang's extras (``extra_body``) and error mapping. Greedy outputs
are cross-checked against the native /generate route on the same token ids.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
import requests
from transformers import AutoTokenizer

MAX_TOKENS = 16
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
COUNTRIES = [{"role": "user", "content": "List 3 countries and their capitals."}]


@pytest.fixture(scope="module")
def client(server):
    """A sync client exactly as the seed makes it (plus max_retries=0 so failures surface at once)."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="None", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def model(server) -> str:
    """The served model name (the model path, as SGLang)."""
    return server.model_path


@pytest.fixture(scope="module")
def tokenizer(server):
    """The HF tokenizer of the served model: the reference for chat-template prompts and token counts."""
    return AutoTokenizer.from_pretrained(server.model_path)


def chat_ids(tokenizer, messages) -> list[int]:
    """The prompt token ids HF builds for ``messages`` (generation prompt added)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def native(server, sampling_params: dict, **body) -> dict:
    """POST /generate and return its JSON (asserting 200)."""
    resp = requests.post(
        f"{server.base_url}/generate", json={"sampling_params": sampling_params, **body}, timeout=60
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


# ----------------------------------------------------------------------------- models
def test_models_list_and_retrieve(client, model, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [model]
    card = models.data[0]
    assert card.object == "model" and card.owned_by
    assert card.model_extra["root"] == server.model_path
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ----------------------------------------------------------------------------- chat
def test_chat_seed_cell_matches_native_generate(client, model, server, tokenizer):
    resp = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=64)
    assert resp.object == "chat.completion" and resp.model == model and resp.id
    (choice,) = resp.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "matched_stop" in choice.model_dump()
    prompt_ids = chat_ids(tokenizer, FRANCE)
    ref = native(server, {"temperature": 0, "max_new_tokens": 64}, input_ids=prompt_ids)
    assert choice.message.content == ref["text"]
    assert choice.finish_reason == ref["meta_info"]["finish_reason"]["type"]
    assert resp.usage.prompt_tokens == len(prompt_ids)
    assert resp.usage.completion_tokens == len(ref["output_ids"])
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_stream_seed_cell(client, model):
    kwargs = dict(model=model, messages=COUNTRIES, temperature=0, max_tokens=64)
    full = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    *content_chunks, usage_chunk = chunks
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content_chunks[1:])
    assert [c.choices[0].finish_reason for c in content_chunks[:-1]] == [None] * (len(content_chunks) - 1)
    last = content_chunks[-1].choices[0]
    assert last.finish_reason == full.choices[0].finish_reason
    assert "matched_stop" in last.model_dump()
    assert (
        "".join(c.choices[0].delta.content or "" for c in content_chunks) == full.choices[0].message.content
    )
    assert {c.id for c in chunks} == {chunks[0].id} and all(
        c.object == "chat.completion.chunk" for c in chunks
    )
    assert usage_chunk.choices == [] and usage_chunk.usage == full.usage
    assert all(c.usage is None for c in content_chunks)


def test_chat_stream_without_include_usage_has_no_usage_chunk(client, model):
    chunks = list(
        client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=8, stream=True)
    )
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_async_client_matches_sync(client, model, server):
    kwargs = dict(model=model, messages=COUNTRIES, temperature=0, max_tokens=MAX_TOKENS)
    sync_text = client.chat.completions.create(**kwargs).choices[0].message.content
    sync_completion = client.completions.create(
        model=model, prompt="Hello", max_tokens=MAX_TOKENS, temperature=0
    )

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="None", max_retries=0) as ac:
            models = await ac.models.list()
            chat = await ac.chat.completions.create(**kwargs)
            stream = await ac.chat.completions.create(**kwargs, stream=True)
            streamed = [c.choices[0].delta.content or "" async for c in stream]
            completion = await ac.completions.create(
                model=model, prompt="Hello", max_tokens=MAX_TOKENS, temperature=0
            )
            both = await asyncio.gather(*(ac.chat.completions.create(**kwargs) for _ in range(3)))
            return models, chat, streamed, completion, both

    models, chat, streamed, completion, both = asyncio.run(run())
    assert models.data[0].id == model
    assert chat.choices[0].message.content == sync_text
    assert "".join(streamed) == sync_text
    assert completion.choices[0].text == sync_completion.choices[0].text
    assert [r.choices[0].message.content for r in both] == [sync_text] * 3


def test_chat_logprobs_and_top_logprobs(client, model):
    resp = client.chat.completions.create(
        model=model, messages=FRANCE, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens == 8
    for entry in content:
        assert len(entry.top_logprobs) == 3
        top = [t.logprob for t in entry.top_logprobs]
        assert top == sorted(top, reverse=True) and all(lp <= 0 for lp in top)
        assert entry.logprob == pytest.approx(top[0], abs=1e-5)  # greedy: the chosen token is the top one
        assert entry.bytes == list(entry.token.encode("utf-8"))
    streamed = client.chat.completions.create(
        model=model, messages=FRANCE, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3, stream=True
    )
    streamed_content = [
        e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed_content] == [e.token for e in content]
    assert [e.logprob for e in streamed_content] == pytest.approx([e.logprob for e in content], abs=1e-4)
    no_lp = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=8)
    assert no_lp.choices[0].logprobs is None


def test_chat_n_choices(client, model):
    resp = client.chat.completions.create(
        model=model, messages=FRANCE, temperature=1.0, max_tokens=8, n=3, seed=11
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 24
    single = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=8)
    assert resp.usage.prompt_tokens == single.usage.prompt_tokens  # the shared prompt counts once
    chunks = list(
        client.chat.completions.create(
            model=model, messages=FRANCE, temperature=0, max_tokens=8, n=2, stream=True
        )
    )
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "length"
        assert "".join(c.delta.content or "" for c in mine) == single.choices[0].message.content


def test_seed_reproducibility(client, model):
    def sample(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=model, messages=COUNTRIES, temperature=1.0, max_tokens=MAX_TOKENS, seed=seed
            )
            .choices[0]
            .message.content
        )

    first = sample(1234)
    assert sample(1234) == first
    assert sample(4321) != first


# ----------------------------------------------------------------------------- SGLang extras
def test_extra_body_sampling_params_reach_the_sampler(client, model, server, tokenizer):
    prompt_ids = chat_ids(tokenizer, COUNTRIES)
    greedy = client.chat.completions.create(
        model=model, messages=COUNTRIES, temperature=0, max_tokens=MAX_TOKENS
    )
    greedy_text = greedy.choices[0].message.content
    # top_k=1 and min_p=1 keep only the most likely token: sampling at temperature 1 becomes greedy.
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        resp = client.chat.completions.create(
            model=model, messages=COUNTRIES, temperature=1.0, max_tokens=MAX_TOKENS, extra_body=extra
        )
        assert resp.choices[0].message.content == greedy_text, extra
    # repetition_penalty changes greedy output exactly as the native route does with the same parameter.
    penalized = client.chat.completions.create(
        model=model,
        messages=COUNTRIES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        extra_body={"repetition_penalty": 2.0},
    )
    ref = native(
        server,
        {"temperature": 0, "max_new_tokens": MAX_TOKENS, "repetition_penalty": 2.0},
        input_ids=prompt_ids,
    )
    assert penalized.choices[0].message.content == ref["text"]


def test_stop_token_ids_and_matched_stop(client, model, server, tokenizer):
    prompt_ids = chat_ids(tokenizer, COUNTRIES)
    ref = native(server, {"temperature": 0, "max_new_tokens": MAX_TOKENS}, input_ids=prompt_ids)
    stop_id = ref["output_ids"][3]
    first = ref["output_ids"].index(stop_id)
    resp = client.chat.completions.create(
        model=model,
        messages=COUNTRIES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        extra_body={"stop_token_ids": [stop_id]},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.model_extra["matched_stop"] == stop_id
    assert resp.usage.completion_tokens == first + 1


def test_ignore_eos(client, model, tokenizer):
    eos = tokenizer.eos_token_id
    bias = {str(eos): 100}  # forces EOS as the first token
    stopped = client.chat.completions.create(
        model=model, messages=FRANCE, temperature=0, max_tokens=8, logit_bias=bias
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].model_extra["matched_stop"] == eos
    assert stopped.usage.completion_tokens == 1 and stopped.choices[0].message.content == ""
    ignored = client.chat.completions.create(
        model=model,
        messages=FRANCE,
        temperature=0,
        max_tokens=8,
        logit_bias=bias,
        extra_body={"ignore_eos": True},
    )
    assert ignored.choices[0].finish_reason == "length"
    assert ignored.choices[0].model_extra["matched_stop"] is None
    assert ignored.usage.completion_tokens == 8


# ----------------------------------------------------------------------------- completions
def test_completion_prompt_forms_agree(client, model, tokenizer):
    prompts = ["Hello", "The capital of France is"]
    singles = [
        client.completions.create(model=model, prompt=p, max_tokens=MAX_TOKENS, temperature=0)
        for p in prompts
    ]
    for resp, prompt in zip(singles, prompts):
        assert resp.object == "text_completion" and len(resp.choices) == 1
        assert resp.usage.prompt_tokens == len(tokenizer(prompt).input_ids)
        assert resp.usage.completion_tokens == MAX_TOKENS and resp.choices[0].finish_reason == "length"
        assert "matched_stop" in resp.choices[0].model_dump()
    texts = [r.choices[0].text for r in singles]
    batch = client.completions.create(model=model, prompt=prompts, max_tokens=MAX_TOKENS, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == texts
    assert batch.usage.prompt_tokens == sum(r.usage.prompt_tokens for r in singles)
    assert batch.usage.completion_tokens == 2 * MAX_TOKENS
    ids = [tokenizer(p).input_ids for p in prompts]
    one_ids = client.completions.create(model=model, prompt=ids[0], max_tokens=MAX_TOKENS, temperature=0)
    assert one_ids.choices[0].text == texts[0]
    many_ids = client.completions.create(model=model, prompt=ids, max_tokens=MAX_TOKENS, temperature=0)
    assert [c.text for c in many_ids.choices] == texts


def test_completion_stream_matches_non_stream(client, model):
    kwargs = dict(model=model, prompt=["Hello", "Paris is"], max_tokens=MAX_TOKENS, temperature=0)
    full = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    *text_chunks, usage_chunk = chunks
    for choice in full.choices:
        mine = [c.choices[0] for c in text_chunks if c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert [c.finish_reason for c in mine[:-1]] == [None] * (len(mine) - 1)
        assert mine[-1].finish_reason == choice.finish_reason
    assert usage_chunk.choices == [] and usage_chunk.usage == full.usage


def test_completion_echo(client, model, tokenizer):
    plain = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0)
    echoed = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == "Hello" + plain.choices[0].text
    streamed = client.completions.create(
        model=model, prompt="Hello", max_tokens=8, temperature=0, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == echoed.choices[0].text
    ids = tokenizer("Hello").input_ids
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=8, temperature=0, echo=True)
    # The echoed prompt is decoded with special tokens skipped, as SGLang does: no "<s>" from the BOS id.
    assert tokenizer.bos_token and ids[0] == tokenizer.bos_token_id
    assert by_ids.choices[0].text == tokenizer.decode(ids, skip_special_tokens=True) + plain.choices[0].text
    assert not by_ids.choices[0].text.startswith(tokenizer.bos_token)


def _check_offsets(logprobs, text: str) -> None:
    """text_offset is non-decreasing, inside the text, and each offset points at its token's text when present."""
    offsets = logprobs.text_offset
    assert offsets == sorted(offsets) and all(0 <= o <= len(text) for o in offsets)
    for token, offset in zip(logprobs.tokens, offsets):
        if token in text:
            assert text.startswith(token, offset) or "\ufffd" in token


def test_completion_logprobs(client, model, tokenizer):
    resp = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0, logprobs=2)
    choice = resp.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and value == pytest.approx(max(top.values()), abs=1e-5)
    _check_offsets(lp, choice.text)
    assert lp.text_offset[0] == 0

    echo = client.completions.create(
        model=model, prompt="Hello", max_tokens=8, temperature=0, logprobs=2, echo=True
    )
    elp = echo.choices[0].logprobs
    num_prompt = len(tokenizer("Hello").input_ids)
    assert len(elp.tokens) == num_prompt + 8
    assert (
        elp.token_logprobs[0] is None and elp.top_logprobs[0] is None
    )  # the first prompt token has no logprob
    assert all(v is not None for v in elp.token_logprobs[1:])
    assert elp.tokens[num_prompt:] == lp.tokens
    assert elp.token_logprobs[num_prompt:] == pytest.approx(lp.token_logprobs, abs=1e-4)
    _check_offsets(elp, echo.choices[0].text)
    assert elp.text_offset[num_prompt] == len("Hello")  # output offsets continue after the echoed prompt

    for kwargs, reference in (({}, lp), ({"echo": True}, elp)):
        chunks = list(
            client.completions.create(
                model=model, prompt="Hello", max_tokens=8, temperature=0, logprobs=2, stream=True, **kwargs
            )
        )
        parts = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
        assert [t for p in parts for t in p.tokens] == reference.tokens
        assert [o for p in parts for o in p.text_offset] == reference.text_offset


def test_completion_n_and_stop(client, model):
    resp = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=1.0, n=3, seed=5)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 24
    assert (
        resp.usage.prompt_tokens
        == client.completions.create(model=model, prompt="Hello", max_tokens=1).usage.prompt_tokens
    )
    batch = client.completions.create(
        model=model, prompt=["Hello", "Paris"], max_tokens=4, temperature=0, n=2
    )
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]  # prompt i, sample j -> i * n + j
    assert batch.choices[0].text == batch.choices[1].text and batch.choices[2].text == batch.choices[3].text

    full = (
        client.completions.create(model=model, prompt="Hello", max_tokens=MAX_TOKENS, temperature=0)
        .choices[0]
        .text
    )
    stop = next(
        full[i : i + 2]
        for i in range(3, len(full) - 1)
        if full[i : i + 2].isprintable() and full[i : i + 2].strip()
    )
    stopped = client.completions.create(
        model=model, prompt="Hello", max_tokens=MAX_TOKENS, temperature=0, stop=[stop]
    )
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["matched_stop"] == stop
    assert choice.text == full[: full.index(stop)]
    streamed = client.completions.create(
        model=model, prompt="Hello", max_tokens=MAX_TOKENS, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == choice.text


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, param, fragment",
    [
        ({"temperature": -1}, "temperature", "temperature"),
        ({"n": 0}, "n", "n must"),
        ({"model": "no-such-model"}, "model", "does not exist"),
        ({"top_logprobs": 3}, "top_logprobs", "logprobs"),
        ({"max_tokens": -1}, "max_tokens", "max_tokens"),
        ({"extra_body": {"top_k": -5}}, "top_k", "top_k"),
        ({"messages": []}, "messages", "messages"),
    ],
)
def test_chat_errors_are_bad_requests(client, model, kwargs, param, fragment):
    call = {"model": model, "messages": FRANCE, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**call)
    err = info.value
    assert err.status_code == 400 and fragment in err.message
    assert err.body["type"] == "invalid_request_error" and err.body["param"] == param


def test_completion_errors_are_bad_requests(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="Hello", max_tokens=10**6)
    assert "context length" in info.value.message and info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=[[1, 2], [10**6]], max_tokens=4)
    assert info.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="Hello", max_tokens=4, stream=True, temperature=-3)
    assert "temperature" in info.value.message
    # The server keeps serving after refusals.
    assert client.completions.create(model=model, prompt="Hello", max_tokens=2).usage.completion_tokens == 2
