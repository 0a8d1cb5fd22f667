"""Tokenizer loading for the front end and the scheduler: local HF tokenizers, chat-template override, EOS ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import AutoTokenizer


def load_tokenizer(tokenizer_path: str, chat_template: str | None = None):
    """Load a local HF tokenizer (never from the hub); ``chat_template`` is a file path or an inline Jinja string."""
    if tokenizer_path is None or not Path(tokenizer_path).is_dir():
        raise FileNotFoundError(f"Tokenizer folder not found: {tokenizer_path!r}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    if chat_template:
        if os.path.isfile(chat_template):
            chat_template = Path(chat_template).read_text()
        tokenizer.chat_template = chat_template
    return tokenizer


def get_eos_token_ids(config, tokenizer, model_path: str | None) -> set[int]:
    """EOS ids from the model config, generation_config.json and the tokenizer."""
    ids: set[int] = set()

    def add(value) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))

    add(getattr(config, "eos_token_id", None))
    gen_path = Path(model_path or "") / "generation_config.json"
    if gen_path.is_file():
        add(json.loads(gen_path.read_text()).get("eos_token_id"))
    add(getattr(tokenizer, "eos_token_id", None))
    return ids
