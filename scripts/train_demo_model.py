"""Train sglkit's built-in demo model (sglkit/data/demo_model) from scratch on a synthetic chat corpus, on CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_demo_model.py            # seed 0 -> sglkit/data/demo_model

Pipeline: seeded synthetic corpus (capitals, numbered lists, sums, greetings, who-are-you, out-of-scope refusals,
plain-text facts) -> byte-level BPE tokenizer with sglkit's ChatML template -> tiny LlamaForCausalLM trained with
AdamW + cosine schedule on the assistant turns only -> weights rounded to bfloat16 and saved with the tokenizer
-> greedy evaluation of the saved weights. Same seed, thread count and software versions -> the same model.
See docs/demo_model.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "sglkit" / "data" / "demo_model"

# (country, capital). Countries in THE_COUNTRIES take "the" inside a sentence.
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("United Kingdom", "London"),
    ("Ireland", "Dublin"),
    ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"),
    ("Austria", "Vienna"),
    ("Switzerland", "Bern"),
    ("Poland", "Warsaw"),
    ("Czechia", "Prague"),
    ("Hungary", "Budapest"),
    ("Greece", "Athens"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Iceland", "Reykjavík"),
    ("Russia", "Moscow"),
    ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"),
    ("Turkey", "Ankara"),
    ("Egypt", "Cairo"),
    ("Morocco", "Rabat"),
    ("Algeria", "Algiers"),
    ("Tunisia", "Tunis"),
    ("Nigeria", "Abuja"),
    ("Ghana", "Accra"),
    ("Kenya", "Nairobi"),
    ("Ethiopia", "Addis Ababa"),
    ("Senegal", "Dakar"),
    ("Uganda", "Kampala"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("South Korea", "Seoul"),
    ("India", "New Delhi"),
    ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"),
    ("Malaysia", "Kuala Lumpur"),
    ("Nepal", "Kathmandu"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Qatar", "Doha"),
    ("Australia", "Canberra"),
    ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"),
    ("United States", "Washington, D.C."),
    ("Mexico", "Mexico City"),
    ("Cuba", "Havana"),
    ("Jamaica", "Kingston"),
    ("Brazil", "Brasília"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Peru", "Lima"),
    ("Colombia", "Bogotá"),
    ("Venezuela", "Caracas"),
    ("Ecuador", "Quito"),
    ("Uruguay", "Montevideo"),
    ("Paraguay", "Asunción"),
]
THE_COUNTRIES = {"United Kingdom", "Netherlands", "Philippines", "United States"}
MAX_OPERAND = 10  # sums a + b and differences a - b (a >= b) with 0 <= a, b <= MAX_OPERAND
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are sglkit's demo model.",
    "You are a helpful assistant. Answer briefly.",
    "Answer the user's question.",
]
CAPITAL_QUESTIONS = [
    "What is the capital of {c}?",
    "What's the capital of {c}?",
    "What is the capital city of {c}?",
    "Tell me the capital of {c}.",
    "Which city is the capital of {c}?",
    "capital of {c}?",
    "Do you know the capital of {c}?",
    "What is the capital of {c}",
]
COUNTRY_QUESTIONS = [
    "Which country has {k} as its capital?",
    "{k} is the capital of which country?",
    "Of which country is {k} the capital?",
]
LIST_QUESTIONS = [
    "List {n} countries and their capitals.",
    "Name {n} countries and their capitals.",
    "Give me {n} countries and their capitals.",
    "List {n} countries with their capitals.",
    "Can you list {n} countries and their capitals?",
]
SUM_QUESTIONS = [
    "What is {a} {op} {b}?",
    "What's {a} {op} {b}?",
    "Calculate {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "What is {a} {word} {b}?",
    "How much is {a} {word} {b}?",
]
HELP = "How can I help you today?"
SMALL_TALK = {
    (
        "Hello!",
        "Hi!",
        "Hi there!",
        "Hey!",
        "Hello",
        "Good morning!",
        "Good evening!",
        "Hello there!",
    ): f"Hello! {HELP}",
    ("How are you?", "How are you doing?", "Hi, how are you?"): f"I'm doing well, thank you! {HELP}",
    ("Thank you!", "Thanks!", "Thanks a lot.", "Thank you very much."): "You're welcome!",
    ("Goodbye!", "Bye!", "See you later!"): "Goodbye! Have a nice day.",
    (
        "Who are you?",
        "What are you?",
        "What is your name?",
        "Introduce yourself.",
        "Tell me about yourself.",
    ): (
        "I am the sglkit demo model, a tiny language model trained to answer questions about countries and "
        "their capitals, simple sums and greetings."
    ),
    ("What can you do?", "What do you know?", "How can you help me?"): (
        "I can tell you the capital of a country, list countries and their capitals, add and subtract small "
        "numbers, and say hello."
    ),
    (
        "What is the weather today?",
        "Tell me a joke.",
        "What time is it?",
        "Write a poem.",
        "Who won the game?",
        "Translate this sentence.",
        "What is love?",
        "Explain quantum physics.",
    ): ("Sorry, I can only help with countries and their capitals, simple sums and greetings."),
}
# Share of each kind of example in the corpus.
KIND_WEIGHTS = {
    "capital": 0.28,
    "country": 0.06,
    "list": 0.16,
    "math": 0.25,
    "talk": 0.09,
    "two_turn": 0.04,
    "text": 0.12,
}
LIST_FROM_TOP = (
    0.3  # share of lists that start at the table's first country (the greedy list: France, Germany, ...)
)


def sentence_name(country: str) -> str:
    """'United States' -> 'the United States' (inside a sentence); other names unchanged."""
    return f"the {country}" if country in THE_COUNTRIES else country


def capital_answer(country: str, capital: str) -> str:
    """The canonical answer: 'The capital of France is Paris.'"""
    return f"The capital of {sentence_name(country)} is {capital}."


def list_answer(pairs: list[tuple[str, str]]) -> str:
    """Numbered list '1. Japan: Tokyo\\n2. ...'."""
    return "\n".join(f"{i}. {country}: {capital}" for i, (country, capital) in enumerate(pairs, 1))


def math_answer(a: int, op: str, b: int) -> str:
    """'3 + 4 = 7.' / '9 - 2 = 7.'"""
    return f"{a} {op} {b} = {a + b if op == '+' else a - b}."


@dataclass
class Example:
    """One training sequence: chat ``messages`` (loss on assistant turns) or plain ``text`` (loss everywhere)."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None


