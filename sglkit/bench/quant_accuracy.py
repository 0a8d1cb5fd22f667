"""Benchmarks: accuracy of weight-only quantized linears against bfloat16 on the same weights (docs/quantization.md).

``python -m sglkit.bench.quant_accuracy`` loads one model (default: the shipped demo model, a trained
checkpoint) once per configuration, all in bfloat16 activations, and compares each with the unquantized bfloat16
model on a fixed prompt set (the first ``--num-prompts`` lines of ``sglkit.testing``'s tokenizer corpus):

- bf16's greedy continuation of ``--output-len`` tokens per prompt is fed back (teacher forcing) through every
  configuration; at each position of prompt + continuation we compare next-token logits: top-1 agreement, and
  the max and mean absolute logit error;
- each configuration also decodes greedily on its own: the share of generated tokens equal to bf16's at the
  same position, and the share of prompts whose whole continuation is identical.

A float32 row (unquantized, float32 activations) shows the size of bf16's own rounding for comparison.
Configurations are ``--torchao-config`` values (``int8wo``, ``int4wo-32`` ...); the LM head and embeddings are
not quantized (as SGLang's ``proj`` filter). ``--json PATH`` writes the table as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "QuantAccuracy",
    "compare",
    "greedy",
    "load",
    "main",
    "parse_args",
    "prompts",
    "teacher_forced_logits",
]

BATCH = 8  # requests per PagedRunner (its req_to_token pool has 8 rows)


@dataclass
class QuantAccuracy:
    """One configuration against bf16: teacher-forced logits and free-running greedy tokens."""

    config: str
    linear_weight_mib: float  # the Linear layers' weight bytes (plain, packed or quantized)
    top1_agreement: float  # share of positions whose argmax equals bf16's
    max_abs_logit_error: float
    mean_abs_logit_error: float
    greedy_token_agreement: float  # share of generated tokens equal to bf16's at the same position
    greedy_exact_prompts: float  # share of prompts whose whole continuation equals bf16's


def load(model_path: str, config: str):
    """(model, hf config): ``config`` is "bf16", "fp32" or a ``--torchao-config`` value (bf16 + quantized)."""
    from sglkit.layers.linear import pack_linear_weights, quantize_linear_weights
    from sglkit.models.loader import load_model

    dtype = torch.float32 if config == "fp32" else torch.bfloat16
    model, model_config = load_model(model_path, dtype=dtype, device="cpu")
    if config not in ("bf16", "fp32"):
        quantize_linear_weights(model, config)
    pack_linear_weights(model)
    return model, model_config.hf_config


def prompts(model_path: str, num_prompts: int) -> list[list[int]]:
    """Token ids of the first ``num_prompts`` corpus lines (with BOS when the tokenizer adds one)."""
    from transformers import AutoTokenizer

    from sglkit.testing.corpus import build_corpus

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    lines = build_corpus(num_prompts)
    return [tokenizer(line)["input_ids"] for line in lines]


def _runner(model, hf_config, dtype: torch.dtype):
    from sglkit.testing.paged_runner import PagedRunner

    return PagedRunner(model, hf_config, dtype=dtype, pool_size=4096)


def _dtype(model) -> torch.dtype:
    return model.model.embed_tokens.weight.dtype


@torch.inference_mode()
def greedy(model, hf_config, token_ids: list[list[int]], output_len: int) -> list[list[int]]:
    """Greedy continuations of ``output_len`` tokens for every prompt (batches of 8 through a paged runner)."""
    from sglkit.core.forward_batch import ForwardMode

    outputs: list[list[int]] = []
    for start in range(0, len(token_ids), BATCH):
        batch = token_ids[start : start + BATCH]
        runner = _runner(model, hf_config, _dtype(model))
        logits = runner.forward(list(enumerate(batch)))
        nxt = [int(lg[-1].argmax()) for lg in logits]
        generated = [[t] for t in nxt]
        for _ in range(output_len - 1):
            logits = runner.forward([(i, [t]) for i, t in enumerate(nxt)], ForwardMode.DECODE)
            nxt = [int(lg[-1].argmax()) for lg in logits]
            for out, t in zip(generated, nxt, strict=True):
                out.append(t)
        outputs += generated
    return outputs


@torch.inference_mode()
def teacher_forced_logits(model, hf_config, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Next-token logits [len(seq), V] float32 at every position of each sequence (one prefill each)."""
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), BATCH):
        runner = _runner(model, hf_config, _dtype(model))
        out += runner.forward(list(enumerate(sequences[start : start + BATCH])))
    return out


