"""Tests for the OpenAI formatting (openai_request, openai_prompt: request -> GenerateInput; openai_response,
openai_logprobs: chunks -> OpenAI objects and stream events) and the routes of sglkit/server/openai_api.py,
driven by the official ``openai`` client through TestClient.

No model and no server: the routes run against ``ScriptedTokenizerManager``, which validates and tokenizes with
the real ``build_requests`` and the tiny test tokenizer, then "generates" a fixed reply in the tokenizer manager's
chunk shape. Every response is also parsed with the ``openai`` package's own types.
"""

from __future__ import annotations

import asyncio
import copy
import json
from types import SimpleNamespace

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from sglkit.runtime.frontend.input_processor import InvalidRequestError, build_requests
from sglkit.server import openai_api
from sglkit.server.errors import install_error_handlers
from sglkit.server.openai_logprobs import MIN_LOGPROB, chat_logprobs, clamp_logprob
from sglkit.server.openai_prompt import apply_chat_template, prompt_texts, template_messages
from sglkit.server.openai_request import (
    chat_to_generate_input,
    check_supported,
    completion_to_generate_input,
    model_error,
    param_names,
    sampling_params_dict,
    to_public_error,
)
from sglkit.server.openai_response import (
    ChatStreamFormatter,
    CompletionStreamFormatter,
    build_chat_response,
    build_completion_response,
    finish_fields,
    usage_from,
)
from sglkit.server.protocol import ChatCompletionRequest, CompletionRequest, validate_request
from sglkit.server.tokenizer_manager import ServerUnavailableError, TokenizerManager
from sglkit.testing.tiny_models import make_tokenizer

SERVED = "tiny-chat"
MODEL_PATH = "/models/tiny"
REPLY = " The capital of France is Paris."


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def chat(body: dict) -> ChatCompletionRequest:
    return validate_request(ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}], **body})


def completion(body: dict) -> CompletionRequest:
    return validate_request(CompletionRequest, body)


# ----------------------------------------------------------------------------- requests -> GenerateInput
def test_sampling_params_use_sglang_names_and_leave_unset_fields_out():
    req = chat(
        {
            "temperature": 0,
            "top_p": 0.9,
            "n": 2,
            "stop": "x",
            "presence_penalty": 0.5,
            "seed": 7,
            "frequency_penalty": -0.5,
            "top_k": 3,
            "min_p": 0.1,
            "min_tokens": 1,
            "repetition_penalty": 1.1,
            "stop_token_ids": [5],
            "ignore_eos": True,
            "skip_special_tokens": False,
            "no_stop_trim": True,
            "logit_bias": {"9": 2.0},
        }
    )
    assert sampling_params_dict(req, 10) == {
        "max_new_tokens": 10,
        "temperature": 0.0,
        "top_p": 0.9,
        "n": 2,
        "stop": "x",
        "presence_penalty": 0.5,
        "sampling_seed": 7,
        "frequency_penalty": -0.5,
        "top_k": 3,
        "min_p": 0.1,
        "min_new_tokens": 1,
        "repetition_penalty": 1.1,
        "stop_token_ids": [5],
        "ignore_eos": True,
        "skip_special_tokens": False,
        "no_stop_trim": True,
        "logit_bias": {"9": 2.0},
    }
    assert sampling_params_dict(chat({}), 3) == {"max_new_tokens": 3}


def test_chat_max_tokens_default_is_the_remaining_context():
    inp = chat_to_generate_input(chat({}), [1, 2, 3], max_context=100)
    assert inp.input_ids == [1, 2, 3] and inp.sampling_params["max_new_tokens"] == 97
    assert chat_to_generate_input(chat({"max_tokens": 5}), [1], 100).sampling_params["max_new_tokens"] == 5
    both = chat({"max_tokens": 5, "max_completion_tokens": 7})
    assert chat_to_generate_input(both, [1], 100).sampling_params["max_new_tokens"] == 7


def test_chat_logprobs_and_stream_flags():
    inp = chat_to_generate_input(
        chat({"logprobs": True, "top_logprobs": 3, "stream": True, "rid": "r1"}), [1], 9
    )
    assert (inp.return_logprob, inp.top_logprobs_num, inp.logprob_start_len, inp.stream, inp.rid) == (
        True,
        3,
        -1,
        True,
        "r1",
    )
    inp = chat_to_generate_input(chat({}), [1], 9)
    assert (inp.return_logprob, inp.top_logprobs_num, inp.stream) == (False, 0, False)


