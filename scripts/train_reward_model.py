"""Train sglkit's demo reward model (sglkit/data/demo_reward_model) from the shipped demo chat model, on CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_reward_model.py           # seed 0 -> sglkit/data/demo_reward_model

Pipeline: the demo model's weights (sglkit/data/demo_model) loaded as an HF ``LlamaForSequenceClassification``
(one label: the reward, read from the score head on the last token) -> a seeded synthetic preference corpus
(capital questions, lists, sums, small talk; the chosen reply is the demo model's correct answer, the rejected
one a wrong capital, a wrong sum, a list with a wrong row, an answer to another question, a rude, off-topic or
truncated reply) -> pairwise Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)`` plus a logistic term on
each reward's sign (right answers score above 0, wrong ones below) -> weights rounded to bfloat16 and saved with
the demo model's tokenizer -> pairwise accuracy of the saved weights on a held-out split. The fact tables and answer
formats come from scripts/train_demo_model.py. Same seed, thread count and software versions -> the same model.
See docs/demo_model.md ("The reward model").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "sglkit" / "data" / "demo_model"
DEFAULT_OUT = REPO_ROOT / "sglkit" / "data" / "demo_reward_model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _load_demo_script():
    """scripts/train_demo_model.py as a module: the fact tables and answer formats of the demo model."""
    spec = importlib.util.spec_from_file_location(
        "train_demo_model", Path(__file__).with_name("train_demo_model.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


demo = _load_demo_script()
CAPITALS = demo.CAPITALS
MAX_OPERAND = demo.MAX_OPERAND

# The eval split: question phrasings never seen in training, and wrong answers never seen in training (about one
# (country, wrong capital) pair in five, one (problem, wrong result) pair in five). Both splits ask about every
# country and every sum: like the demo model, the reward model only knows the table it was trained on.
EVAL_CAPITAL_QUESTIONS = {"Do you know the capital of {c}?", "Which city is the capital of {c}?"}
EVAL_LIST_QUESTIONS = {"Can you list {n} countries and their capitals?"}
EVAL_SUM_QUESTIONS = {"How much is {a} {word} {b}?"}


def is_eval_answer(question_key: str, wrong_answer: str) -> bool:
    """Whether this wrong answer to this question belongs to the eval split (a stable hash: about 1 in 5)."""
    return zlib.crc32(f"{question_key}|{wrong_answer}".encode()) % 5 == 0


RUDE_REPLIES = [
    "I don't care.",
    "Figure it out yourself.",
    "That is a stupid question.",
    "Go away.",
    "Whatever.",
    "Why would I tell you?",
    "Stop asking me things.",
    "Look it up.",
]
REFUSAL = "Sorry, I can only help with countries and their capitals, simple sums and greetings."
KIND_WEIGHTS = {"capital": 0.45, "list": 0.15, "math": 0.3, "talk": 0.1}  # share of each kind of question


@dataclass
class Example:
    """One question with its chosen reply and ``num_rejected`` distinct rejected replies (one pair each)."""

    messages: list[dict[str, str]]  # the conversation before the reply (maybe a system prompt, one user turn)
    chosen: str
    rejected: list[str]
    rejected_kinds: list[str]  # how each rejected reply is wrong
    kind: str  # capital | list | math | talk


class PreferenceGenerator:
    """Seeded generator of preference examples of one split; same seed and split -> same sequence of examples.

    Train examples use the training phrasings and training wrong answers. Eval examples use a held-out phrasing
    (half of them; lists: always) and held-out wrong capitals / wrong results; small talk, rude, truncated and
    off-topic replies are drawn the same way in both splits.
    """

    def __init__(self, seed: int, split: str, num_rejected: int = 1) -> None:
        self.rng = random.Random(f"{seed}-{split}")
        self.is_eval = split == "eval"
        self.num_rejected = num_rejected
        self.sums = [
            (a, op, b)
            for a in range(MAX_OPERAND + 1)
            for b in range(MAX_OPERAND + 1)
            for op in "+-"
            if op == "+" or a >= b
        ]

    def phrasing(self, phrasings: list[str], held_out: set[str]) -> str:
        """A training phrasing; in the eval split a held-out one half of the time."""
        if self.is_eval and self.rng.random() < 0.5:
            return self.rng.choice(sorted(held_out))
        return self.rng.choice([q for q in phrasings if q not in held_out])

    def wrong(self, question_key: str, candidates: list[str]) -> str:
        """A wrong answer of this split."""
        return self.rng.choice([c for c in candidates if is_eval_answer(question_key, c) == self.is_eval])

    def draw(self, options: dict) -> tuple[str, str]:
        """(reply, kind) from ``{kind: (weight, make_reply)}``."""
        kind = self.rng.choices(list(options), [w for w, _ in options.values()])[0]
        return options[kind][1](), kind

    # ------------------------------------------------------------------ rejected replies shared by every kind
    def off_topic(self, facts: bool) -> str:
        """A fluent reply to some other question: small talk or the refusal, or (``facts``) a capital or a sum."""
        rng = self.rng
        options = [rng.choice(list(demo.SMALL_TALK.values())), REFUSAL]
        if facts:
            options += [
                demo.capital_answer(*rng.choice(CAPITALS)),
                demo.math_answer(rng.randint(0, MAX_OPERAND), "+", rng.randint(0, MAX_OPERAND)),
            ]
        return rng.choice(options)

    def truncated(self, reply: str) -> str:
        """The reply cut after a random number of its words (at least one word dropped)."""
        words = reply.split(" ")
        if len(words) < 2:
            return reply[: max(1, len(reply) // 2)]
        return " ".join(words[: self.rng.randint(1, len(words) - 1)])

    def generic(self, chosen: str, weight: float, facts: bool = False) -> dict:
        """Off-topic, rude and truncated replies, ``weight`` each."""
        return {
            "off_topic": (weight, lambda: self.off_topic(facts)),
            "rude": (weight, lambda: self.rng.choice(RUDE_REPLIES)),
            "truncated": (weight, lambda: self.truncated(chosen)),
        }

    # ------------------------------------------------------------------ one kind each
    def capital_question(self, hard: float) -> tuple[str, str, dict]:
        """(question, chosen, rejections) about a country's capital; ``hard``: share of wrong capitals."""
        country, capital = self.rng.choice(CAPITALS)
        chosen = demo.capital_answer(country, capital)
        others = [k for c, k in CAPITALS if c != country]
        question = self.phrasing(demo.CAPITAL_QUESTIONS, EVAL_CAPITAL_QUESTIONS).format(
            c=demo.sentence_name(country)
        )
        return (
            question,
            chosen,
            {
                "wrong_capital": (hard, lambda: demo.capital_answer(country, self.wrong(country, others))),
                **self.generic(chosen, (1 - hard) / 3),
            },
        )

    def list_question(self, hard: float) -> tuple[str, str, dict]:
        """(question, chosen, rejections) for 'List N countries and their capitals.'."""
        rng = self.rng
        n = rng.randint(2, 5)
        phrasings = (
            sorted(EVAL_LIST_QUESTIONS)
            if self.is_eval
            else [q for q in demo.LIST_QUESTIONS if q not in EVAL_LIST_QUESTIONS]
        )
        question = rng.choice(phrasings).format(n=str(n) if rng.random() < 0.7 else demo.NUMBER_WORDS[n])
        start = 0 if rng.random() < demo.LIST_FROM_TOP else rng.randrange(len(CAPITALS))
        rows = [CAPITALS[(start + i) % len(CAPITALS)] for i in range(n + 1)]
        chosen = demo.list_answer(rows[:n])

        def wrong_row() -> str:
            bad = list(rows[:n])
            i = rng.randrange(n)
            bad[i] = (bad[i][0], self.wrong(bad[i][0], [k for c, k in CAPITALS if c != bad[i][0]]))
            return demo.list_answer(bad)

        return (
            question,
            chosen,
            {
                "wrong_capital": (hard * 0.7, wrong_row),
                "wrong_count": (hard * 0.3, lambda: demo.list_answer(rows[: n + rng.choice([-1, 1])])),
                **self.generic(chosen, (1 - hard) / 3),
            },
        )

    def math_question(self, hard: float) -> tuple[str, str, dict]:
        """(question, chosen, rejections) for a sum or difference of 0..MAX_OPERAND."""
        a, op, b = self.rng.choice(self.sums)
        chosen = demo.math_answer(a, op, b)
        result = a + b if op == "+" else a - b
        wrong_results = [str(x) for x in range(2 * MAX_OPERAND + 1) if x != result]
        question = self.phrasing(demo.SUM_QUESTIONS, EVAL_SUM_QUESTIONS).format(
            a=a, b=b, op=op, word="plus" if op == "+" else "minus"
        )
        return (
            question,
            chosen,
            {
                "wrong_result": (
                    hard,
                    lambda: f"{a} {op} {b} = {self.wrong(f'{a} {op} {b}', wrong_results)}.",
                ),
                **self.generic(chosen, (1 - hard) / 3),
            },
        )

    def talk_question(self, hard: float) -> tuple[str, str, dict]:
        """(question, chosen, rejections) for small talk and out-of-scope requests (``hard`` is not used)."""
        rng = self.rng
        groups = list(demo.SMALL_TALK.items())
        questions, chosen = rng.choice(groups)
        others = [a for _, a in groups if a != chosen]
        return (
            rng.choice(questions),
            chosen,
            {"other_question": (0.4, lambda: rng.choice(others)), **self.generic(chosen, 0.2, facts=True)},
        )

    def example(self, hard: float = 0.9) -> Example:
        """One question (maybe after a system prompt) with its chosen and ``num_rejected`` distinct rejected replies;
        ``hard``: the share of wrong facts among the rejected replies to capital, list and sum questions."""
        rng = self.rng
        kind = rng.choices(list(KIND_WEIGHTS), list(KIND_WEIGHTS.values()))[0]
        question, chosen, rejections = getattr(self, f"{kind}_question")(hard)
        rejected, rejected_kinds = [], []
        while len(rejected) < self.num_rejected:
            reply, how = self.draw(rejections)
            if reply != chosen and reply not in rejected:
                rejected.append(reply)
                rejected_kinds.append(how)
        messages = []
        if rng.random() < 0.1:
            messages.append({"role": "system", "content": rng.choice(demo.SYSTEM_PROMPTS)})
        messages.append({"role": "user", "content": question})
        return Example(messages, chosen, rejected, rejected_kinds, kind)


