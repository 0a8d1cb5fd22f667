"""sglkit.Engine with is_embedding=True: encode() batches inputs into prefill passes, equals sentence-transformers on
the real all-MiniLM-L6-v2, refuses bad inputs (and keeps serving), and keeps generation and embedding apart."""

from __future__ import annotations

import pytest
import torch

import sglkit
from tests.embedding_reference import ATOL, TEXTS, hf_reference, minilm_path, tiny_embedding_model, tokenize  # noqa: F401

SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome",
    "Bonjour, comment ça va ?",
    "Embeddings map sentences to vectors so that similar meanings land close together.",
]


@pytest.fixture(scope="module")
def qwen2_path(tiny_embedding_model):  # noqa: F811
    return tiny_embedding_model("Qwen2Model")


@pytest.fixture(scope="module")
def llm(qwen2_path):
    with sglkit.Engine(model_path=qwen2_path, is_embedding=True) as engine:
        yield engine


def test_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = minilm_path()
    expected = (
        SentenceTransformer(path, device="cpu")
        .encode(SENTENCES, normalize_embeddings=True, convert_to_tensor=True)
        .float()
    )
    with sglkit.Engine(model_path=path, is_embedding=True) as engine:
        batch = torch.tensor([o["embedding"] for o in engine.encode(SENTENCES)])
        single = torch.tensor(engine.encode(SENTENCES[1])["embedding"])
        # sentence-transformers truncates at max_seq_length (256); sglkit refuses instead of serving another vector.
        assert engine.scheduler.context_len == 256
        with pytest.raises(
            ValueError, match=r"\(300 tokens\) is longer than the model's context length \(256"
        ):
            engine.encode(input_ids=[101] + [7592] * 298 + [102])
    assert batch.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(batch, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(single, expected[1], atol=ATOL, rtol=0)
    assert torch.nn.functional.cosine_similarity(batch, expected, dim=-1).min() > 0.9999


def test_a_list_runs_as_one_prefill_pass(llm, qwen2_path):
    before = llm.scheduler.forward_ct
    outs = llm.encode(list(TEXTS) * 4)
    assert llm.scheduler.forward_ct == before + 1
    vectors = torch.tensor([o["embedding"] for o in outs])
    torch.testing.assert_close(
        vectors, hf_reference(qwen2_path, tokenize(qwen2_path, TEXTS * 4)), atol=ATOL, rtol=0
    )
    assert len({o["meta_info"]["id"] for o in outs}) == len(outs)
    assert outs[0]["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    ok, detail = llm.scheduler.check_memory_leak()
    assert ok, detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": []}, "The batch of inputs is empty"),
        ({"input_ids": []}, "non-empty list"),
        ({"input_ids": [5, 10**6]}, "out of vocabulary"),
        ({"prompt": "hello " * 3000}, "longer than the model's context length"),
        ({"prompt": ["x"] * 2049}, "at most 2048 are allowed"),
    ],
)
def test_bad_inputs_raise_and_the_engine_keeps_serving(llm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        llm.encode(**kwargs)
    assert llm.scheduler.is_idle()
    assert len(llm.encode("still serving")["embedding"]) == 64


def test_generation_and_embedding_stay_apart(llm, llama_path):
    with pytest.raises(ValueError, match="use encode"):
        llm.generate("Hello", {"max_new_tokens": 2})
    with sglkit.Engine(model_path=llama_path, max_total_tokens=256) as gen:
        with pytest.raises(ValueError, match="is_embedding=True"):
            gen.encode("Hello")


def test_control_methods(llm, qwen2_path, tiny_embedding_model):  # noqa: F811
    assert llm.flush_cache() is True
    info = llm.get_server_info()
    assert info["is_embedding"] is True and info["pooling"] == "last, normalized"
    original = llm.encode("weights")["embedding"]
    other = tiny_embedding_model("Qwen2Model", seed=7)
    assert llm.update_weights_from_disk(other) == (True, "Succeeded to update model weights.")
    assert llm.encode("weights")["embedding"] != original
    assert llm.update_weights_from_disk(qwen2_path)[0]
    assert llm.encode("weights")["embedding"] == original
