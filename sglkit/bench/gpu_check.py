"""Benchmarks: the one-command GPU check behind ``scripts/gpu_check.sh`` (correctness vs HF, then 8B-shape speed).

Uses only what a bare GPU machine has (torch, triton, transformers; no server, fastapi or zmq): the model
runner is driven directly, as ``sglkit.bench.one_batch`` does.

1. Correctness, for every attention backend that builds on the device: a small random Llama (bf16 on CUDA)
   generates greedily through sglkit; HF transformers (SDPA) re-reads prompt + generated tokens with the same
   weights; the logits of every generated position are compared, and HF's argmax must agree with sglkit's
   token (ties in bf16 may flip a few: at least ``MIN_AGREEMENT``).
2. Speed on the 8B shape with dummy weights (``VARIANTS``): batch-1 decode tok/s for graph+triton (decode
   replayed from CUDA graphs, ``cuda_graph_runner.py``; ``graph_replays`` counts them), eager triton (the same
   runner with its graphs dropped), eager torch_native, and eager torch_native
   without the fused Triton norm/rope/activation ops; prefill latency of ``--input-len`` tokens; batch
   ``--big-batch`` decode tok/s; HF side by side (throughput ratios).
3. The sampler's peak memory per logit at ``--big-batch`` rows of a 128,256-token vocabulary (heaviest
   parameters), against the budget ``memory_budget`` keeps for it (``sglkit.bench.sampler_memory``).
All figures go to one JSON file. ``--dry-run`` does the same on CPU with the tiny shape, in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from sglkit.bench.one_batch import (
    StaticBatch,
    build_hf_model,
    build_runner,
    hf_run_once,
    latency_test_run_once,
    parse_args,
    write_preset,
)
from sglkit.layers.triton_fused import set_fused_ops_on_cuda

__all__ = ["BACKENDS", "MIN_AGREEMENT", "VARIANTS", "check_correctness", "main", "measure_speed"]

BACKENDS = ("torch_native", "triton", "flashinfer")
MIN_AGREEMENT = 0.97  # share of generated positions where HF's argmax equals sglkit's token (bf16)


def _free(*objs: Any) -> None:
    """Drop references and return cached device memory."""
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def backend_status(name: str, device: str) -> str:
    """ "available", or why ``create_attention_backend(name, device)`` cannot build it here."""
    from sglkit.layers.attention import create_attention_backend

    try:
        create_attention_backend(name, device)
    except Exception as e:  # noqa: BLE001 - any failure means: not available here, and why
        return f"unavailable: {type(e).__name__}: {e}"
    return "available"


def bench_args(model_path: str | None, config: str | None, backend: str, cfg: argparse.Namespace, **kw):
    """one_batch's arguments for this check (``kw`` overrides batch sizes and lengths)."""
    argv = ["--config", config] if config else ["--model-path", model_path]
    args = parse_args(argv + ["--attention-backend", backend, "--device", cfg.device, "--dtype", cfg.dtype])
    for key, value in kw.items():
        setattr(args, key, value)
    return args


@torch.inference_mode()
def check_correctness(model_path: str, backend: str, cfg: argparse.Namespace) -> dict:
    """Greedy generation through sglkit vs HF teacher-forced logits on the same weights; figures + ``passed``."""
    args = bench_args(model_path, None, backend, cfg, batch_size=[4], input_len=[48], output_len=[16])
    runner = build_runner(args, model_path)
    hf_model = build_hf_model(runner, args)
    batch = StaticBatch(runner, 4, 48, 16, seed=cfg.seed)
    logits = runner.forward(batch.prefill())
    steps, tokens = [logits], [logits.argmax(-1)]
    for step in range(15):
        steps.append(runner.forward(batch.decode(step, tokens[-1])))
        tokens.append(steps[-1].argmax(-1))
    ours, generated = torch.stack(steps, 1), torch.stack(tokens, 1)  # [B, 16, V], [B, 16]
    seq = torch.cat([batch.input_ids.to(runner.device), generated[:, :-1]], dim=1)
    theirs = hf_model(input_ids=seq, logits_to_keep=16).logits.float()  # [B, 16, V]
    agreement = (theirs.argmax(-1) == generated).float().mean().item()
    diff = (ours - theirs).abs()
    result = {
        "backend": backend,
        "dtype": str(runner.dtype),
        "token_agreement": agreement,
        "logits_max_abs_diff": diff.max().item(),
        "logits_mean_abs_diff": diff.mean().item(),
        "logits_abs_max": theirs.abs().max().item(),
        "prefill_logits_max_abs_diff": diff[:, 0].max().item(),
    }
    result["passed"] = agreement >= (1.0 if runner.dtype == torch.float32 else MIN_AGREEMENT)
    graphs = runner.cuda_graph_runner  # on CUDA with triton, decode steps replay CUDA graphs
    result["cuda_graph_replays"] = graphs.num_replays if graphs is not None else None
    _free(runner, hf_model)
    return result