@pytest.mark.parametrize(
    "prompt, text, input_ids",
    [
        ("a", "a", None),
        (["a", "b"], ["a", "b"], None),
        ([1, 2], None, [1, 2]),
        ([[1], [2, 3]], None, [[1], [2, 3]]),
        ([], [], None),
    ],
)
def test_completion_prompt_forms(prompt, text, input_ids):
    inp = completion_to_generate_input(completion({"prompt": prompt}))
    assert (inp.text, inp.input_ids) == (text, input_ids)
    assert inp.sampling_params == {"max_new_tokens": 16}


def test_completion_echo_with_logprobs_scores_the_prompt():
    inp = completion_to_generate_input(
        completion({"prompt": "a", "echo": True, "logprobs": 2, "max_tokens": 0})
    )
    assert (inp.return_logprob, inp.logprob_start_len, inp.top_logprobs_num) == (True, 0, 2)
    assert inp.sampling_params["max_new_tokens"] == 0
    inp = completion_to_generate_input(completion({"prompt": "a", "logprobs": 0}))
    assert (inp.return_logprob, inp.logprob_start_len, inp.top_logprobs_num) == (True, -1, 0)


def test_internal_names_in_errors_become_openai_names():
    err = InvalidRequestError("min_new_tokens must be in [0, max_new_tokens=5], got 7", "min_new_tokens")
    public = to_public_error(err, param_names(chat({})))
    assert (str(public), public.param) == ("min_tokens must be in [0, max_tokens=5], got 7", "min_tokens")
    public = to_public_error(
        InvalidRequestError("The input text is empty.", "text"), param_names(completion({"prompt": ""}))
    )
    assert public.param == "prompt"
    names = param_names(chat({"max_completion_tokens": 3}))
    assert to_public_error(InvalidRequestError("x", "max_new_tokens"), names).param == "max_completion_tokens"


@pytest.mark.parametrize(
    "req, param",
    [
        (chat({"response_format": {"type": "xml"}}), "response_format"),
        (chat({"response_format": {"type": "json_schema"}}), "response_format"),
        (chat({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}), "response_format"),
        (chat({"response_format": {"type": "json_object"}, "regex": "a+"}), "regex"),
        (chat({"regex": "a+", "ebnf": 'root ::= "a"'}), "ebnf"),
        (chat({"top_logprobs": 2}), "top_logprobs"),
        (completion({"prompt": "a", "suffix": "z"}), "suffix"),
        (completion({"prompt": "a", "best_of": 3}), "best_of"),
    ],
)
def test_unsupported_features_are_refused(req, param):
    with pytest.raises(InvalidRequestError) as info:
        check_supported(req)
    assert info.value.param == param


def test_supported_features_pass():
    check_supported(
        chat(
            {"response_format": {"type": "text"}, "tool_choice": "auto", "logprobs": True, "top_logprobs": 2}
        )
    )
    check_supported(completion({"prompt": "a", "suffix": "", "best_of": 1}))


def test_model_names():
    assert model_error(None, SERVED, [MODEL_PATH]) is None
    for name in ("default", SERVED, MODEL_PATH):
        assert model_error(name, SERVED, [MODEL_PATH]) is None
    assert SERVED in model_error("gpt-4o", SERVED, [MODEL_PATH])


def test_template_messages_flatten_text_parts():
    req = validate_request(
        ChatCompletionRequest,
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
            ]
        },
    )
    assert template_messages(req) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]