def conversation_ids(tok, messages: list[dict[str, str]], reply: str, server_form: bool = True) -> list[int]:
    """Token ids of the conversation ending in ``reply``, as /classify sees it: the chat template rendered to text,
    then tokenized with special tokens (so it starts ``<s><s>``); ``server_form=False``: one ``<s>`` (the
    template's), as when the template is tokenized directly."""
    text = tok.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
    return tok(text, add_special_tokens=server_form)["input_ids"]


def encode_examples(examples: list[Example], tok, rng: random.Random | None = None) -> list[list[list[int]]]:
    """[chosen ids, rejected ids...] per example; with ``rng`` half the examples (at random) take the single-``<s>``
    form."""
    out = []
    for ex in examples:
        server_form = rng is None or rng.random() < 0.5
        out.append(
            [conversation_ids(tok, ex.messages, reply, server_form) for reply in [ex.chosen, *ex.rejected]]
        )
    return out


def load_model(seed: int, demo_dir: Path):
    """The demo chat model's decoder as a LlamaForSequenceClassification (one label), score head zeroed, float32."""
    import torch
    from transformers import LlamaForSequenceClassification
    from transformers.utils import logging

    torch.manual_seed(seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the score head is new: not a warning worth printing
    model = LlamaForSequenceClassification.from_pretrained(str(demo_dir), num_labels=1, dtype=torch.float32)
    logging.set_verbosity(verbosity)
    with torch.no_grad():
        model.score.weight.zero_()
    model.config.architectures = ["LlamaForSequenceClassification"]
    model.config.tie_word_embeddings = False  # no LM head: nothing to tie
    return model


def rewards(model, sequences: list[list[int]], pad_id: int, batch_size: int = 64):
    """Float rewards [N] of ``sequences`` (right-padded batches; HF scores each row's last non-pad token)."""
    import torch

    out = []
    for s in range(0, len(sequences), batch_size):
        rows = sequences[s : s + batch_size]
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        out.append(model(input_ids=ids, attention_mask=mask).logits[:, 0])
    return torch.cat(out)


def pairwise_loss(r, args):
    """r: [B, 1 + K] rewards (chosen first) -> (loss, Bradley-Terry loss, pairwise accuracy) over the B * K pairs.

    The loss is the Bradley-Terry loss plus ``args.sign_coef`` times a logistic loss on each reward's sign (chosen
    replies above 0, rejected ones below), so that sigmoid(reward) reads as "this reply is right"."""
    import torch.nn.functional as F

    chosen, rejected = r[:, :1], r[:, 1:]
    bt = -F.logsigmoid(chosen - rejected).mean()
    sign = -F.logsigmoid(chosen).mean() - F.logsigmoid(-rejected).mean()  # right above 0, wrong below
    return bt + args.sign_coef * sign, bt, (chosen > rejected).float().mean()


def train(model, encoded, pad_id: int, args) -> list[tuple[int, float, float]]:
    """AdamW with linear warm-up then cosine decay; Bradley-Terry loss plus the sign term; one pass over the examples in
    their (random) generation order. Returns the (step, mean BT loss, mean pairwise accuracy) log."""
    import torch

    batches = [
        range(s, min(s + args.batch_size, len(encoded))) for s in range(0, len(encoded), args.batch_size)
    ]
    total = len(batches)
    warmup = max(1, int(0.05 * total))
    head = [p for n, p in model.named_parameters() if n.startswith("score.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("score.")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": args.lr}, {"params": head, "lr": args.head_lr}],
        betas=(0.9, 0.98),
        weight_decay=0.0,
    )
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
        group = len(encoded[batch[0]])
        seqs = [ids for i in batch for ids in encoded[i]]
        loss, bt, acc = pairwise_loss(
            rewards(model, seqs, pad_id, batch_size=len(seqs)).view(-1, group), args
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running.append((bt.item(), acc.item()))
        if step % args.log_every == 0 or step == total:
            log.append(
                (step, sum(x for x, _ in running) / len(running), sum(y for _, y in running) / len(running))
            )
            print(
                f"step {step}/{total}  bt_loss {log[-1][1]:.4f}  acc {log[-1][2]:.3f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:.0f}s",
                flush=True,
            )
            running = []
    model.eval()
    return log


def save(model, out: Path, demo_dir: Path) -> None:
    """Write bfloat16 weights and config into ``out``, with the demo model's tokenizer files."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        shutil.copyfile(demo_dir / name, out / name)
    for f in out.iterdir():
        f.chmod(0o644)  # package data: readable by everyone (safetensors files are written 0600)
    model.to(
        torch.float32
    )  # evaluate the saved (bfloat16-rounded) weights in float32, as sglkit runs them on CPU


def capital_matrix(model, tok) -> dict:
    """'What is the capital of X?': the right answer against every other capital of the table, for every X."""
    import torch

    question = [{"role": "user", "content": ""}]
    right, wrong, owners = [], [], []
    for country, capital in CAPITALS:
        question[0]["content"] = f"What is the capital of {demo.sentence_name(country)}?"
        right.append(conversation_ids(tok, question, demo.capital_answer(country, capital)))
        for _, other in CAPITALS:
            if other != capital:
                wrong.append(conversation_ids(tok, question, demo.capital_answer(country, other)))
                owners.append(len(right) - 1)
    with torch.no_grad():
        r_right, r_wrong = rewards(model, right, tok.pad_token_id), rewards(model, wrong, tok.pad_token_id)
    wins = r_right[torch.tensor(owners)] > r_wrong
    per_country = torch.zeros(len(CAPITALS)).index_add_(0, torch.tensor(owners), (~wins).float())
    return {
        "capital_matrix_accuracy": f"{int(wins.sum())}/{len(wins)}",
        "countries_with_a_loss": [c for (c, _), n in zip(CAPITALS, per_country.tolist()) if n > 0],
        "right_capital_reward_range": [round(r_right.min().item(), 2), round(r_right.max().item(), 2)],
        "wrong_capital_reward_range": [round(r_wrong.min().item(), 2), round(r_wrong.max().item(), 2)],
    }


def evaluate(model, tok, examples: list[Example]) -> dict:
    """Pairwise accuracy on ``examples`` (overall, per kind and per way of being wrong), the capital matrix and
    sample rewards; all on the saved weights, in the form /classify sees."""
    import torch

    group = 1 + len(examples[0].rejected)
    with torch.no_grad():
        seqs = [ids for ex in encode_examples(examples, tok) for ids in ex]
        r = rewards(model, seqs, tok.pad_token_id).view(-1, group)
    chosen, rejected = r[:, 0], r[:, 1:]
    wins = (chosen[:, None] > rejected).tolist()
    rows = [
        (ex.kind, how, won)
        for ex, won_row in zip(examples, wins)
        for how, won in zip(ex.rejected_kinds, won_row)
    ]

    def accuracy(keep) -> str:
        picked = [won for kind, how, won in rows if keep(kind, how)]
        return f"{sum(picked)}/{len(picked)}"

    question = [{"role": "user", "content": "What is the capital of France?"}]
    samples = [
        "The capital of France is Paris.",
        "The capital of France is Berlin.",
        "The capital of Germany is Berlin.",
        "The capital of France",
        "I don't care.",
    ]
    with torch.no_grad():
        sample_rewards = rewards(
            model, [conversation_ids(tok, question, s) for s in samples], tok.pad_token_id
        )
    num_won = sum(won for _, _, won in rows)
    return {
        "eval_pairwise_accuracy": f"{num_won}/{len(rows)} = {num_won / len(rows):.4f}",
        "eval_accuracy_by_kind": {k: accuracy(lambda kind, how, k=k: kind == k) for k in KIND_WEIGHTS},
        "eval_accuracy_by_rejected_kind": {
            h: accuracy(lambda kind, how, h=h: how == h) for h in sorted({how for _, how, _ in rows})
        },
        "eval_mean_chosen_reward": round(chosen.mean().item(), 3),
        "eval_mean_rejected_reward": round(rejected.mean().item(), 3),
        "eval_chosen_reward_above_0": f"{int((chosen > 0).sum())}/{chosen.numel()}",
        "eval_rejected_reward_below_0": f"{int((rejected < 0).sum())}/{rejected.numel()}",
        **capital_matrix(model, tok),
        "what_is_the_capital_of_france": {s: round(v, 3) for s, v in zip(samples, sample_rewards.tolist())},
    }


def parse_args(argv: list[str] | None):
    """Command-line options (defaults: the shipped model)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (its files are replaced)")
    p.add_argument("--demo-model", type=Path, default=DEMO_DIR, help="the chat model to start from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-examples", type=int, default=24000, help="training questions")
    p.add_argument(
        "--num-rejected", type=int, default=1, help="rejected replies per question (one pair each)"
    )
    p.add_argument("--num-eval-examples", type=int, default=2000)
    p.add_argument(
        "--hard",
        type=float,
        default=0.9,
        help="share of wrong facts (wrong capital, list or sum) among the rejected replies",
    )
    p.add_argument("--batch-size", type=int, default=16, help="questions per step")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate of the decoder")
    p.add_argument("--head-lr", type=float, default=3e-3, help="learning rate of the score head")
    p.add_argument(
        "--sign-coef",
        type=float,
        default=0.5,
        help="weight of the logistic loss on the rewards' signs (chosen above 0, rejected below)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (part of what makes a run reproducible)"
    )
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the pairs, fine-tune, save, evaluate; print a JSON summary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoTokenizer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(args.demo_model))
    train_gen = PreferenceGenerator(args.seed, "train", args.num_rejected)
    eval_gen = PreferenceGenerator(args.seed, "eval", args.num_rejected)
    train_examples = [train_gen.example(args.hard) for _ in range(args.num_examples)]
    eval_examples = [eval_gen.example(args.hard) for _ in range(args.num_eval_examples)]
    encoded = encode_examples(train_examples, tok, random.Random(args.seed))
    num_pairs = len(train_examples) * args.num_rejected
    print(
        f"corpus: {num_pairs} training pairs ({sum(len(ids) for ex in encoded for ids in ex)} tokens), "
        f"{len(eval_examples) * args.num_rejected} eval pairs, {time.time() - t0:.0f}s",
        flush=True,
    )
    model = load_model(args.seed, args.demo_model)
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters", flush=True)
    log = train(model, encoded, tok.pad_token_id, args)
    train_s = time.time() - t0
    save(model, args.out, args.demo_model)
    summary = {
        "seed": args.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_pairs": num_pairs,
        "eval_pairs": len(eval_examples) * args.num_rejected,
        "steps": log[-1][0],
        "corpus_and_training_seconds": round(train_s),
        "final_train_bt_loss": round(log[-1][1], 4),
        "final_train_accuracy": round(log[-1][2], 4),
        "loss_curve": " ".join(f"{s}:{v:.3f}" for s, v, _ in log),
        **evaluate(model, tok, eval_examples),
        "total_seconds": round(time.time() - t0),
    }
    print(json.dumps(summary, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
