"""Test fixtures: tiny random embedding and reward checkpoints in HF format, made locally (no downloads).

``make_tiny_embedding_model(path, architecture)`` writes a folder that HF transformers, sentence-transformers
(for ``BertModel``) and sglkit (``is_embedding=True``) all load:

- ``BertModel``: a BERT encoder with a WordPiece tokenizer ([CLS] text [SEP]) in sentence-transformers layout:
  ``modules.json``, ``1_Pooling/config.json`` (mean, cls, max or lasttoken pooling) and an optional ``Normalize``.
- ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``: the tiny causal LMs of ``make_tiny_model`` (served as embedders).
- ``LlamaModel`` / ``Qwen2Model``: the same decoders as base-model checkpoints (no ``model.`` prefix, no LM head).
- ``LlamaForSequenceClassification`` / ``Qwen2ForSequenceClassification``: decoder + ``score`` head
  (``num_labels`` outputs, 1 by default: a reward model or a cross-encoder for /v1/rerank), with ``pad_token_id``
  set.

``is_matryoshka`` / ``matryoshka_dimensions`` declare Matryoshka support in config.json (the keys SGLang and vLLM
read), so ``dimensions`` on /v1/embeddings truncates the vectors.

Same arguments -> byte-identical files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from sglkit.testing.corpus import build_corpus
from sglkit.testing.tiny_models import INIT_SCALE, PRESETS, make_tiny_model

__all__ = [
    "EMBEDDING_ARCHITECTURES",
    "BERT_SPECIAL_TOKENS",
    "make_bert_tokenizer",
    "make_tiny_embedding_model",
]

EMBEDDING_ARCHITECTURES = (
    "BertModel",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "LlamaModel",
    "Qwen2Model",
    "LlamaForSequenceClassification",
    "Qwen2ForSequenceClassification",
)
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
# Decoder architecture -> the causal LM it is derived from.
_BASE_CAUSAL_LM = {
    "LlamaForCausalLM": "LlamaForCausalLM",
    "Qwen2ForCausalLM": "Qwen2ForCausalLM",
    "LlamaModel": "LlamaForCausalLM",
    "Qwen2Model": "Qwen2ForCausalLM",
    "LlamaForSequenceClassification": "LlamaForCausalLM",
    "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
}


def make_bert_tokenizer(
    path: str | os.PathLike | None = None, vocab_size: int = 512, model_max_length: int = 128
):
    """A tiny uncased WordPiece tokenizer (BERT style) over the fixed corpus; saved to ``path`` if given.

    The vocabulary is built deterministically: the special tokens, every corpus character alone and as a
    ``##`` continuation, then the most frequent whole words. Plain text becomes ``[CLS] ... [SEP]``; ``[PAD]`` is 0.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(
        word
        for line in build_corpus()
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    chars = sorted({c for word in words for c in word})
    vocab_list = list(BERT_SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    frequent = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab_list += frequent[: max(0, vocab_size - len(vocab_list))]
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    if path is not None:
        hf_tok.save_pretrained(str(path))
    return hf_tok


def _random_params(
    shapes: dict[str, tuple[int, ...]], seed: int, initializer_range: float
) -> dict[str, torch.Tensor]:
    """Seeded values for HF parameter names: norms near 1, biases small, weights N(0, initializer_range)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith(("norm.weight", "LayerNorm.weight")):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            state[name] = 0.1 * torch.randn(shape, generator=gen)
        else:
            state[name] = initializer_range * torch.randn(shape, generator=gen)
    return state


def _write_sentence_transformers_layout(
    out: Path, hidden_size: int, pooling: str, normalize: bool, max_seq_length: int
) -> None:
    """modules.json, 1_Pooling/config.json and sentence_bert_config.json."""
    if pooling not in POOLING_FLAGS:
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of {sorted(POOLING_FLAGS)}.")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling_config: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    pooling_config.update({flag: name == pooling for name, flag in POOLING_FLAGS.items()})
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2) + "\n"
    )


def _make_bert(
    out: Path,
    seed: int,
    sizes: dict[str, int],
    pooling: str,
    normalize: bool,
    max_position_embeddings: int,
    hidden_act: str,
) -> None:
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    tokenizer = make_bert_tokenizer(out, model_max_length=max_position_embeddings)
    config = BertConfig(
        architectures=["BertModel"],
        vocab_size=len(tokenizer),
        hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"],
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
        hidden_act=hidden_act,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    with torch.device("meta"):
        meta = BertModel(config)
    shapes = {name: tuple(p.shape) for name, p in meta.named_parameters()}
    init = round(INIT_SCALE / sizes["hidden_size"] ** 0.5, 6)
    save_file(_random_params(shapes, seed, init), str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    _write_sentence_transformers_layout(
        out, sizes["hidden_size"], pooling, normalize, max_position_embeddings
    )


def _make_decoder(out: Path, architecture: str, seed: int, num_labels: int, **kwargs: Any) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    make_tiny_model(out, _BASE_CAUSAL_LM[architecture], seed=seed, **kwargs)
    if architecture.endswith("ForCausalLM"):
        return
    state = load_file(str(out / "model.safetensors"))
    state.pop("lm_head.weight", None)
    config = AutoConfig.from_pretrained(str(out), local_files_only=True)
    if architecture.endswith("Model"):
        state = {name.removeprefix("model."): t for name, t in state.items()}
    else:
        config.num_labels = num_labels
        init = config.initializer_range
        gen = torch.Generator().manual_seed(seed + 1)
        state["score.weight"] = (init * torch.randn((num_labels, config.hidden_size), generator=gen)).to(
            state["model.embed_tokens.weight"].dtype
        )
    config.architectures = [architecture]
    save_file(dict(sorted(state.items())), str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))


def _declare_matryoshka(
    out: Path, is_matryoshka: bool, dimensions: tuple[int, ...] | list[int] | None
) -> None:
    """Add ``is_matryoshka`` / ``matryoshka_dimensions`` to config.json (nothing when neither is set)."""
    if not is_matryoshka and not dimensions:
        return
    config = json.loads((out / "config.json").read_text())
    config["is_matryoshka"] = True
    if dimensions:
        config["matryoshka_dimensions"] = [int(d) for d in dimensions]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_tiny_embedding_model(
    path: str | os.PathLike,
    architecture: str = "BertModel",
    *,
    seed: int = 0,
    pooling: str = "mean",
    normalize: bool = True,
    num_labels: int = 1,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_hidden_layers: int | None = None,
    num_attention_heads: int | None = None,
    max_position_embeddings: int | None = None,
    hidden_act: str = "gelu",
    is_matryoshka: bool = False,
    matryoshka_dimensions: tuple[int, ...] | list[int] | None = None,
    **decoder_kwargs: Any,
) -> Path:
    """Write a tiny random embedding / reward checkpoint of ``architecture`` into ``path``; return the folder.

    ``pooling`` ("mean", "cls", "max", "lasttoken") and ``normalize`` shape the BertModel's sentence-transformers
    layout; ``num_labels`` sizes the score head of the sequence-classification models; ``is_matryoshka`` /
    ``matryoshka_dimensions`` declare Matryoshka support in config.json. Other keyword arguments go to
    ``make_tiny_model`` for the decoder architectures.
    """
    if architecture not in EMBEDDING_ARCHITECTURES:
        raise ValueError(
            f"Unsupported architecture {architecture!r}; choose one of {EMBEDDING_ARCHITECTURES}."
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
    }
    if architecture == "BertModel":
        sizes = {k: PRESETS["tiny"][k] if v is None else v for k, v in sizes.items()}
        _make_bert(out, seed, sizes, pooling, normalize, max_position_embeddings or 128, hidden_act)
    else:
        given = {k: v for k, v in sizes.items() if v is not None}
        if max_position_embeddings is not None:
            given["max_position_embeddings"] = max_position_embeddings
        _make_decoder(out, architecture, seed, num_labels, **given, **decoder_kwargs)
    _declare_matryoshka(out, is_matryoshka, matryoshka_dimensions)
    return out