def test_apply_chat_template_matches_the_tokenizer(tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert apply_chat_template(tokenizer, messages) == list(expected)
    assert apply_chat_template(tokenizer, messages, context_len=2048) == list(expected)  # bounded: same ids


@pytest.mark.parametrize(
    "key, value",
    [
        ("tokenize", False),
        ("chat_template", "{{ 1 }}"),
        ("padding", "max_length"),
        ("max_length", 10**7),
        ("return_tensors", "pt"),
        ("return_dict", True),
        ("truncation", True),
        ("return_assistant_tokens_mask", True),
        ("tokenizer_kwargs", {"padding": "max_length"}),
        ("add_generation_prompt", False),
        ("messages", []),
    ],
)
def test_chat_template_kwargs_refuse_tokenizer_arguments(tokenizer, key, value):
    """A tokenizer argument is never a template variable: 400 naming chat_template_kwargs.<key>, nothing built."""
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidRequestError) as info:
        apply_chat_template(tokenizer, messages, template_kwargs={"enable_thinking": True, key: value})
    assert info.value.param == f"chat_template_kwargs.{key}"
    assert "not a template variable" in str(info.value)


def test_chat_template_kwargs_reach_the_template(tokenizer):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = "{{ greeting }} {{ messages[0]['content'] }}"
    ids = apply_chat_template(
        strict, [{"role": "user", "content": "x"}], template_kwargs={"greeting": "hello"}
    )
    assert tokenizer.decode(ids) == "hello x"


def test_apply_chat_template_errors_are_400_on_messages(tokenizer):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(InvalidRequestError) as info:
        apply_chat_template(strict, [{"role": "user", "content": "x"}])
    assert info.value.param == "messages" and "alternate" in str(info.value)
    strict.chat_template = "{{ messages[0]['content'] + 1 }}"  # a Python error inside the template
    with pytest.raises(InvalidRequestError) as info:
        apply_chat_template(strict, [{"role": "user", "content": "x"}])
    assert info.value.param == "messages" and " at 0x" not in str(info.value)


def test_chat_prompt_over_the_context_is_refused_with_bounded_work(tokenizer):
    """Messages far over the context: refused before rendering (characters) or after a prefix (tokens)."""
    with pytest.raises(InvalidRequestError, match=r"characters\) is longer than the model's context") as info:
        apply_chat_template(tokenizer, [{"role": "user", "content": "word " * 300_000}], context_len=64)
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequestError, match=r"\(at least \d+ tokens\) is longer") as info:
        apply_chat_template(tokenizer, [{"role": "user", "content": "word " * 60_000}], context_len=64)
    assert info.value.param == "messages"


def test_prompt_texts_for_echo(tokenizer):
    def decode(ids):
        return tokenizer.decode(ids)

    assert prompt_texts(completion({"prompt": "a"}), decode) == ["a"]
    assert prompt_texts(completion({"prompt": ["a", "b"]}), decode) == ["a", "b"]
    ids = tokenizer.encode("hello world", add_special_tokens=False)
    assert prompt_texts(completion({"prompt": ids}), decode) == ["hello world"]
    assert prompt_texts(completion({"prompt": [ids, ids]}), decode) == ["hello world"] * 2


# ----------------------------------------------------------------------------- chunks -> responses
def final_chunk(index=0, text="Paris.", matched=5, prompt_tokens=10, completion_tokens=3, **meta) -> dict:
    reason = {"type": "stop", "matched": matched} if matched is not None else {"type": "length", "length": 3}
    return {
        "index": index,
        "text": text,
        "delta": text,
        "output_ids": [7, 8, 5],
        "finished": True,
        "error": None,
        "meta_info": {
            "id": "r",
            "finish_reason": reason,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": 0,
            **meta,
        },
    }


def test_chat_response_has_the_seed_shape():
    resp = build_chat_response("abc", 1736773278, SERVED, [final_chunk()], [0])
    assert resp == {
        "id": "abc",
        "object": "chat.completion",
        "created": 1736773278,
        "model": SERVED,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris.", "tool_calls": None},
                "logprobs": None,
                "finish_reason": "stop",
                "matched_stop": 5,
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "total_tokens": 13,
            "prompt_tokens_details": None,
        },
    }
    ChatCompletion.model_validate(resp)


def test_usage_counts_each_prompt_once():
    finals = [final_chunk(0), final_chunk(1, completion_tokens=4), final_chunk(2, prompt_tokens=6)]
    usage = usage_from({c["index"]: c for c in finals}, owners=[0, 0, 1])
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (16, 10, 26)


