"""Cross-endpoint consistency of the real server (sglkit/server/native_api.py, openai_api.py, tokenizer_manager.py)
and the offline ``sglkit.Engine`` (sglkit/runtime/engine.py): same model, same input, greedy -> same tokens.

Also: a streamed answer (native SSE, OpenAI completions, OpenAI chat) concatenates exactly to the non-streamed one.
"""

from __future__ import annotations

import json

import openai
import pytest
import requests
from transformers import AutoTokenizer

import sglkit

MAX_NEW_TOKENS = 16
GREEDY = {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
PROMPTS = ["The capital of France is", "Once upon a time", "List 3 countries and their capitals."]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}],
]


@pytest.fixture(scope="module")
def client(server):
    """The official OpenAI client on the shared server."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="None", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(server):
    """The HF tokenizer of the served model (the chat template's reference implementation)."""
    return AutoTokenizer.from_pretrained(server.model_path)


@pytest.fixture(scope="module")
def engine(server):
    """The offline engine on the same checkpoint (in this process)."""
    llm = sglkit.Engine(model_path=server.model_path, max_total_tokens=4096, random_seed=0)
    yield llm
    llm.shutdown()


def chat_ids(tokenizer, messages) -> list[int]:
    """The prompt ids HF's chat template gives for ``messages`` (generation prompt added)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def generate(server, **body) -> dict:
    """POST /generate (non-streaming); asserts 200."""
    resp = requests.post(f"{server.base_url}/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def generate_stream(server, **body) -> list[dict]:
    """POST /generate with stream=True: the parsed ``data:`` events before ``[DONE]``."""
    events = []
    with requests.post(
        f"{server.base_url}/generate", json={**body, "stream": True}, stream=True, timeout=60
    ) as resp:
        assert resp.status_code == 200, resp.text
        lines = [line.decode() for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        events.append(json.loads(line[len("data: ") :]))
    return events


@pytest.mark.parametrize("prompt", PROMPTS)
def test_text_prompt_agrees_across_generate_completions_and_engine(server, client, engine, tokenizer, prompt):
    native = generate(server, text=prompt, sampling_params=GREEDY)
    assert len(native["output_ids"]) == MAX_NEW_TOKENS
    assert native["meta_info"]["prompt_tokens"] == len(tokenizer(prompt).input_ids)
    offline = engine.generate(prompt, dict(GREEDY))
    assert offline["output_ids"] == native["output_ids"]
    assert offline["text"] == native["text"]
    by_ids = generate(server, input_ids=tokenizer(prompt).input_ids, sampling_params=GREEDY)
    assert by_ids["output_ids"] == native["output_ids"]
    completion = client.completions.create(
        model=server.model_path,
        prompt=prompt,
        temperature=0,
        max_tokens=MAX_NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert completion.choices[0].text == native["text"]
    assert completion.usage.completion_tokens == MAX_NEW_TOKENS
    assert completion.usage.prompt_tokens == native["meta_info"]["prompt_tokens"]


@pytest.mark.parametrize("messages", CHATS)
def test_chat_agrees_with_templated_generate_and_engine(server, client, engine, tokenizer, messages):
    ids = chat_ids(tokenizer, messages)
    native = generate(server, input_ids=ids, sampling_params=GREEDY)
    offline = engine.generate(input_ids=ids, sampling_params=dict(GREEDY))
    assert offline["output_ids"] == native["output_ids"] and offline["text"] == native["text"]
    chat = client.chat.completions.create(
        model=server.model_path,
        messages=messages,
        temperature=0,
        max_tokens=MAX_NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert chat.choices[0].message.content == native["text"]
    assert chat.usage.prompt_tokens == len(ids) and chat.usage.completion_tokens == MAX_NEW_TOKENS
    completion = client.completions.create(
        model=server.model_path,
        prompt=ids,
        temperature=0,
        max_tokens=MAX_NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert completion.choices[0].text == native["text"]


def test_batch_requests_agree_with_single_ones(server, client, engine):
    singles = [generate(server, text=p, sampling_params=GREEDY) for p in PROMPTS]
    batch = generate(server, text=PROMPTS, sampling_params=GREEDY)
    assert [b["output_ids"] for b in batch] == [s["output_ids"] for s in singles]
    offline = engine.generate(PROMPTS, dict(GREEDY))
    assert [o["output_ids"] for o in offline] == [s["output_ids"] for s in singles]
    completion = client.completions.create(
        model=server.model_path,
        prompt=PROMPTS,
        temperature=0,
        max_tokens=MAX_NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert [c.text for c in completion.choices] == [s["text"] for s in singles]


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_native_and_engine_streams_concatenate_to_the_non_streamed_text(server, engine, prompt):
    full = generate(server, text=prompt, sampling_params=GREEDY)
    events = generate_stream(server, text=prompt, sampling_params=GREEDY)
    texts = [e["text"] for e in events]
    # Cumulative text (as the seed's streaming cell reads it): every event extends the previous one.
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == full["text"]
    assert "".join(b[len(a) :] for a, b in zip([""] + texts, texts)) == full["text"]
    assert events[-1]["output_ids"] == full["output_ids"]
    assert events[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    offline = list(engine.generate(prompt, dict(GREEDY), stream=True))  # deltas, as SGLang's Engine streams
    assert "".join(c["text"] for c in offline) == full["text"]
    assert [i for c in offline for i in c["output_ids"]] == full["output_ids"]


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_openai_completion_stream_concatenates_to_the_non_streamed_text(server, client, prompt):
    kwargs = dict(
        model=server.model_path,
        prompt=prompt,
        temperature=0,
        max_tokens=MAX_NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    full = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("messages", CHATS)
def test_openai_chat_stream_concatenates_to_the_non_streamed_text(server, client, messages):
    kwargs = dict(
        model=server.model_path,
        messages=messages,
        temperature=0,
        max_tokens=MAX_NEW_TOKENS,
        extra_body={"ignore_eos": True},
    )
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"


def test_logprobs_agree_between_native_and_openai(server, client, tokenizer):
    prompt = PROMPTS[0]
    native = generate(server, text=prompt, sampling_params=GREEDY, return_logprob=True, top_logprobs_num=2)
    completion = client.completions.create(
        model=server.model_path,
        prompt=prompt,
        temperature=0,
        max_tokens=MAX_NEW_TOKENS,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    lp = completion.choices[0].logprobs
    triples = native["meta_info"]["output_token_logprobs"]
    assert [t[1] for t in triples] == native["output_ids"]
    assert lp.tokens == [tokenizer.decode([t[1]]) for t in triples]
    assert lp.token_logprobs == pytest.approx([t[0] for t in triples], abs=1e-4)
