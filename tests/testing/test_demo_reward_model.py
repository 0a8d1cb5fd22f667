"""The shipped demo reward model (sglkit/data/demo_reward_model): HF loads it as a one-label
LlamaForSequenceClassification, sglkit's runtime gives HF's scores, and it prefers right answers to wrong ones."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import sglkit
from sglkit.data import DEMO_MODEL_DIR, DEMO_REWARD_MODEL_DIR, demo_reward_model_dir
from tests.testing.conftest import load_script

ATOL = 1e-3

pytestmark = pytest.mark.skipif(
    demo_reward_model_dir() is None, reason="the demo reward model is not trained"
)


@pytest.fixture(scope="module")
def script():
    """The training script as a module (it loads scripts/train_demo_model.py: the fact tables, the formats)."""
    return load_script("train_reward_model")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_REWARD_MODEL_DIR)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        DEMO_REWARD_MODEL_DIR, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def engine():
    """sglkit.Engine serving the reward model (``--is-embedding``: encode() returns the scores)."""
    with sglkit.Engine(
        model_path=str(DEMO_REWARD_MODEL_DIR), is_embedding=True, max_total_tokens=16384, random_seed=0
    ) as llm:
        yield llm


def chats(pairs: list[tuple[str, str]], system: str | None = None) -> list[list[dict[str, str]]]:
    """(question, reply) pairs -> conversations (optionally after a system prompt)."""
    head = [{"role": "system", "content": system}] if system else []
    return [head + [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]


def rewards(engine, tokenizer, conversations) -> torch.Tensor:
    """The rewards of ``conversations``, rendered by the chat template to text, as /classify receives them."""
    prompts = tokenizer.apply_chat_template(conversations, tokenize=False)
    outs = [out for s in range(0, len(prompts), 1024) for out in engine.encode(prompts[s : s + 1024])]
    return torch.tensor([out["embedding"][0] for out in outs])


def test_shipped_files():
    assert demo_reward_model_dir() == DEMO_REWARD_MODEL_DIR
    files = {p.name for p in DEMO_REWARD_MODEL_DIR.iterdir()}
    assert files == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert sum(p.stat().st_size for p in DEMO_REWARD_MODEL_DIR.iterdir()) < 7 * 2**20
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):  # the demo model's tokenizer
        assert (DEMO_REWARD_MODEL_DIR / name).read_bytes() == (DEMO_MODEL_DIR / name).read_bytes()
    config = json.loads((DEMO_REWARD_MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert (config["dtype"], len(config["id2label"]), config["pad_token_id"]) == ("bfloat16", 1, 3)


def test_hf_transformers_loads_it(hf_model, tokenizer):
    assert type(hf_model).__name__ == "LlamaForSequenceClassification"
    assert hf_model.config.num_labels == 1 and hf_model.config.pad_token_id == tokenizer.pad_token_id
    assert hf_model.score.weight.shape == (1, hf_model.config.hidden_size)
    assert 1_000_000 < sum(p.numel() for p in hf_model.parameters()) < 10_000_000


def test_engine_scores_equal_hf(engine, tokenizer, hf_model):
    conversations = chats(
        [
            ("What is the capital of France?", "The capital of France is Berlin."),
            ("What is the capital of France?", "The capital of France is Paris."),
            ("List 3 countries and their capitals.", "1. France: Paris\n2. Germany: Berlin\n3. Italy: Rome"),
            ("Hello!", "Go away."),
        ]
    )
    conversations += chats([("What is 2 + 3?", "2 + 3 = 5.")], system="You are a helpful assistant.")
    got = rewards(engine, tokenizer, conversations)
    prompts = tokenizer.apply_chat_template(conversations, tokenize=False)
    with torch.no_grad():  # HF on each input alone, tokenized as the server does (special tokens added)
        expected = torch.stack(
            [hf_model(torch.tensor([tokenizer(p)["input_ids"]])).logits[0, 0] for p in prompts]
        )
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    ids = tokenizer(prompts[1])["input_ids"]  # token ids in, same score out
    assert engine.encode(input_ids=ids)["embedding"][0] == pytest.approx(got[1].item(), abs=ATOL)


def test_seed_shaped_pair(engine, tokenizer):
    """The notebook's /classify cell: the same question, a wrong and a right answer."""
    berlin, paris = rewards(
        engine,
        tokenizer,
        chats(
            [
                ("What is the capital of France?", "The capital of France is Berlin."),
                ("What is the capital of France?", "The capital of France is Paris."),
            ]
        ),
    ).tolist()
    assert paris > 0 > berlin


def test_right_capital_wins_for_every_country(engine, tokenizer, script):
    demo = script.demo
    table = demo.CAPITALS
    pairs = []
    for i, (country, capital) in enumerate(table):
        question = f"What is the capital of {demo.sentence_name(country)}?"
        wrong = table[(i + 1) % len(table)][1]  # the next country's capital
        pairs += [
            (question, demo.capital_answer(country, capital)),
            (question, demo.capital_answer(country, wrong)),
        ]
    scores = rewards(engine, tokenizer, chats(pairs)).view(-1, 2)
    losers = [country for (country, _), (right, wrong) in zip(table, scores.tolist()) if right <= wrong]
    assert losers == []


def test_right_sum_wins(engine, tokenizer, script):
    """Every a + b against every wrong result 0..20: near misses (off by one or two) are its weak spot."""
    demo = script.demo
    n = demo.MAX_OPERAND
    pairs = [
        (f"What is {a} + {b}?", f"{a} + {b} = {c}.")
        for a in range(n + 1)
        for b in range(n + 1)
        for c in range(2 * n + 1)
    ]
    scores = rewards(engine, tokenizer, chats(pairs)).view(n + 1, n + 1, 2 * n + 1)
    right_sum = torch.arange(n + 1)[:, None] + torch.arange(n + 1)[None, :]  # [a, b]
    right = scores.gather(2, right_sum[..., None])  # [a, b, 1]
    miss = (
        torch.arange(2 * n + 1)[None, None, :] - right_sum[..., None]
    ).abs()  # [a, b, c]: how far c is off
    wins = right > scores
    assert wins[miss > 0].float().mean() > 0.94
    assert wins[miss >= 3].float().mean() > 0.97
    assert (right > 0).float().mean() > 0.9


def test_rude_off_topic_and_truncated_replies_lose(engine, tokenizer):
    question = "What is the capital of Japan?"
    right, *wrong = rewards(
        engine,
        tokenizer,
        chats(
            [
                (question, "The capital of Japan is Tokyo."),
                (question, "I don't care."),
                (question, "Hello! How can I help you today?"),
                (question, "The capital of Japan is"),
            ]
        ),
    ).tolist()
    assert right > 0 and all(w < 0 for w in wrong)