def test_finish_fields():
    assert finish_fields({"finish_reason": {"type": "stop", "matched": "\n"}}) == ("stop", "\n")
    assert finish_fields({"finish_reason": {"type": "length", "length": 3}}) == ("length", None)
    assert finish_fields({"finish_reason": {"type": "abort"}}) == ("abort", None)
    assert finish_fields({"finish_reason": None}) == (None, None)


def test_logprobs_are_clamped():
    assert clamp_logprob(None) is None
    assert clamp_logprob(-0.5) == -0.5
    assert clamp_logprob(float("-inf")) == clamp_logprob(float("nan")) == MIN_LOGPROB


def decode_stub(token_id: int) -> str:
    return f"<{token_id}>"


LOGPROB_META = {
    "input_token_logprobs": [[None, 1, None], [-1.0, 2, None]],
    "input_top_logprobs": [None, [[-1.0, 2, None], [-2.0, 3, None]]],
    "output_token_logprobs": [[-0.5, 7, None], [float("-inf"), 8, None]],
    "output_top_logprobs": [[[-0.5, 7, None], [-1.5, 9, None]], [[-0.1, 4, None], [-0.2, 6, None]]],
}


def test_chat_logprobs():
    out = chat_logprobs(LOGPROB_META, decode_stub)
    assert out["content"][0] == {
        "token": "<7>",
        "logprob": -0.5,
        "bytes": list(b"<7>"),
        "top_logprobs": [
            {"token": "<7>", "logprob": -0.5, "bytes": list(b"<7>")},
            {"token": "<9>", "logprob": -1.5, "bytes": list(b"<9>")},
        ],
    }
    assert out["content"][1]["logprob"] == MIN_LOGPROB
    assert [e["token"] for e in chat_logprobs(LOGPROB_META, decode_stub, start=1)["content"]] == ["<8>"]
    no_top = {"output_token_logprobs": [[-0.5, 7, None]], "output_top_logprobs": []}
    assert chat_logprobs(no_top, decode_stub)["content"][0]["top_logprobs"] == []


def test_completion_response_with_echo_and_logprobs():
    chunk = final_chunk(text="<7><8>", **LOGPROB_META)
    resp = build_completion_response(
        "r", 1, SERVED, [chunk], [0], echo_texts=["<1><2>"], decode=decode_stub, logprobs=2
    )
    choice = resp["choices"][0]
    assert choice["text"] == "<1><2><7><8>" and resp["object"] == "text_completion"
    assert choice["logprobs"] == {
        "tokens": ["<1>", "<2>", "<7>", "<8>"],
        "token_logprobs": [None, -1.0, -0.5, MIN_LOGPROB],
        "top_logprobs": [
            None,
            {"<2>": -1.0, "<3>": -2.0},
            {"<7>": -0.5, "<9>": -1.5},
            {"<4>": -0.1, "<6>": -0.2},
        ],
        "text_offset": [0, 3, 6, 9],
    }  # None for the first prompt token, as OpenAI answers
    plain = build_completion_response("r", 1, SERVED, [chunk], [0], decode=decode_stub, logprobs=2)
    assert plain["choices"][0]["text"] == "<7><8>"
    assert plain["choices"][0]["logprobs"]["tokens"] == ["<7>", "<8>"]
    assert plain["choices"][0]["logprobs"]["text_offset"] == [0, 3]
    Completion.model_validate(plain)
    no_top = dict(LOGPROB_META, output_top_logprobs=[])
    zero = build_completion_response(
        "r", 1, SERVED, [final_chunk(**no_top)], [0], decode=decode_stub, logprobs=0
    )
    assert zero["choices"][0]["logprobs"]["top_logprobs"] == [{}, {}]


def stream_chunks(pieces: list[str], index: int = 0, matched=5, **meta) -> list[dict]:
    """Cumulative chunks in the tokenizer manager's shape, one per piece; the last one finished."""
    out, text = [], ""
    for k, piece in enumerate(pieces):
        text += piece
        last = k == len(pieces) - 1
        chunk = final_chunk(index, text=text, matched=matched, completion_tokens=k + 1, **meta)
        chunk.update(delta=piece, finished=last)
        if not last:
            chunk["meta_info"]["finish_reason"] = None
        out.append(chunk)
    return out


