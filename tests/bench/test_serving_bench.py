"""End-to-end smoke test of ``python -m sglkit.bench_serving`` on a tiny model: a real server, a few prompts."""

from __future__ import annotations

import json
import re

import pytest

from sglkit.bench.serving import main
from sglkit.bench.workloads import make_workload

NUM_PROMPTS = 4
INPUT_LEN = 16
OUTPUT_LEN = 6


def _block_values(text: str) -> dict[str, str]:
    """``Label: value`` rows of the printed result block."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^([A-Z][^:\n]*):\s+(\S+)\s*$", text, re.M)}


def _check_sane(metrics: dict, printed: dict[str, str], backend: str) -> None:
    assert printed["Backend"] == backend
    assert metrics["completed"] == NUM_PROMPTS and metrics["failed"] == 0
    assert int(printed["Successful requests"]) == NUM_PROMPTS
    # ratio 1: every prompt has INPUT_LEN tokens and ignore_eos makes every request generate OUTPUT_LEN tokens.
    assert int(printed["Total input tokens"]) == NUM_PROMPTS * INPUT_LEN
    assert int(printed["Total generated tokens"]) == NUM_PROMPTS * OUTPUT_LEN
    for label in (
        "Benchmark duration (s)",
        "Request throughput (req/s)",
        "Output token throughput (tok/s)",
        "Total token throughput (tok/s)",
        "Concurrency",
    ):
        assert float(printed[label]) > 0, label
    for name in ("E2E Latency", "TTFT", "TPOT", "ITL"):
        mean, median, p99 = (float(printed[f"{s} {name} (ms)"]) for s in ("Mean", "Median", "P99"))
        assert 0 < median <= p99 and 0 < mean <= p99 * 1.0001, name
    assert metrics["mean_ttft_ms"] <= metrics["mean_e2e_latency_ms"]
    assert abs(metrics["output_throughput"] * metrics["duration"] - NUM_PROMPTS * OUTPUT_LEN) < 1e-6
    assert metrics["concurrency"] <= NUM_PROMPTS + 1e-6


def _argv(*extra: str) -> list[str]:
    return [
        "--num-prompts",
        str(NUM_PROMPTS),
        "--random-input-len",
        str(INPUT_LEN),
        "--random-output-len",
        str(OUTPUT_LEN),
        "--random-range-ratio",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def server_url(llama_path):
    """A server on the tiny Llama for the --base-url runs, terminated after the module."""
    from sglkit.utils import launch_server_cmd, terminate_process, wait_for_server

    process, port = launch_server_cmd(f"python -m sglkit.launch_server --model-path {llama_path}", echo=False)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, timeout=300, process=process, print_note=False)
        yield url
    finally:
        terminate_process(process)


def test_workload_lengths_follow_range_ratio():
    workload = make_workload(50, 20, 10, 0.5, vocab_size=100, seed=3, reserved_ids={0, 1})
    assert all(10 <= len(p) <= 20 for p in workload.prompts)
    assert all(5 <= n <= 10 for n in workload.output_lens)
    assert not {0, 1} & {t for p in workload.prompts for t in p}
    assert make_workload(50, 20, 10, 0.5, 100, seed=3, reserved_ids={0, 1}) == workload


@pytest.mark.parametrize("backend", ["sglang", "sglang-oai"])
def test_base_url_run_prints_sane_metrics(server_url, backend, tmp_path, capsys):
    out_file = tmp_path / "metrics.jsonl"
    metrics = main(
        _argv(
            "--base-url",
            server_url,
            "--backend",
            backend,
            "--max-concurrency",
            "2",
            "--output-file",
            str(out_file),
        )
    )
    text = capsys.readouterr().out
    assert "Serving Benchmark Result" in text
    _check_sane(metrics, _block_values(text), backend)
    record = json.loads(out_file.read_text().splitlines()[-1])
    assert record["backend"] == backend and record["completed"] == NUM_PROMPTS


def test_poisson_arrivals(server_url, capsys):
    metrics = main(_argv("--base-url", server_url, "--request-rate", "50", "--seed", "7"))
    _check_sane(metrics, _block_values(capsys.readouterr().out), "sglang")


@pytest.mark.slow
def test_launches_its_own_server_and_compares_offline(llama_path, capsys):
    from sglkit.utils import registered_processes

    before = {p.pid for p in registered_processes()}
    metrics = main(_argv("--model-path", llama_path, "--compare-offline", "--max-total-tokens", "512"))
    text = capsys.readouterr().out
    _check_sane(metrics, _block_values(text), "sglang")
    assert metrics["offline_output_throughput"] > 0
    ratio = float(re.search(r"Throughput ratio server / offline:\s+(\S+)", text).group(1))
    assert ratio == pytest.approx(metrics["server_offline_ratio"], abs=1e-3)
    assert {p.pid for p in registered_processes()} <= before  # the launched server is gone
