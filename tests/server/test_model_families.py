"""Every model family served over real HTTP: a server per family answers a chat request rendered by the family's
own chat template (tokens counted as the template renders them) with HF transformers' greedy continuation, and a
native /generate with the same tokens. One server at a time, each stopped before the next starts."""

from __future__ import annotations

import pytest
import requests
import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from sglkit.utils import terminate_process
from tests.server.conftest import start_server

# (id, architecture, make_tiny_model overrides, extra server flags). One case per family.
FAMILY_CASES = [
    ("llama", "LlamaForCausalLM", {}, ()),
    ("mistral-window", "MistralForCausalLM", {"sliding_window": 8}, ()),
    ("qwen2", "Qwen2ForCausalLM", {}, ()),
    ("qwen3", "Qwen3ForCausalLM", {}, ()),
    ("gemma2-window", "Gemma2ForCausalLM", {"sliding_window": 8}, ()),
    ("gemma3-window", "Gemma3ForCausalLM", {"sliding_window": 8}, ()),
    ("olmo2", "Olmo2ForCausalLM", {}, ()),
    ("phi3", "Phi3ForCausalLM", {}, ()),
    ("mixtral", "MixtralForCausalLM", {}, ()),
    ("qwen2-moe", "Qwen2MoeForCausalLM", {}, ()),
    ("qwen3-moe", "Qwen3MoeForCausalLM", {}, ()),
]
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France? Tell me about Paris and its river."},
]
MAX_TOKENS = 10


@pytest.fixture(scope="module", params=FAMILY_CASES, ids=lambda case: case[0])
def family_server(request, tiny_model_factory):
    """(server, HF model, tokenizer) for one family; the server is stopped when the module moves on."""
    _, architecture, overrides, flags = request.param
    path = tiny_model_factory(architecture, **overrides)
    running = start_server(path, "--max-total-tokens 4096", *flags)
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        yield running, hf, AutoTokenizer.from_pretrained(path)
    finally:
        terminate_process(running.process)


@torch.no_grad()
def hf_greedy(hf, input_ids: list[int], num_new: int) -> list[int]:
    """HF greedy continuation by full recomputation."""
    ids = list(input_ids)
    for _ in range(num_new):
        ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(input_ids) :]


def test_chat_through_the_family_template_matches_hf(family_server):
    server, hf, tokenizer = family_server
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer.encode(text, add_special_tokens=False)  # the template writes its own BOS
    want_ids = hf_greedy(hf, prompt_ids, MAX_TOKENS)
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
    chat = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        extra_body={"ignore_eos": True},
    )
    assert chat.usage.prompt_tokens == len(prompt_ids)
    assert chat.usage.completion_tokens == MAX_TOKENS
    assert chat.choices[0].message.content == tokenizer.decode(want_ids, skip_special_tokens=True)

    native = requests.post(
        f"{server.base_url}/generate",
        json={
            "input_ids": prompt_ids,
            "sampling_params": {"temperature": 0, "max_new_tokens": MAX_TOKENS, "ignore_eos": True},
        },
        timeout=60,
    ).json()
    assert native["output_ids"] == want_ids
    assert requests.get(f"{server.base_url}/health", timeout=10).status_code == 200