def test_chat_stream_events():
    formatter = ChatStreamFormatter("r", 1, SERVED, owners=[0])
    events = [e for c in stream_chunks(["Par", "is", ""]) for e in formatter.on_chunk(c)]
    parsed = [ChatCompletionChunk.model_validate(e) for e in events]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(p.choices[0].delta.content or "" for p in parsed) == "Paris"
    assert [p.choices[0].finish_reason for p in parsed] == [None, None, None, "stop"]
    assert events[-1]["choices"][0]["matched_stop"] == 5 and events[-1]["choices"][0]["delta"] == {}
    usage = formatter.usage_event()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == "r" for e in events + [usage])


def test_chat_stream_skips_empty_chunks_and_sends_logprob_deltas():
    formatter = ChatStreamFormatter("r", 1, SERVED, owners=[0], decode=decode_stub, logprobs=True)
    chunks = stream_chunks(["a", "", "b"], **LOGPROB_META)
    chunks[0]["meta_info"]["output_token_logprobs"] = LOGPROB_META["output_token_logprobs"][:1]
    chunks[1]["meta_info"]["output_token_logprobs"] = LOGPROB_META["output_token_logprobs"][:1]
    assert len(formatter.on_chunk(chunks[0])) == 2  # role chunk + "a"
    assert formatter.on_chunk(chunks[1]) == []  # nothing new
    last = formatter.on_chunk(chunks[2])[0]["choices"][0]
    assert [e["token"] for e in last["logprobs"]["content"]] == ["<8>"] and last["finish_reason"] == "stop"


def test_completion_stream_events_with_echo():
    formatter = CompletionStreamFormatter("r", 1, SERVED, owners=[0, 0], echo_texts=["Q:"])
    events = []
    for a, b in zip(
        stream_chunks(["x", "y"], index=0), stream_chunks(["z", "w"], index=1, matched=None), strict=True
    ):
        events += formatter.on_chunk(a) + formatter.on_chunk(b)
    # OpenAI's Completion type (used for chunks too) only validates finished choices; the client does not validate.
    choices = [e["choices"][0] for e in events]
    assert all(
        set(e) == set(events[-1]) and set(c) == set(choices[-1]) for e, c in zip(events, choices, strict=True)
    )
    for event in events[2:]:
        Completion.model_validate(event)
    texts = {0: "", 1: ""}
    for c in choices:
        texts[c["index"]] += c["text"]
    assert texts == {0: "Q:xy", 1: "Q:zw"}
    assert [c["finish_reason"] for c in choices] == [None, None, "stop", "length"]
    assert formatter.usage_event()["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": None,
    }


