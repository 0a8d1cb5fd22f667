"""Family chat templates of the tiny models (sglkit/testing/chat_templates.py), rendered by transformers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import AutoTokenizer

from sglkit.testing import make_tokenizer
from sglkit.testing.chat_templates import GEMMA_TEMPLATE, OLMO2_TEMPLATE, chat_template_for

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hi there \n"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
]


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """template -> function (messages, add_generation_prompt) -> text, through a saved and reloaded tokenizer."""
    cache = {}

    def get(template: str):
        if template not in cache:
            path = tmp_path_factory.mktemp("tok")
            make_tokenizer(path, chat_template=template)
            cache[template] = AutoTokenizer.from_pretrained(path)
        tok = cache[template]
        return lambda messages, gen=True: tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen
        )

    return get


def test_gemma_folds_system_into_first_user_turn(render):
    assert chat_template_for("Gemma2ForCausalLM") == chat_template_for("Gemma3ForCausalLM") == GEMMA_TEMPLATE
    text = render(GEMMA_TEMPLATE)(CONVERSATION)
    assert text == (
        "<s><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert (
        render(GEMMA_TEMPLATE)(CONVERSATION[1:2], gen=False)
        == "<s><start_of_turn>user\nHi there<end_of_turn>\n"
    )


def test_gemma_rejects_roles_that_do_not_alternate(render):
    with pytest.raises(Exception, match="alternate"):
        render(GEMMA_TEMPLATE)([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_olmo2_template_shape(render):
    assert chat_template_for("Olmo2ForCausalLM") == OLMO2_TEMPLATE
    text = render(OLMO2_TEMPLATE)(CONVERSATION)
    assert text == (
        "<s><|system|>\nBe brief.\n<|user|>\n Hi there \n\n<|assistant|>\nHello.<|im_end|>\n"
        "<|user|>\nCapital of France?\n<|assistant|>\n"
    )
    assert render(OLMO2_TEMPLATE)(CONVERSATION[1:3], gen=False).endswith("<|assistant|>\nHello.<|im_end|>")