# (name, attention backend, CUDA graphs, fused Triton norm/rope/activation ops, batch-1 only)
VARIANTS = (
    ("graph+triton", "triton", True, True, False),
    ("eager triton", "triton", False, True, False),
    ("eager torch_native", "torch_native", False, True, False),
    ("eager torch_native, torch ops", "torch_native", False, False, True),
)


def _has_cuda_graphs() -> bool:
    from sglkit.server_args import ServerArgs

    return "disable_cuda_graph" in {f.name for f in dataclasses.fields(ServerArgs)}


def measure_speed(cfg: argparse.Namespace, statuses: dict[str, str], log=print) -> dict:
    """Batch-1 prefill + decode and big-batch decode per variant on ``cfg.config``'s shape; HF once."""
    speed: dict[str, Any] = {}
    runs = [(1, cfg.input_len, cfg.output_len), (cfg.big_batch, cfg.input_len, cfg.big_batch_output_len)]
    for name, backend, graph, fused, batch_1_only in VARIANTS:
        if statuses.get(backend) != "available":
            speed[name] = f"skipped: {backend} {statuses.get(backend)}"
            continue
        if graph and not _has_cuda_graphs():
            speed[name] = "not built (sglkit has no CUDA graph runner yet)"
            continue
        if time.perf_counter() - cfg.start > cfg.budget_s:
            speed[name] = "skipped: over the time budget"
            continue
        log(f"== speed: {name} ==")
        variant_runs = runs[:1] if batch_1_only else runs
        args = bench_args(None, cfg.config, backend, cfg, batch_size=[r[0] for r in variant_runs])
        args.input_len, args.output_len = [cfg.input_len], [max(r[2] for r in variant_runs)]
        with tempfile.TemporaryDirectory() as tmp:
            runner = build_runner(args, str(write_preset(cfg.config, tmp)))
        if graph and runner.cuda_graph_runner is None:
            speed[name] = "not built: this runner captured no CUDA graphs (CUDA + triton only)"
            _free(runner)
            continue
        if not graph:
            runner.cuda_graph_runner = None  # eager decode (graphs are captured at start-up when wanted)
        was_fused = set_fused_ops_on_cuda(fused)
        try:
            latency_test_run_once(runner, 1, min(cfg.input_len, 256), 8, log=lambda *_: None)  # warm-up
            speed[name] = {
                f"batch_{b}": latency_test_run_once(runner, b, i, o, log) for b, i, o in variant_runs
            }
        finally:
            set_fused_ops_on_cuda(was_fused)
        for figures in speed[name].values():
            figures.pop("output_ids", None)
        if graph:
            speed[name]["graph_replays"] = runner.cuda_graph_runner.num_replays
        _free(runner)
    if cfg.compare_hf and time.perf_counter() - cfg.start < cfg.budget_s:
        speed["hf"] = measure_hf(cfg, runs, speed, log)
    return speed


def measure_hf(cfg: argparse.Namespace, runs: list[tuple[int, int, int]], speed: dict, log=print) -> dict:
    """HF transformers eager SDPA on the same shape and runs; ratios against each sglkit variant."""
    log("== speed: HF transformers (eager, SDPA) ==")
    args = bench_args(None, cfg.config, "torch_native", cfg, batch_size=[1])
    args.input_len, args.output_len = [cfg.input_len], [8]
    with tempfile.TemporaryDirectory() as tmp:
        runner = build_runner(args, str(write_preset(cfg.config, tmp)))
    hf_model = build_hf_model(runner, args)
    _free(runner)
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab = hf_model.config.vocab_size
    hf_run_once(
        hf_model,
        torch.randint(0, vocab, (1, min(cfg.input_len, 256)), generator=gen),
        8,
        cfg.device,
        log=lambda *_: None,
    )
    out: dict[str, Any] = {}
    for bs, il, ol in runs:
        prompts = torch.randint(0, vocab, (bs, il), generator=gen)
        try:
            out[f"batch_{bs}"] = hf_run_once(hf_model, prompts, ol, cfg.device, log)
        except torch.OutOfMemoryError as e:
            out[f"batch_{bs}"] = f"out of memory: {e}".splitlines()[0]
            _free()
            continue
        out[f"batch_{bs}"].pop("output_ids", None)
    _free(hf_model)
    for name, figures in speed.items():
        for key, ours in figures.items() if isinstance(figures, dict) else ():
            theirs = out.get(key)
            if isinstance(theirs, dict):
                ours["ratio_vs_hf"] = {
                    "prefill": ours["prefill_throughput"] / theirs["prefill_throughput"],
                    "decode": ours["median_decode_throughput"] / theirs["median_decode_throughput"],
                }
                log(f"[{name} {key}] sglkit / HF throughput: {ours['ratio_vs_hf']}")
    return out