# ----------------------------------------------------------------------------- routes, via the openai client
class ScriptedTokenizerManager:
    """The tokenizer manager's interface with real validation (``build_requests``) and a scripted reply:
    every request answers ``REPLY`` + EOS token by token, cut at ``max_new_tokens``."""

    def __init__(self, tokenizer, context_len: int = 256, max_total_num_tokens: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.max_total_num_tokens = max_total_num_tokens
        self.vocab_size = len(tokenizer)
        self.model_path = MODEL_PATH
        self.alive = True
        self.rid_to_queue: dict = {}
        self.error: str | None = None
        self.inputs: list = []

    check_new_rids = TokenizerManager.check_new_rids  # the real duplicate check (it reads rid_to_queue)

    async def tokenize(self, inp):
        if not self.alive:
            raise ServerUnavailableError("The server is unhealthy: the scheduler process died.")
        self.inputs.append(inp)
        return build_requests(inp, self.tokenizer, self.vocab_size, self.context_len)

    def _chunks(self, index: int, req):
        eos = self.tokenizer.eos_token_id
        ids = (self.tokenizer.encode(REPLY, add_special_tokens=False) + [eos])[
            : req.sampling_params.max_new_tokens
        ]
        meta = {"id": req.rid, "prompt_tokens": len(req.input_ids), "cached_tokens": 0}
        if req.return_logprob:
            start = req.logprob_start_len
            meta["input_token_logprobs"] = (
                []
                if start < 0
                else [[None, req.input_ids[0], None]] + [[-1.0, t, None] for t in req.input_ids[1:]]
            )
            meta["input_top_logprobs"] = [] if start < 0 else [None] * len(req.input_ids)
        for k in range(len(ids)):
            done = k == len(ids) - 1
            out = ids[: k + 1]
            text_ids = [t for t in out if t != eos]
            reason = None
            if done:
                reason = (
                    {"type": "stop", "matched": eos}
                    if out[-1] == eos
                    else {"type": "length", "length": len(out)}
                )
            m = dict(meta, finish_reason=reason, completion_tokens=len(out))
            if req.return_logprob:
                m["output_token_logprobs"] = [[-0.25, t, None] for t in out]
                m["output_top_logprobs"] = (
                    [[[-0.25, t, None]] * req.top_logprobs_num for t in out] if req.top_logprobs_num else []
                )
            text = self.tokenizer.decode(text_ids)
            prev = self.tokenizer.decode([t for t in ids[:k] if t != eos])
            yield {
                "index": index,
                "text": text,
                "delta": text[len(prev) :],
                "output_ids": out,
                "meta_info": m,
                "finished": done,
                "error": self.error if done else None,
                "error_status": 400 if done and self.error else None,
            }

    async def run(self, reqs, owners=None, request=None):
        streams = [list(self._chunks(i, r)) for i, r in enumerate(reqs)]
        for step in range(max(len(s) for s in streams)):
            for i, chunks in enumerate(streams):
                if step < len(chunks) and (reqs[i].stream or chunks[step]["finished"]):
                    await asyncio.sleep(0)
                    yield chunks[step]


@pytest.fixture()
def server(tokenizer):
    app = FastAPI()
    app.state.server_args = SimpleNamespace(
        served_model_name=SERVED, model_path=MODEL_PATH, is_embedding=False
    )
    app.state.tokenizer_manager = ScriptedTokenizerManager(tokenizer)
    app.include_router(openai_api.router)
    install_error_handlers(app)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield SimpleNamespace(
            app=app,
            tm=app.state.tokenizer_manager,
            http=http,
            client=openai.OpenAI(
                base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
            ),
        )


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_route(server):
    models = server.client.models.list()
    assert [m.id for m in models.data] == [SERVED]
    body = server.http.get("/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["root"] == MODEL_PATH
    assert body["data"][0]["max_model_len"] == 256 and body["data"][0]["owned_by"] == "sglkit"
    assert server.client.models.retrieve(SERVED).id == SERVED
    with pytest.raises(openai.NotFoundError):
        server.client.models.retrieve("other")


def test_chat_completion_with_the_openai_client(server, tokenizer):
    resp = server.client.chat.completions.create(
        model=SERVED, messages=MESSAGES, temperature=0, max_tokens=64
    )
    choice = resp.choices[0]
    assert choice.message.content == REPLY and choice.finish_reason == "stop"
    assert choice.model_extra["matched_stop"] == tokenizer.eos_token_id
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)[
        "input_ids"
    ]
    assert server.tm.inputs[-1].input_ids == list(prompt_ids)
    assert resp.usage.prompt_tokens == len(prompt_ids)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.model == SERVED and resp.object == "chat.completion"


def test_chat_stream_with_usage(server):
    stream = server.client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=4,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        texts[c.choices[0].index] += c.choices[0].delta.content or ""
    assert texts[0] == texts[1] and len(texts[0]) > 0
    finishes = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert finishes == ["length", "length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_chat_raw_stream_ends_with_done(server):
    with server.http.stream(
        "POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][len("data: ") :])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_chat_logprobs_route(server):
    resp = server.client.chat.completions.create(
        model=SERVED, messages=MESSAGES, max_tokens=3, logprobs=True, top_logprobs=2
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == 3 and len(content[0].top_logprobs) == 2
    assert "".join(c.token for c in content) == resp.choices[0].message.content


def test_completions_route_batch_and_echo(server, tokenizer):
    resp = server.client.completions.create(
        model=SERVED, prompt=["Hello", "Bye"], max_tokens=2, n=2, echo=True
    )
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    reply2 = tokenizer.decode(tokenizer.encode(REPLY, add_special_tokens=False)[:2])
    assert [c.text for c in resp.choices] == ["Hello" + reply2] * 2 + ["Bye" + reply2] * 2
    assert all(c.finish_reason == "length" for c in resp.choices)
    assert resp.usage.completion_tokens == 8 and not resp.id.endswith("-0")
    assert (
        server.client.completions.create(
            model=SERVED, prompt="Hi", max_tokens=1, extra_body={"rid": "abc"}
        ).id
        == "abc"
    )


def test_completion_stream_with_echo_and_logprobs_matches_non_stream(server):
    kwargs = dict(model=SERVED, prompt=["Hello", "Bye"], max_tokens=4, echo=True, logprobs=1)
    full = server.client.completions.create(**kwargs)
    texts, tokens = ["", ""], [[], []]
    for chunk in server.client.completions.create(**kwargs, stream=True):
        choice = chunk.choices[0]
        texts[choice.index] += choice.text
        tokens[choice.index] += choice.logprobs.tokens if choice.logprobs else []
    assert texts == [c.text for c in full.choices]
    assert tokens == [c.logprobs.tokens for c in full.choices]


def test_completions_route_token_prompt_with_echo_and_logprobs(server, tokenizer):
    resp = server.client.completions.create(
        model=SERVED, prompt=[70, 88, 89], max_tokens=3, logprobs=1, echo=True
    )
    choice = resp.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == 6 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset[0] == 0 and len(lp.top_logprobs[-1]) == 1
    assert choice.text.startswith(tokenizer.decode([70, 88, 89]))
    assert server.tm.inputs[-1].logprob_start_len == 0


def test_completion_stream_text_matches_non_stream(server):
    full = server.client.completions.create(model=SERVED, prompt="Hi", max_tokens=5).choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in server.client.completions.create(model=SERVED, prompt="Hi", max_tokens=5, stream=True)
    )
    assert streamed == full


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"model": "gpt-4o"}, "model"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 1000}, "n"),
        ({"max_tokens": 1000}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"extra_body": {"min_tokens": 9}, "max_tokens": 3}, "min_tokens"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_chat_bad_requests(server, kwargs, param):
    kwargs = {"model": SERVED, "messages": MESSAGES, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        server.client.chat.completions.create(**kwargs)
    assert info.value.status_code == 400 and info.value.param == param
    assert info.value.body["type"] == "invalid_request_error"


def test_context_length_errors_have_openai_code(server):
    with pytest.raises(openai.BadRequestError) as info:
        server.client.completions.create(model=SERVED, prompt="word " * 400)
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"


@pytest.mark.parametrize("prompt", ["", [""], [], [[]], [-1]])
def test_empty_or_bad_prompts(server, prompt):
    with pytest.raises(openai.BadRequestError) as info:
        server.client.completions.create(model=SERVED, prompt=prompt)
    assert info.value.param == "prompt"


def test_curl_style_form_content_type_is_parsed_as_json(server):
    body = json.dumps({"model": SERVED, "messages": MESSAGES, "max_tokens": 2})
    resp = server.http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert resp.status_code == 200 and resp.json()["object"] == "chat.completion"


def test_kv_capacity_and_duplicate_rid(server):
    server.tm.max_total_num_tokens = 8
    resp = server.http.post("/v1/completions", json={"prompt": "word " * 20, "max_tokens": 1})
    assert resp.status_code == 400 and "KV cache" in resp.json()["error"]["message"]
    server.tm.max_total_num_tokens = 4096
    resp = server.http.post("/v1/completions", json={"prompt": ["a", "b"], "rid": "same"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "rid"


def test_request_errors_inside_the_runtime(server):
    server.tm.error = "The request does not fit in the KV cache."
    with pytest.raises(openai.BadRequestError):
        server.client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.APIError) as info:
        list(
            server.client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=2, stream=True)
        )
    assert "KV cache" in str(info.value)


def test_unavailable_runtime_is_503(server):
    server.tm.alive = False
    with pytest.raises(openai.InternalServerError) as info:
        server.client.completions.create(model=SERVED, prompt="Hi")
    assert info.value.status_code == 503


def test_async_client(server):
    async def main():
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            client = openai.AsyncOpenAI(
                base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
            )
            resp = await client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=64)
            stream = await client.chat.completions.create(
                model=SERVED, messages=MESSAGES, max_tokens=64, stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
            return resp.choices[0].message.content, streamed

    content, streamed = asyncio.run(main())
    assert content == streamed == REPLY
