"""CLI: write a tiny HF-format test model and print its folder.

python -m sglkit.testing --out /tmp/tiny-llama --arch LlamaForCausalLM --preset tiny
"""

from __future__ import annotations

import argparse
import os

from sglkit.testing.tiny_models import PRESETS, SUPPORTED_ARCHITECTURES, make_tiny_model


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, write the model, print the output folder."""
    parser = argparse.ArgumentParser(
        prog="python -m sglkit.testing", description="Write a tiny random HF-format model."
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--arch", default="LlamaForCausalLM", choices=SUPPORTED_ARCHITECTURES)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--tie-word-embeddings", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = make_tiny_model(
        args.out,
        args.arch,
        preset=args.preset,
        seed=args.seed,
        num_shards=args.num_shards,
        tie_word_embeddings=args.tie_word_embeddings,
        dtype=args.dtype,
    )
    print(path)


if __name__ == "__main__":
    main()