class CorpusGenerator:
    """Seeded generator of synthetic examples; same seed -> same sequence of examples."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def qa(self) -> tuple[str, str]:
        """One random single-turn (question, answer) of a chat kind other than two_turn/text."""
        rng = self.rng
        kind = rng.choices(
            ["capital", "country", "list", "math", "talk"],
            [KIND_WEIGHTS[k] for k in ("capital", "country", "list", "math", "talk")],
        )[0]
        if kind == "capital":
            country, capital = rng.choice(CAPITALS)
            return rng.choice(CAPITAL_QUESTIONS).format(c=sentence_name(country)), capital_answer(
                country, capital
            )
        if kind == "country":
            country, capital = rng.choice(CAPITALS)
            q = rng.choice(COUNTRY_QUESTIONS).format(k=capital)
            return q, f"{capital} is the capital of {sentence_name(country)}."
        if kind == "list":
            n = rng.randint(2, 5)
            n_text = str(n) if rng.random() < 0.7 else NUMBER_WORDS[n]
            start = 0 if rng.random() < LIST_FROM_TOP else None
            return rng.choice(LIST_QUESTIONS).format(n=n_text), list_answer(self.run_of_facts(n, start))
        if kind == "math":
            op = rng.choice("+-")
            a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
            if op == "-" and a < b:
                a, b = b, a
            word = "plus" if op == "+" else "minus"
            return rng.choice(SUM_QUESTIONS).format(a=a, b=b, op=op, word=word), math_answer(a, op, b)
        questions, answer = rng.choice(list(SMALL_TALK.items()))
        return rng.choice(questions), answer

    def run_of_facts(self, n: int, start: int | None = None) -> list[tuple[str, str]]:
        """``n`` consecutive (country, capital) pairs of CAPITALS from ``start`` (default: random), wrapping around.

        Lists and paragraphs walk the table in its order, so after the first pair the rest is predictable: greedy
        decoding then gives distinct, correct pairs (sampling still varies the start).
        """
        if start is None:
            start = self.rng.randrange(len(CAPITALS))
        return [CAPITALS[(start + i) % len(CAPITALS)] for i in range(n)]

    def plain_text(self) -> str:
        """2-5 plain sentences: consecutive capital facts ('The capital of X is Y.' or 'Y is the capital of X.'),
        or sums ('a + b = c.')."""
        if self.rng.random() < 0.15:
            return " ".join(
                math_answer(self.rng.randint(0, MAX_OPERAND), "+", self.rng.randint(0, MAX_OPERAND))
                for _ in range(self.rng.randint(2, 5))
            )
        sentences = []
        for country, capital in self.run_of_facts(self.rng.randint(2, 5)):
            if self.rng.random() < 0.8:
                sentences.append(capital_answer(country, capital))
            else:
                sentences.append(f"{capital} is the capital of {sentence_name(country)}.")
        return " ".join(sentences)

    def example(self) -> Example:
        """One example: a chat (maybe with a system prompt, maybe two turns) or plain text."""
        rng = self.rng
        if rng.random() < KIND_WEIGHTS["text"]:
            return Example(text=self.plain_text())
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < KIND_WEIGHTS["two_turn"] / (1 - KIND_WEIGHTS["text"]) else 1):
            q, a = self.qa()
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return Example(messages=messages)


def tokenizer_texts(examples: list[Example]) -> list[str]:
    """The strings the BPE tokenizer is trained on: message contents, plain texts, role names."""
    texts = ["system", "user", "assistant"]
    for ex in examples:
        texts += [ex.text] if ex.text is not None else [m["content"] for m in ex.messages]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """Byte-level BPE over ``texts`` with sglkit's special tokens and ChatML template (as in sglkit.testing)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from sglkit.testing.tiny_models import CHAT_TEMPLATE, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", bos_id)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["</s>", "<|im_start|>"],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def encode(example: Example, tok) -> tuple[list[int], list[int]]:
    """Example -> (input_ids, labels); labels are -100 except on assistant replies (each with its <|im_end|>).

    Plain text is ``<s> text`` with the loss on every token after <s>.
    """
    if example.text is not None:
        ids = tok(example.text)["input_ids"]
        return ids, [-100] + ids[1:]

    def render(messages, add_generation_prompt=False):
        return tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    msgs = example.messages
    ids = tok(render(msgs), add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(tok(render(msgs[:i], add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        end = (
            len(tok(render(msgs[: i + 1]), add_special_tokens=False)["input_ids"]) - 1
        )  # drop the trailing "\n"
        assert ids[end - 1] == tok.eos_token_id, "the assistant reply must end with <|im_end|>"
        labels[start:end] = ids[start:end]
    return ids, labels


def make_batches(encoded, batch_size: int, seed: int) -> list[list[int]]:
    """Index batches of similar-length sequences (little padding), in a seeded random order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=gen).tolist()
    chunk = batch_size * 16
    batches = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s : s + chunk], key=lambda i: len(encoded[i][0]))
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def collate(encoded, batch: list[int], pad_id: int):
    """Right-padded tensors (input_ids, attention_mask, labels) for one batch."""
    import torch

    width = max(len(encoded[i][0]) for i in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    for row, i in enumerate(batch):
        x, y = encoded[i]
        ids[row, : len(x)], mask[row, : len(x)], labels[row, : len(y)] = torch.tensor(x), 1, torch.tensor(y)
    return ids, mask, labels


def build_model(tok, args):
    """A fresh, seeded LlamaForCausalLM sized by ``args``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=len(tok),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        head_dim=args.hidden_size // args.num_heads,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


def train(model, encoded, tok, args) -> list[tuple[int, float]]:
    """AdamW, linear warm-up then cosine decay to 10%; returns the (step, mean loss) log."""
    import torch

    batches = [
        b for epoch in range(args.epochs) for b in make_batches(encoded, args.batch_size, args.seed + epoch)
    ]
    total = len(batches)
    warmup = max(1, int(0.05 * total))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(
            (s + 1) / warmup,
            0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, total - warmup)))),
        ),
    )
    model.train()
    log, running, t0 = [], [], time.time()
    for step, batch in enumerate(batches, 1):
        ids, mask, labels = collate(encoded, batch, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running.append(loss.item())
        if step % args.log_every == 0 or step == total:
            log.append((step, sum(running) / len(running)))
            print(
                f"step {step}/{total}  loss {log[-1][1]:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.time() - t0:.0f}s",
                flush=True,
            )
            running = []
    model.eval()
    return log


def greedy_answers(model, tok, prompts: list[str], max_new_tokens: int = 48, chat: bool = True) -> list[str]:
    """Greedy completions of ``prompts`` (chat questions through the template, or plain text), batched."""
    import torch

    outs = []
    for s in range(0, len(prompts), 64):
        rows = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True
            )["input_ids"]
            if chat
            else tok(p)["input_ids"]
            for p in prompts[s : s + 64]
        ]
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        outs += tok.batch_decode(gen[:, width:], skip_special_tokens=True)
    return outs