def parse_check_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``scripts/gpu_check.sh``."""
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, short runs: checks the script.")
    p.add_argument(
        "--out",
        default=None,
        help="JSON file of all figures (default: $OUT/gpu_check.json, else in the temp folder).",
    )
    p.add_argument("--config", default="8b-shape", help="Shape of the speed runs (one_batch's --config).")
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--big-batch", type=int, default=256)
    p.add_argument("--big-batch-output-len", type=int, default=32)
    p.add_argument("--no-compare-hf", dest="compare_hf", action="store_false")
    p.add_argument("--all-variants", action="store_true", help="Try variants whose backend is unavailable.")
    p.add_argument("--budget-s", type=float, default=330.0, help="Skip speed runs started after this.")
    p.add_argument("--seed", type=int, default=0)
    cfg = p.parse_args(argv)
    cfg.device, cfg.dtype = ("cpu", "float32") if cfg.dry_run else ("cuda", "bfloat16")
    if cfg.dry_run:
        cfg.config, cfg.input_len, cfg.output_len, cfg.big_batch, cfg.big_batch_output_len = (
            "tiny",
            32,
            8,
            4,
            4,
        )
    if cfg.out is None:
        cfg.out = str(Path(os.environ.get("OUT") or tempfile.gettempdir()) / "gpu_check.json")
    return cfg


def _sampler_memory(cfg: argparse.Namespace) -> dict:
    """The sampler's peak bytes per logit at the big batch and Llama 3's vocabulary, vs the memory budget."""
    from sglkit.bench.sampler_memory import measure_sampler_memory

    vocab = 1000 if cfg.dry_run else 128_256
    try:
        return measure_sampler_memory(cfg.big_batch, vocab, cfg.device)
    except Exception as e:  # noqa: BLE001 - a finding for the report, not the end of the check
        return {"error": traceback.format_exception_only(e)[-1]}


def _environment(device: str) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / (1 << 30)
    return env


def main(argv: list[str] | None = None) -> dict:
    """Run the check; write and return the report (exit status 1 when a correctness check fails)."""
    from sglkit.testing import make_tiny_model

    cfg = parse_check_args(argv)
    cfg.start = time.perf_counter()
    report: dict[str, Any] = {"dry_run": cfg.dry_run, "environment": _environment(cfg.device)}
    statuses = {name: backend_status(name, cfg.device) for name in BACKENDS}
    report["backends"] = statuses
    print(f"backends: {statuses}", flush=True)
    report["correctness"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        preset = "tiny" if cfg.dry_run else "small"
        model_path = str(make_tiny_model(Path(tmp) / "model", preset=preset, dtype=cfg.dtype, seed=cfg.seed))
        for name in (n for n, s in statuses.items() if s == "available"):
            try:
                report["correctness"][name] = check_correctness(model_path, name, cfg)
            except Exception as e:  # noqa: BLE001 - a broken backend is a finding, not the end of the check
                report["correctness"][name] = {
                    "passed": False,
                    "error": traceback.format_exception_only(e)[-1],
                }
            print(f"correctness {name}: {report['correctness'][name]}", flush=True)
    report["sampler_memory"] = _sampler_memory(cfg)
    print(f"sampler memory: {report['sampler_memory']}", flush=True)
    report["speed"] = measure_speed(cfg, statuses)
    report["elapsed_s"] = time.perf_counter() - cfg.start
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {cfg.out} ({report['elapsed_s']:.1f} s)", flush=True)
    if not all(r.get("passed") for r in report["correctness"].values()) or not report["correctness"]:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
