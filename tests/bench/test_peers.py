"""sglkit.bench.peers in-process: the job/figures protocol, the timing loop, the table and ratios, the cached
shape model, the GGUF path, and the one-line exit 2 when a peer's side venv is missing."""

from __future__ import annotations

import io
import json
import time

import pytest

from sglkit.bench import offline_throughput, one_batch
from sglkit.bench.one_batch import write_preset
from sglkit.bench.peers import llamacpp
from sglkit.bench.peers.compare import (
    best_of_rounds,
    build_job,
    check_sides,
    format_ratios,
    format_rounds,
    format_table,
)
from sglkit.bench.peers.models import ensure_shape_model
from sglkit.bench.peers.runner import PeerUnavailable, parse_figures
from sglkit.bench.peers.vllm_cpu import cpu_binding, kv_space_gib
from sglkit.bench.peers.workers import peer_harness


def _greedy_counter(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """A stand-in peer library: token i of the output is (last prompt id + i + 1) % 100."""
    return [[(p[-1] + i + 1) % 100 for i in range(max_tokens)] for p in prompts]


def test_read_job_fills_defaults_and_rejects_unknown_figures():
    job = peer_harness.read_job(io.StringIO(json.dumps({"model": "m", "prompts": [[1, 2], [3]]})))
    assert job["decode_prompt"] == [1, 2] and job["ttft_prompt"] == [1, 2]
    assert job["max_batch"] == 2 and job["threads"] == 2 and job["figures"] == ["decode", "batch", "ttft"]
    with pytest.raises(ValueError, match="unknown figures"):
        peer_harness.read_job(io.StringIO(json.dumps({"model": "m", "figures": ["speed"]})))
    with pytest.raises(ValueError, match="'model'"):
        peer_harness.read_job(io.StringIO("[1, 2]"))


def test_measure_reports_every_figure_from_the_generate_calls():
    job = build_job("m", "auto", [[5, 6, 7], [8, 9, 10]], 4, ttft_prompt=[1] * 12)
    assert job["dtype"] == "float32" and job["decode_prompt"] == [5, 6, 7] and job["max_batch"] == 2
    calls = []

    def generate(prompts, max_tokens):
        calls.append((len(prompts), max_tokens))
        time.sleep(0.02 * max_tokens)  # a decode that takes time, so t(N tokens) > t(1 token) on any machine
        return _greedy_counter(prompts, max_tokens)

    figures = peer_harness.measure(job, generate)
    # warm-up, batch-1 decode (1 token, then decode_len), the batch, TTFT x3 (1 token each)
    assert calls == [(1, 4), (1, 1), (1, 4), (2, 4), (1, 1), (1, 1), (1, 1)]
    assert figures["outputs"] == [[8, 9, 10, 11], [11, 12, 13, 14]]
    assert figures["batch_output_tokens"] == 8
    assert figures["batch_output_tok_s"] == pytest.approx(8 / figures["batch_elapsed_s"])
    assert figures["decode_tok_s"] > 0 and figures["ttft_s"] >= 0


def test_figures_line_round_trips_through_the_runner_parser():
    out = io.StringIO()
    print("a library's own print", file=out)
    peer_harness.emit({"peer": "x", "decode_tok_s": 1.5}, out)
    assert parse_figures(out.getvalue()) == {"peer": "x", "decode_tok_s": 1.5}
    assert parse_figures("nothing here\n") is None
    assert peer_harness.peak_rss_mb() > 10


def test_table_and_ratios_side_by_side():
    results = {
        "sglkit": {"peer": "sglkit", "decode_tok_s": 20.0, "batch_output_tok_s": 100.0, "ttft_s": 0.5,
                   "peak_rss_mb": 1000.0, "outputs": [[1, 2], [3, 4]]},
        "llamacpp": {"peer": "llama.cpp", "decode_tok_s": 40.0, "batch_output_tok_s": 50.0, "ttft_s": 0.25,
                     "peak_rss_mb": 500.0, "outputs": [[1, 2], [3, 5]]},
        "vllm": {"peer": "vLLM-CPU", "error": "not available: No module named 'vllm'"},
    }  # fmt: skip
    table = format_table(results, ttft_len=512)
    assert "TTFT(512) s" in table[0] and "greedy ids = sglkit's" in table[0]
    sglkit_row, llama_row, vllm_row = table[2:]
    assert [c.strip() for c in sglkit_row.split(" | ")[1:5]] == ["20.0", "100.0", "0.500", "1000"]
    assert "2/2 first, 1/2 all" in llama_row
    assert vllm_row.endswith("| not available: No module named 'vllm'")
    assert format_ratios(results) == [
        "sglkit / llama.cpp: decode 0.50x | batch 2.00x | TTFT 2.00x | RSS 2.00x"
    ]


def test_rounds_keep_each_sides_best_and_list_every_round():
    def side(peer, decode, batch, ttft, rss):
        return {"peer": peer, "decode_tok_s": decode, "batch_output_tok_s": batch, "ttft_s": ttft,
                "peak_rss_mb": rss, "outputs": [[1]]}  # fmt: skip

    runs = [
        {
            "sglkit": side("sglkit", 30.0, 200.0, 0.9, 1000.0),
            "llamacpp": side("llama.cpp", 40.0, 90.0, 1.5, 500.0),
        },
        {
            "sglkit": side("sglkit", 50.0, 190.0, 0.8, 1010.0),
            "llamacpp": side("llama.cpp", 38.0, 95.0, 1.6, 500.0),
        },
    ]
    best = best_of_rounds(runs)
    assert {k: best["sglkit"][k] for k in ("decode_tok_s", "batch_output_tok_s", "ttft_s", "peak_rss_mb")} == {
        "decode_tok_s": 50.0, "batch_output_tok_s": 200.0, "ttft_s": 0.8, "peak_rss_mb": 1010.0
    }  # fmt: skip
    assert best["llamacpp"]["decode_tok_s"] == 40.0 and best["sglkit"]["outputs"] == [[1]]
    assert len(best["sglkit"]["rounds"]) == 2 and "outputs" not in best["sglkit"]["rounds"][0]
    lines = format_rounds(best)
    assert (
        lines[0]
        == "sglkit per round: decode 30.0 / 50.0 | batch 200.0 / 190.0 | TTFT 0.900 / 0.800 | RSS 1000 / 1010"
    )
    assert best_of_rounds(runs[:1]) is runs[0] and format_rounds(runs[0]) == []
    failed = {"sglkit": runs[0]["sglkit"], "llamacpp": {"peer": "llama.cpp", "error": "timed out"}}
    assert best_of_rounds([runs[0], failed])["llamacpp"]["error"] == "timed out"


def test_missing_side_venv_is_one_line_naming_the_prepare_script(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SGLKIT_BENCH_PEERS_DIR", str(tmp_path))
    with pytest.raises(PeerUnavailable, match=r"bash scripts/prepare_bench_peers.sh vllm"):
        check_sides(["sglkit", "vllm"])
    (tmp_path / "llamacpp" / "bin").mkdir(parents=True)
    (tmp_path / "llamacpp" / "bin" / "python").write_text("")
    with pytest.raises(PeerUnavailable, match="no side environment"):  # no .ready stamp: unfinished
        check_sides(["llamacpp"])
    with pytest.raises(SystemExit) as exit_info:
        offline_throughput.main(["--compare-llamacpp", "--num-prompts", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prepare_bench_peers.sh llamacpp" in err
    with pytest.raises(SystemExit) as exit_info:
        one_batch.main(["--config", "tiny", "--compare-vllm"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("bash scripts/prepare_bench_peers.sh vllm")


def test_shape_model_is_written_once_with_weights(tmp_path):
    folder = ensure_shape_model("tiny", write_preset, seed=3, root=tmp_path, log=lambda *_: None)
    assert folder.name == "tiny-seed3" and (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 512
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert ensure_shape_model("tiny", write_preset, seed=3, root=tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime == mtime


def test_gguf_is_cached_next_to_the_folder_per_dtype(tmp_path):
    assert llamacpp.gguf_path(tmp_path / "m", "bfloat16") == tmp_path / "m.bf16.gguf"
    assert llamacpp.gguf_path(tmp_path / "m", "float32") == tmp_path / "m.f32.gguf"
    with pytest.raises(ValueError, match="no GGUF outtype"):
        llamacpp.gguf_path(tmp_path / "m", "int8")


def test_vllm_environment_binds_threads_and_sizes_the_kv_space():
    assert len(cpu_binding(1).split(",")) == 1
    job = {"prompts": [[0] * 128] * 32, "output_len": 128, "max_batch": 32, "ttft_prompt": [0] * 512}
    # 32 x (512 + 128 + 16) tokens x 2 (K, V) x 32 layers x 5 heads x 64 x 2 bytes = 0.80 GiB; doubled, rounded up
    assert kv_space_gib(job, 32, 5, 64, 2) == 2
    assert kv_space_gib(job, 32, 5, 64, 4) == 4
