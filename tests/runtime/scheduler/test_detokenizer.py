"""IncrementalDetokenizer against tokenizer.decode (multibyte characters, special tokens, spacing) and stop search."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sglkit.runtime.scheduler.detokenizer import (
    IncrementalDetokenizer,
    find_stop_str,
    partial_stop_len,
    special_token_ids,
)
from sglkit.testing import make_tokenizer

# Accents, CJK and emoji; 🚀 and 🦄 are not in the training corpus, so they fall apart into byte tokens.
TEXTS = [
    "Hello café 日本 東京 🙂 rocket 🚀 naïve Zoë! 🦄🦄 end",
    "日本語のテキスト、そして絵文字 👍🏽 と 🇯🇵 flag",
    "São Paulo → Zürich: 3½ hours… “quoted” ½ Kraków",
]


@pytest.fixture(scope="module")
def tokenizer():
    """The project's tiny byte-level BPE tokenizer (bos <s>, eos <|im_end|>, ChatML specials)."""
    return make_tokenizer()


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A SentencePiece-style tokenizer: decode() drops the leading "▁" space of the first token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world and hello again"] * 50
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def stream(tokenizer, ids, chunk_sizes=None, **kwargs):
    """Feed ids (one at a time or in the given chunk sizes); return (deltas, detokenizer)."""
    det = IncrementalDetokenizer(tokenizer, **kwargs)
    deltas, i = [], 0
    sizes = iter(chunk_sizes or [])
    while i < len(ids):
        size = next(sizes, 1)
        deltas.append(det.append(ids[i : i + size]))
        i += size
    deltas.append(det.flush())
    return deltas, det


@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time_matches_decode_without_replacement_chars(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The fixture is meaningful: some characters span several tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    deltas, det = stream(tokenizer, ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert det.text == text
    assert det.num_tokens == len(ids)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_chunks_match_decode(tokenizer, seed):
    rng = random.Random(seed)
    ids = tokenizer.encode(" ".join(TEXTS), add_special_tokens=False)
    sizes = [rng.randint(1, 4) for _ in ids]
    deltas, _ = stream(tokenizer, ids, sizes)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)


def test_incomplete_character_is_held_until_flush(tokenizer):
    ids = tokenizer.encode("ok 🦄", add_special_tokens=False)
    det = IncrementalDetokenizer(tokenizer)
    assert det.append(ids[:2]) == "ok"
    assert det.append(ids[2:-1]) == ""  # the unicorn's bytes are not all there yet
    assert det.append(ids[-1:]) == " 🦄"
    truncated = ids[:-1]
    det = IncrementalDetokenizer(tokenizer)
    held = det.append(truncated)
    tail = det.flush()
    assert "\ufffd" not in held and "\ufffd" in tail
    assert held + tail == tokenizer.decode(truncated)
    assert det.flush() == ""


def test_prompt_context(tokenizer):
    prompt = tokenizer.encode("Hello café", add_special_tokens=True)
    out = tokenizer.encode(" 日本 🚀 world", add_special_tokens=False)
    deltas, _ = stream(tokenizer, out, prompt_ids=prompt)
    full = tokenizer.decode(prompt + out)
    assert "".join(deltas) == full[len(tokenizer.decode(prompt)) :] == " 日本 🚀 world"


def test_leading_space_tokenizer_uses_context(metaspace_tokenizer):
    tok = metaspace_tokenizer
    ids = tok.encode("hello world and the lazy fox")
    naive = "".join(tok.decode([i]) for i in ids)
    assert naive != tok.decode(ids)  # per-token decoding loses the spaces
    deltas, _ = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids) == "hello world and the lazy fox"
    # After a prompt, the first output word keeps its leading space.
    prompt = tok.encode("the quick brown fox")
    out = tok.encode("jumps over")
    deltas, _ = stream(tok, out, prompt_ids=prompt)
    assert "".join(deltas) == " jumps over"


def chat_ids(tokenizer):
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    body = tokenizer.encode("assistant\nHi 日本", add_special_tokens=False)
    return [start] + body + [end, end] + tokenizer.encode("x", add_special_tokens=False), start, end


