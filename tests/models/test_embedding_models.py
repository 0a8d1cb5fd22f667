"""Embedding and reward models (sglkit/models/llama_embedding.py, bert.py, registry): every architecture served with
``is_embedding=True`` gives HF transformers' vectors / scores within 1e-4 in float32, one input or a batch."""

from __future__ import annotations

import pytest
import torch

import sglkit
from sglkit.models import get_model_class, supported_architectures
from sglkit.models.llama_embedding import LlamaEmbeddingModel, LlamaForSequenceClassification
from sglkit.testing import EMBEDDING_ARCHITECTURES
from tests.embedding_reference import ATOL, CLASSIFIERS, TEXTS, hf_reference, tiny_embedding_model, tokenize  # noqa: F401

# (architecture, make_tiny_embedding_model kwargs): every architecture, plus the other BERT poolings.
CASES = [(arch, {}) for arch in EMBEDDING_ARCHITECTURES] + [
    ("BertModel", {"pooling": "cls", "normalize": False}),
    ("BertModel", {"pooling": "max", "normalize": True}),
]


def case_id(case) -> str:
    arch, kwargs = case
    return arch + "".join(f"-{k}={v}" for k, v in kwargs.items())


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def served(request, tiny_embedding_model):  # noqa: F811
    """(path, kwargs, Engine) for one case; the engine is shut down after the case's tests."""
    arch, kwargs = request.param
    path = tiny_embedding_model(arch, **kwargs)
    engine = sglkit.Engine(model_path=path, is_embedding=True)
    yield path, kwargs, engine
    engine.shutdown()


def reference(path, kwargs, texts) -> torch.Tensor:
    return hf_reference(
        path, tokenize(path, texts), kwargs.get("pooling", "mean"), kwargs.get("normalize", True)
    )


def test_a_batch_matches_hf(served):
    path, kwargs, engine = served
    outs = engine.encode(list(TEXTS))
    assert isinstance(outs, list) and len(outs) == len(TEXTS)
    ours = torch.tensor([o["embedding"] for o in outs])
    torch.testing.assert_close(ours, reference(path, kwargs, TEXTS), atol=ATOL, rtol=0)
    assert [o["meta_info"]["prompt_tokens"] for o in outs] == [len(ids) for ids in tokenize(path, TEXTS)]


def test_a_single_input_matches_hf(served):
    path, kwargs, engine = served
    out = engine.encode(TEXTS[2])
    assert set(out) == {"embedding", "meta_info"}
    torch.testing.assert_close(
        torch.tensor([out["embedding"]]), reference(path, kwargs, TEXTS[2:]), atol=ATOL, rtol=0
    )


def test_token_ids_give_the_same_vectors_as_text(served):
    path, _, engine = served
    ids = tokenize(path, TEXTS[:2])
    by_ids = [o["embedding"] for o in engine.encode(input_ids=ids)]
    by_text = [o["embedding"] for o in engine.encode(list(TEXTS[:2]))]
    torch.testing.assert_close(torch.tensor(by_ids), torch.tensor(by_text), atol=1e-6, rtol=0)


def test_vector_kind_per_architecture(served):
    path, kwargs, engine = served
    vector = torch.tensor(engine.encode("Hello world")["embedding"])
    arch = engine.scheduler.model_runner.model_config.architectures[0]
    if arch in CLASSIFIERS:
        assert vector.shape == (1,)  # num_labels scores, not normalized
    else:
        assert vector.shape == (engine.scheduler.model_runner.model_config.hidden_size,)
        if kwargs.get("normalize", True):
            assert abs(vector.norm().item() - 1.0) < 1e-5


def test_registry_maps_every_architecture_to_an_embedding_class():
    assert set(EMBEDDING_ARCHITECTURES) <= set(supported_architectures(is_embedding=True))
    assert get_model_class(["LlamaForCausalLM"], is_embedding=True) is LlamaEmbeddingModel
    assert (
        get_model_class(["Qwen2ForSequenceClassification"], is_embedding=True).__name__
        == "Qwen2ForSequenceClassification"
    )
    assert issubclass(
        get_model_class(["Qwen2ForSequenceClassification"], is_embedding=True), LlamaForSequenceClassification
    )
    assert get_model_class(["BertModel"], is_embedding=True).__name__ == "BertModel"


@pytest.mark.parametrize("arch", ["BertModel", "LlamaForSequenceClassification", "Qwen2Model"])
def test_embedding_only_architectures_as_generation_models_point_to_is_embedding(arch):
    with pytest.raises(ValueError, match="--is-embedding"):
        get_model_class([arch])


def test_embedding_variants_have_no_lm_head(tiny_embedding_model):  # noqa: F811
    from sglkit.models import load_model

    model, _ = load_model(
        tiny_embedding_model("LlamaForCausalLM"), is_embedding=True
    )  # checkpoint has lm_head
    assert not any(name.startswith("lm_head") for name, _ in model.named_parameters())
    with pytest.raises(RuntimeError, match="embedding model"):
        model.compute_logits(torch.zeros(1, model.config.hidden_size))


@pytest.mark.parametrize("arch", ["MistralForCausalLM", "Qwen3ForCausalLM"])
def test_other_decoders_serve_as_embedders(tiny_model_factory, arch):
    path = tiny_model_factory(arch)
    with sglkit.Engine(model_path=path, is_embedding=True) as engine:
        ours = torch.tensor([o["embedding"] for o in engine.encode(list(TEXTS))])
    torch.testing.assert_close(ours, hf_reference(path, tokenize(path, TEXTS)), atol=ATOL, rtol=0)
