"""Test fixtures: the chat template each tiny model's tokenizer carries, in its family's own shape.

Role markers of a family's real template (Gemma's ``<start_of_turn>``, Phi-3's ``<|user|>`` ...) are written as
text: the tiny tokenizer has no such special tokens, so they tokenize into ordinary BPE pieces. What matters for
the tests is that the server renders each family's prompt shape through the template the checkpoint ships.
Message content may be a string or a list of OpenAI-style parts ({"type": "text", "text": ...}).
"""

from __future__ import annotations

__all__ = ["CHATML_TEMPLATE", "FAMILY_CHAT_TEMPLATES", "PHI3_TEMPLATE", "chat_template_for"]

# Renders a message's content: a string, or the text parts of a list.
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)

# ChatML (Qwen, and the default). Starts with the BOS token, so chat prompts are tokenized without the
# post-processor's BOS.
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}" + _CONTENT + "{{ '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Phi-3 / Phi-3.5 / Phi-4-mini: "<|system|>\n...<|end|>\n<|user|>\n...<|end|>\n<|assistant|>\n".
PHI3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}" + _CONTENT + "{{ '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Architecture name -> its family's template shape; architectures not listed use ChatML.
FAMILY_CHAT_TEMPLATES: dict[str, str] = {
    "Phi3ForCausalLM": PHI3_TEMPLATE,
}


def chat_template_for(architecture: str) -> str:
    """The chat template a tiny ``architecture`` checkpoint ships (ChatML unless its family has its own)."""
    return FAMILY_CHAT_TEMPLATES.get(architecture, CHATML_TEMPLATE)
