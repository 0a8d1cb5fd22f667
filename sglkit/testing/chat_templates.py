"""Test fixtures: the chat template each tiny model's tokenizer carries, in its family's own shape.

Role markers of a family's real template (Gemma's ``<start_of_turn>``, Phi-3's ``<|user|>`` ...) are written as
text: the tiny tokenizer has no such special tokens, so they tokenize into ordinary BPE pieces. What matters for
the tests is that the server renders each family's prompt shape through the template the checkpoint ships.
Message content may be a string or a list of OpenAI-style parts ({"type": "text", "text": ...}).
"""

from __future__ import annotations

__all__ = [
    "CHATML_TEMPLATE",
    "DEMO_TEMPLATE",
    "FAMILY_CHAT_TEMPLATES",
    "GEMMA_TEMPLATE",
    "MISTRAL_TEMPLATE",
    "OLMO2_TEMPLATE",
    "PHI3_TEMPLATE",
    "QWEN3_TEMPLATE",
    "QWEN3_THINKING_TEMPLATE",
    "chat_template_for",
]

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

# Mistral / Mixtral instruct: "<s>[INST] user [/INST]assistant</s>[INST] ..."; a system message opens the next
# user turn (its text, a blank line, then the user's text), as the newer Mistral templates do.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[INST] ' }}" + _CONTENT + "{{ '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{% if loop.first or loop.previtem['role'] != 'system' %}{{ '[INST] ' }}{% endif %}"
    + _CONTENT
    + "{{ ' [/INST]' }}"
    "{% else %}" + _CONTENT + "{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

# Phi-3 / Phi-3.5 / Phi-4-mini: "<|system|>\n...<|end|>\n<|user|>\n...<|end|>\n<|assistant|>\n".
PHI3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}" + _CONTENT + "{{ '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Gemma 2 / 3: "<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n"; the assistant role is "model",
# contents are trimmed, roles must alternate, and a system message's text opens the first user turn followed by a
# blank line (Gemma 3's template; Gemma 2's own template rejects a system message).
_GEMMA_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}"
    "{% set first_user_prefix = (system if system is string else system[0]['text']) + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if loop.first %}{{ first_user_prefix }}{% endif %}" + _GEMMA_CONTENT + "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# OLMo 2 instruct (Tulu style): "<|system|>\n...\n<|user|>\n...\n<|assistant|>\n...<eos>\n"; the generation
# prompt is "<|assistant|>\n".
OLMO2_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' }}" + _CONTENT + "{{ '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' }}" + _CONTENT + "{{ '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}" + _CONTENT + "{{ eos_token }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)

# Qwen2.5 / Qwen3 with tools (Hermes style) and thinking: ChatML whose system turn lists the tools in <tools>,
# assistant tool calls rendered as <tool_call>{"name", "arguments"}</tool_call> (arguments given as an object or
# a JSON string), tool results as a user turn of <tool_response> blocks, and previous reasoning_content as a
# <think> block. QWEN3_TEMPLATE leaves thinking to the model (enable_thinking=false closes an empty <think> block
# in the prompt, as Qwen3 does); QWEN3_THINKING_TEMPLATE opens <think> in the prompt (Qwen3 thinking-2507 style).
_QWEN_SYSTEM = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    """{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within """
    """<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": """
    """<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"""
    "{% elif messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
)
# Shared by the Qwen3 and demo templates: the rest of an assistant tool call (after ``fn`` is set), then the tool
# turns as one user turn of <tool_response> blocks.
_TOOL_CALL_AND_RESPONSES = (
    """{{ '<tool_call>\\n{"name": "' + fn['name'] + '", "arguments": ' }}"""
    "{% if fn['arguments'] is string %}{{ fn['arguments'] }}{% else %}{{ fn['arguments'] | tojson }}{% endif %}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or loop.previtem['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' }}" + _CONTENT + "{{ '\\n</tool_response>' }}"
    "{% if loop.last or loop.nextitem['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
)
_QWEN_MESSAGES = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% elif message['role'] == 'user' %}{{ '<|im_start|>user\\n' }}" + _CONTENT + "{{ '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% if message['reasoning_content'] %}"
    "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}{% endif %}"
    + _CONTENT
    + "{% for call in message['tool_calls'] or [] %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{% set fn = call['function'] %}" + _TOOL_CALL_AND_RESPONSES + "{% endif %}"
    "{% endfor %}"
)
_NO_THINKING = (
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
)
QWEN3_TEMPLATE = (
    "{{ bos_token }}"
    + _QWEN_SYSTEM
    + _QWEN_MESSAGES
    + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    + _NO_THINKING
    + "{% endif %}{% endif %}"
)
QWEN3_THINKING_TEMPLATE = (
    "{{ bos_token }}"
    + _QWEN_SYSTEM
    + _QWEN_MESSAGES
    + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    + _NO_THINKING
    + "{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)

# The demo model's template (sglkit/data/demo_model): ChatML, byte for byte, for chats without tools, tool calls or
# reasoning, plus what the demo model was trained to use. ``tools`` are listed compactly in the system turn, one
# line each, ``name(param, ...): description``, then how to call them; assistant tool calls are Qwen2.5/Hermes
# <tool_call> blocks; tool results a user turn of <tool_response> blocks (as Qwen2.5 does); reasoning_content a
# <think> block. Thinking is off unless asked: enable_thinking=true opens "<think>\n" in the generation prompt.
_DEMO_TOOLS = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{% set message = messages[0] %}" + _CONTENT + "{{ '\\n\\n' }}"
    "{% endif %}{{ '# Tools\\n' }}"
    "{% for tool in tools %}"
    "{% set fn = tool['function'] if tool['function'] is defined else tool %}"
    "{% set params = (fn['parameters'] or {})['properties'] or {} %}"
    "{{ fn['name'] + '(' + (params | list | join(', ')) + ')' }}"
    "{% if fn['description'] %}{{ ': ' + fn['description'] }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    """{{ '\\nTo call a tool, answer with <tool_call>\\n{"name": <tool name>, "arguments": <JSON object>}\\n"""
    """</tool_call><|im_end|>\\n' }}"""
    "{% endif %}"
)
_DEMO_MESSAGES = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and loop.first and tools %}"
    "{% elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% if message['reasoning_content'] %}"
    "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}{% endif %}"
    "{% if message['content'] %}" + _CONTENT + "{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    + _TOOL_CALL_AND_RESPONSES
    + "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    + _CONTENT
    + "{{ '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
)
DEMO_TEMPLATE = (
    "{{ bos_token }}"
    + _DEMO_TOOLS
    + _DEMO_MESSAGES
    + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)

# Architecture name -> its family's template shape; architectures not listed use ChatML.
FAMILY_CHAT_TEMPLATES: dict[str, str] = {
    "Gemma2ForCausalLM": GEMMA_TEMPLATE,
    "Gemma3ForCausalLM": GEMMA_TEMPLATE,
    "Olmo2ForCausalLM": OLMO2_TEMPLATE,
    "Phi3ForCausalLM": PHI3_TEMPLATE,
    "MixtralForCausalLM": MISTRAL_TEMPLATE,
}


def chat_template_for(architecture: str) -> str:
    """The chat template a tiny ``architecture`` checkpoint ships (ChatML unless its family has its own)."""
    return FAMILY_CHAT_TEMPLATES.get(architecture, CHATML_TEMPLATE)