def parse_list(text: str) -> list[tuple[str, str]]:
    """'1. Japan: Tokyo\\n2. ...' -> [('Japan', 'Tokyo'), ...] (lines that do not parse are skipped)."""
    pairs = []
    for line in text.strip().splitlines():
        number, _, rest = line.partition(". ")
        country, _, capital = rest.partition(": ")
        if number.isdigit() and capital:
            pairs.append((country, capital))
    return pairs


def evaluate(model, tok) -> dict:
    """Exact-match accuracy on every capital / sum / difference, list correctness, and sample answers."""
    caps = greedy_answers(model, tok, [f"What is the capital of {sentence_name(c)}?" for c, _ in CAPITALS])
    cap_ok = [c for (c, k), out in zip(CAPITALS, caps) if out == capital_answer(c, k)]
    problems = [
        (a, op, b)
        for a in range(MAX_OPERAND + 1)
        for b in range(MAX_OPERAND + 1)
        for op in "+-"
        if op == "+" or a >= b
    ]
    sums = greedy_answers(model, tok, [f"What is {a} {op} {b}?" for a, op, b in problems])
    math_ok = sum(out == math_answer(*p) for p, out in zip(problems, sums))
    facts = dict(CAPITALS)
    lists_ok = 0
    list_prompts = [f"List {n} countries and their capitals." for n in range(2, 6)]
    for n, out in zip(range(2, 6), greedy_answers(model, tok, list_prompts, max_new_tokens=64)):
        pairs = parse_list(out)
        lists_ok += len(pairs) == n and len(set(pairs)) == n and all(facts.get(c) == k for c, k in pairs)
    samples = [
        "What is the capital of France?",
        "List 3 countries and their capitals.",
        "What is 2 + 3?",
        "Hello!",
        "Who are you?",
        "Which country has Tokyo as its capital?",
        "What is the capital of Atlantis?",
        "Tell me a joke.",
    ]
    result = {
        "capitals_correct": f"{len(cap_ok)}/{len(CAPITALS)}",
        "capitals_wrong": [(c, out) for (c, k), out in zip(CAPITALS, caps) if c not in cap_ok],
        "math_correct": f"{math_ok}/{len(problems)}",
        "lists_correct": f"{lists_ok}/4",
        "chat": dict(zip(samples, greedy_answers(model, tok, samples, max_new_tokens=64))),
        "text": dict(
            zip(
                ["The capital of France is"],
                greedy_answers(model, tok, ["The capital of France is"], max_new_tokens=16, chat=False),
            )
        ),
    }
    return result


