"""Input limits (sglkit/runtime/frontend/input_limits.py): refusals before and during bounded tokenization.

The windowed refusal is checked against the full tokenization for three kinds of tokenizer (byte-level BPE,
WordPiece, Metaspace BPE as in SentencePiece models): a refusal's "at least N tokens" is never more than the text
really has, and an accepted text gets exactly the tokenizer's own ids. Work is measured in characters handed to the
tokenizer, never in seconds.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sglkit.runtime.frontend.embedding_input import EmbeddingInput, build_embedding_requests
from sglkit.runtime.frontend.input_limits import (
    EXACT_COUNT_CHARS,
    WINDOW_CHARS_PER_TOKEN,
    check_num_inputs,
    encode_bounded,
    max_input_chars,
)
from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError, build_requests
from sglkit.testing import make_tokenizer
from sglkit.testing.corpus import build_corpus
from sglkit.testing.tiny_embedding_models import make_bert_tokenizer

SETTINGS = settings(
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def make_metaspace_tokenizer():
    """A SentencePiece-style BPE (Metaspace pre-tokenizer, ``▁`` for spaces) trained on the test corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>"], show_progress=False)
    tok.train_from_iterator(build_corpus(500), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "bytelevel": make_tokenizer(),
        "wordpiece": make_bert_tokenizer(),
        "metaspace": make_metaspace_tokenizer(),
    }