def compare(
    config: str,
    weight_bytes: int,
    logits: list[torch.Tensor],
    ref_logits: list[torch.Tensor],
    tokens: list[list[int]],
    ref_tokens: list[list[int]],
) -> QuantAccuracy:
    """The accuracy row of ``config`` from its teacher-forced logits and greedy tokens vs the reference's."""
    lg, ref = torch.cat(logits), torch.cat(ref_logits)  # [positions, V]
    err = (lg - ref).abs()
    same = [a == b for out, ref_out in zip(tokens, ref_tokens, strict=True) for a, b in zip(out, ref_out)]
    return QuantAccuracy(
        config=config,
        linear_weight_mib=weight_bytes / 2**20,
        top1_agreement=float((lg.argmax(-1) == ref.argmax(-1)).float().mean()),
        max_abs_logit_error=float(err.max()),
        mean_abs_logit_error=float(err.mean()),
        greedy_token_agreement=sum(same) / max(1, len(same)),
        greedy_exact_prompts=sum(a == b for a, b in zip(tokens, ref_tokens, strict=True))
        / max(1, len(tokens)),
    )


def run(args: argparse.Namespace, log=print) -> list[QuantAccuracy]:
    """Measure every configuration of ``args`` against bf16; returns (and logs) one row each."""
    from sglkit.layers.linear import linear_weight_bytes

    ids = prompts(args.model_path, args.num_prompts)
    model, hf_config = load(args.model_path, "bf16")
    ref_tokens = greedy(model, hf_config, ids, args.output_len)
    sequences = [p + t[:-1] for p, t in zip(ids, ref_tokens, strict=True)]  # the last token predicts nothing
    ref_logits = teacher_forced_logits(model, hf_config, sequences)
    rows = [compare("bf16", linear_weight_bytes(model), ref_logits, ref_logits, ref_tokens, ref_tokens)]
    del model
    for config in args.configs:
        model, hf_config = load(args.model_path, config)
        logits = teacher_forced_logits(model, hf_config, sequences)
        tokens = greedy(model, hf_config, ids, args.output_len)
        rows.append(compare(config, linear_weight_bytes(model), logits, ref_logits, tokens, ref_tokens))
        del model
    positions = sum(len(s) for s in sequences)
    log(f"{args.model_path}: {len(ids)} prompts, {args.output_len} greedy tokens, {positions} positions")
    log(
        f"{'config':<12} {'linear MiB':>10} {'top-1 agree':>11} {'max |dlogit|':>12} {'mean |dlogit|':>13} "
        f"{'greedy tokens':>13} {'exact prompts':>13}"
    )
    for r in rows:
        log(
            f"{r.config:<12} {r.linear_weight_mib:>10.2f} {r.top1_agreement:>11.4f} {r.max_abs_logit_error:>12.4f} "
            f"{r.mean_abs_logit_error:>13.4f} {r.greedy_token_agreement:>13.4f} {r.greedy_exact_prompts:>13.4f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (defaults: demo model, 32 prompts, 64 tokens, fp32 + int8wo + int4wo-32/64/128)."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.quant_accuracy", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-path", default=None, help="HF-format folder (default: the shipped demo model).")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--configs", nargs="+", default=["fp32", "int8wo", "int4wo-32", "int4wo-64", "int4wo-128"])
    p.add_argument("--json", default=None, help="Write the rows as JSON to this file.")
    args = p.parse_args(argv)
    if args.model_path is None:
        from sglkit.testing.demo import default_model_path

        args.model_path = default_model_path()
    return args


def main(argv: list[str] | None = None) -> list[QuantAccuracy]:
    """Entry point of ``python -m sglkit.bench.quant_accuracy``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