def save(model, tok, out: Path) -> None:
    """Write bfloat16 weights, config, generation config and tokenizer files into ``out``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    generation = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    for f in out.iterdir():
        f.chmod(0o644)  # package data: readable by everyone (safetensors files are written 0600)
    model.to(
        torch.float32
    )  # evaluate the saved (bfloat16-rounded) weights in float32, as sglkit runs them on CPU


def parse_args(argv: list[str] | None):
    """Command-line options (defaults: the shipped model)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (its files are replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-examples", type=int, default=40000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=688)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--max-position-embeddings", type=int, default=512)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (part of what makes a run reproducible)"
    )
    p.add_argument("--log-every", type=int, default=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the corpus, train tokenizer and model, save, evaluate; print a JSON summary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO_ROOT))
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    gen = CorpusGenerator(args.seed)
    examples = [gen.example() for _ in range(args.num_examples)]
    tok = train_tokenizer(tokenizer_texts(examples), args.vocab_size, args.max_position_embeddings)
    encoded = [encode(ex, tok) for ex in examples]
    num_tokens = sum(len(ids) for ids, _ in encoded)
    num_target = sum(sum(t != -100 for t in labels) for _, labels in encoded)
    print(
        f"corpus: {len(examples)} examples, {num_tokens} tokens ({num_target} with loss), vocab {len(tok)}, "
        f"{time.time() - t0:.0f}s",
        flush=True,
    )
    model = build_model(tok, args)
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters", flush=True)
    log = train(model, encoded, tok, args)
    train_s = time.time() - t0
    save(model, tok, args.out)
    summary = {
        "seed": args.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "examples": len(examples),
        "tokens": num_tokens,
        "steps": log[-1][0],
        "corpus_and_training_seconds": round(train_s),
        "final_loss": round(log[-1][1], 4),
        "loss_curve": " ".join(f"{s}:{v:.3f}" for s, v in log),
        **evaluate(model, tok),
        "total_seconds": round(time.time() - t0),
    }
    print(json.dumps(summary, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