def test_special_tokens_skipped(tokenizer):
    ids, _, _ = chat_ids(tokenizer)
    deltas, _ = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == "assistant\nHi 日本x"


def test_special_tokens_kept_without_spaces_equals_decode(tokenizer):
    ids, _, _ = chat_ids(tokenizer)
    deltas, _ = stream(tokenizer, ids, skip_special_tokens=False, spaces_between_special_tokens=False)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=False)
    assert "".join(deltas) == "<|im_start|>assistant\nHi 日本<|im_end|><|im_end|>x"


def test_special_tokens_kept_with_spaces_between(tokenizer):
    ids, _, _ = chat_ids(tokenizer)
    deltas, det = stream(tokenizer, ids, skip_special_tokens=False, spaces_between_special_tokens=True)
    # The slow-tokenizer rule: text runs and special tokens are separate pieces joined by single spaces.
    assert det.text == "<|im_start|> assistant\nHi 日本 <|im_end|> <|im_end|> x"
    assert all("\ufffd" not in d for d in deltas)
    # Same result when everything arrives in one append.
    det = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    assert det.append(ids) + det.flush() == "<|im_start|> assistant\nHi 日本 <|im_end|> <|im_end|> x"


def test_special_token_ids(tokenizer):
    specials = special_token_ids(tokenizer)
    assert set(tokenizer.all_special_ids) <= specials
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in specials
    assert special_token_ids(tokenizer.backend_tokenizer) == specials  # raw tokenizers.Tokenizer


class DecodeLengths:
    """A real tokenizer that records how many ids each decode call sees."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.lengths = []

    def decode(self, ids, **kwargs):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_decode_window_stays_small(tokenizer):
    counting = DecodeLengths(tokenizer)
    ids = tokenizer.encode(" ".join(TEXTS * 8), add_special_tokens=False)
    assert len(ids) > 300
    deltas, _ = stream(counting, ids)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert max(counting.lengths) <= 12


def test_find_stop_str():
    text = "abc STOP def END ghi"
    assert find_stop_str(text, ["END", "STOP"], 0) == (4, "STOP")
    assert find_stop_str(text, ["END", "STOP"], 5) == (13, "END")
    assert find_stop_str(text, ["xyz"], 0) is None
    assert find_stop_str(text, [], 0) is None
    assert find_stop_str(text, ["ST", "STOP"], 0) == (4, "ST")  # same index: first listed wins
    assert find_stop_str(text, ["STOP", "ST"], 0) == (4, "STOP")
    assert find_stop_str(text, ["ghi"], 100) is None
    assert find_stop_str(text, ["abc"], -3) == (0, "abc")
    # Scanning only new text still finds a stop string that straddles the old/new boundary.
    old, new = "hello wor", "ld!"
    start = max(0, len(old) - len("world") + 1)
    assert find_stop_str(old + new, ["world"], start) == (6, "world")
    assert find_stop_str("日本語 END", ["END"], 2) == (4, "END")


def test_partial_stop_len():
    assert partial_stop_len("hello wor", ["world"]) == 3
    assert partial_stop_len("hello world", ["world"]) == 0  # a full match is find_stop_str's job
    assert partial_stop_len("abc", ["xyz"]) == 0
    assert partial_stop_len("a<", ["<|end|>", "<<"]) == 1
    assert partial_stop_len("", ["x"]) == 0


def test_hf_tokenizer_ignores_spaces_between_special_tokens(tokenizer):
    """Why the detokenizer implements the flag itself: transformers 5 fast tokenizers accept and ignore it."""
    ids, _, _ = chat_ids(tokenizer)
    with_flag = tokenizer.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=True)
    assert with_flag == tokenizer.decode(ids, skip_special_tokens=False)


def test_plain_tokenizers_tokenizer_works(tokenizer):
    raw: Tokenizer = tokenizer.backend_tokenizer
    ids = raw.encode(TEXTS[0], add_special_tokens=False).ids
    deltas, _ = stream(raw, ids)
    assert "".join(deltas) == raw.decode(ids) == TEXTS[0]