class CountingTokenizer:
    """Wraps a tokenizer and counts the characters it was asked to encode (the work of a request)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.chars, self.calls = tokenizer, 0, 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.chars += len(text)
        self.calls += 1
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def __call__(self, texts, **kwargs):
        self.chars += sum(len(t) for t in texts)
        self.calls += 1
        return self.tokenizer(texts, **kwargs)

    def __len__(self) -> int:
        return len(self.tokenizer)


WORDS = ["the", "capital", "of", "France", "is", "Paris", "naïve", "日本", "x", "((", "ab12", "--", "Ω"]
SPACES = [" ", " ", " ", "\n", "  ", "\t", " \n "]
texts = st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SPACES)), min_size=1, max_size=400).map(
    lambda parts: "".join(w + s for w, s in parts)
)


@pytest.mark.parametrize("kind", ["bytelevel", "wordpiece", "metaspace"])
@SETTINGS
@given(text=texts, context_len=st.integers(4, 48))
def test_bounded_encoding_is_exact_or_a_true_lower_bound(tokenizers, kind, text, context_len):
    tokenizer = tokenizers[kind]
    full = tokenizer.encode(text)
    max_tokens = context_len - 1
    try:
        ids = encode_bounded(tokenizer, text, max_tokens, context_len, "text", exact_chars=0)  # windows
    except InvalidRequestError as e:
        assert e.param == "text"
        assert len(full) > max_tokens, (len(full), str(e))
        if "at least" in str(e):
            at_least = int(str(e).split("at least ")[1].split(" ")[0])
            assert max_tokens < at_least <= len(full)
        else:
            assert len(text) > max_input_chars(context_len)
        return
    assert ids == list(full)


def test_a_huge_text_is_refused_unread(tokenizers):
    """50 MB of text: refused on its length alone; the tokenizer never sees a character."""
    counting = CountingTokenizer(tokenizers["bytelevel"])
    with pytest.raises(
        InvalidRequestError, match=r"\(50000000 characters\) is longer than the model's context"
    ):
        encode_bounded(counting, "a" * 50_000_000, 2047, 2048, "text")
    assert counting.chars == 0


def test_a_long_text_costs_one_window(tokenizers):
    """A text past the exact-count size and under the hard bound: one window is tokenized, then the refusal."""
    counting = CountingTokenizer(tokenizers["bytelevel"])
    context_len = 512
    text = "the capital of France is Paris. " * (EXACT_COUNT_CHARS // 16)
    assert EXACT_COUNT_CHARS < len(text) <= max_input_chars(context_len)
    with pytest.raises(
        InvalidRequestError, match=r"\(at least \d+ tokens\) is longer than the model's context length \(512"
    ):
        encode_bounded(counting, text, context_len - 1, context_len, "text")
    assert counting.calls == 1 and counting.chars <= context_len * WINDOW_CHARS_PER_TOKEN


def test_check_num_inputs_names_the_field():
    check_num_inputs(4, 8, 8, "text")
    check_num_inputs(10**6, 10**6, None, "text")  # no limit
    with pytest.raises(InvalidRequestError, match="The batch has 9 inputs; at most 8 are allowed") as info:
        check_num_inputs(9, 9, 8, "prompt")
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequestError, match="18 samples") as info:
        check_num_inputs(6, 18, 8, "prompt")
    assert info.value.param == "n"


def build(tokenizer, inp: GenerateInput, vocab_size: int | None = None, context_len: int = 2048, **kwargs):
    return build_requests(inp, tokenizer, vocab_size or len(tokenizer), context_len, **kwargs)


def test_too_many_prompts_are_refused_before_tokenizing(tokenizers):
    counting = CountingTokenizer(tokenizers["bytelevel"])
    with pytest.raises(InvalidRequestError, match="The batch has 10000 inputs; at most 2048") as info:
        build(counting, GenerateInput(text=["hello"] * 10_000), max_inputs=2048)
    assert info.value.param == "text" and counting.calls == 0
    with pytest.raises(InvalidRequestError) as info:
        build(counting, GenerateInput(input_ids=[[5, 6]] * 3000), max_inputs=2048)
    assert info.value.param == "input_ids"
    inp = GenerateInput(text=["a", "b", "c"], sampling_params={"n": 3})
    with pytest.raises(InvalidRequestError, match="9 samples") as info:
        build(counting, inp, max_inputs=8)
    assert info.value.param == "n" and counting.calls == 0
    inp = GenerateInput(text=["a", "b"], sampling_params=[{"n": 1}, {"n": 8}])
    with pytest.raises(InvalidRequestError, match="9 samples"):
        build(counting, inp, max_inputs=8)
    assert (
        len(build(counting, GenerateInput(text=["a", "b"], sampling_params={"n": 4}), max_inputs=8)[1]) == 8
    )


def test_generate_text_over_the_context_is_refused_with_bounded_work(tokenizers):
    counting = CountingTokenizer(tokenizers["bytelevel"])
    with pytest.raises(InvalidRequestError, match="characters") as info:
        build(counting, GenerateInput(text=["hi", "a" * 5_000_000]), context_len=256)
    assert info.value.param == "text" and "text[1]" in str(info.value) and counting.chars == 2
    with pytest.raises(InvalidRequestError, match=r"\(at least \d+ tokens\)") as info:
        build(counting, GenerateInput(text="word " * 60_000), context_len=256)
    assert info.value.param == "text"
    with pytest.raises(
        InvalidRequestError, match=r"The input \(\d+ tokens\) is longer than the model's context length"
    ):
        build(counting, GenerateInput(text="word " * 300), context_len=256)  # within one window: exact count


def test_ids_up_to_the_models_vocab_size_are_valid(tokenizers):
    """The model's vocab_size bounds token ids, not the tokenizer's length (ids past it are the model's too)."""
    tokenizer = tokenizers["bytelevel"]
    size = len(tokenizer)
    vocab_size = size + 64
    inp = GenerateInput(
        input_ids=[1, size + 5],
        sampling_params={"stop_token_ids": [size + 1], "logit_bias": {str(size + 2): 1.0}},
        return_logprob=True,
        token_ids_logprob=[size + 3],
    )
    _, reqs, _ = build(tokenizer, inp, vocab_size=vocab_size)
    assert reqs[0].input_ids == [1, size + 5] and reqs[0].token_ids_logprob == [size + 3]
    for bad in (
        GenerateInput(input_ids=[1, vocab_size]),
        GenerateInput(input_ids=[1], sampling_params={"stop_token_ids": [vocab_size]}),
        GenerateInput(input_ids=[1], sampling_params={"logit_bias": {str(vocab_size): 1.0}}),
        GenerateInput(input_ids=[1], return_logprob=True, token_ids_logprob=[vocab_size]),
    ):
        with pytest.raises(InvalidRequestError, match=f"{vocab_size}"):
            build(tokenizer, bad, vocab_size=vocab_size)


def test_embedding_inputs_are_bounded(tokenizers):
    counting = CountingTokenizer(tokenizers["wordpiece"])
    inp = EmbeddingInput(text=["hello", "x" * 10_000_000])
    with pytest.raises(InvalidRequestError, match="characters") as info:
        build_embedding_requests(inp, counting, len(counting), 32, text_param="input", ids_param="input")
    assert info.value.param == "input" and "input[1]" in str(info.value) and counting.chars == 5
    with pytest.raises(InvalidRequestError, match="at most 4 are allowed"):
        build_embedding_requests(
            EmbeddingInput(text=["a"] * 5), counting, len(counting), 32, max_batch_size=4
        )
    _, reqs = build_embedding_requests(EmbeddingInput(text=["hello world"]), counting, len(counting), 32)
    assert reqs[0].input_ids == tokenizers["wordpiece"]("hello world")["input_ids"]
