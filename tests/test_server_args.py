"""ServerArgs: flags and keywords, validation, and help texts that say what the code does."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import pytest

from sglkit.layers.attention import create_attention_backend
from sglkit.runtime.executor import model_runner
from sglkit.server_args import ServerArgs, prepare_server_args


def _help(name: str) -> str:
    field = next(f for f in dataclasses.fields(ServerArgs) if f.name == name)
    return " ".join(field.metadata["help"].split())


def test_every_field_has_a_flag_with_help():
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(ServerArgs)}
    assert all(a.help for a in flags.values())


def test_flags_round_trip(tmp_path):
    args = prepare_server_args(
        [
            "--model-path",
            str(tmp_path),
            "--mem-fraction-static",
            "0.5",
            "--max-running-requests",
            "8",
            "--chunked-prefill-size",
            "-1",
            "--schedule-policy",
            "fcfs",
            "--disable-radix-cache",
            "--random-seed",
            "3",
        ]
    )
    assert args.model_path == args.tokenizer_path == args.served_model_name == str(tmp_path)
    assert args.mem_fraction_static == 0.5
    assert args.max_running_requests == 8
    assert args.chunked_prefill_size == -1
    assert args.schedule_policy == "fcfs"
    assert args.disable_radix_cache is True
    assert args.random_seed == 3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"mem_fraction_static": 1.0}, "mem_fraction_static"),
        ({"max_total_tokens": 0}, "max_total_tokens"),
        ({"chunked_prefill_size": 0}, "chunked_prefill_size"),
        ({"schedule_policy": "dfs-weight"}, "schedule_policy"),
        ({"dtype": "int8"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"port": 70000}, "port"),
        ({"model_impl": "vllm"}, "model_impl"),
    ],
)
def test_validation_names_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        ServerArgs(model_path=str(tmp_path), **kwargs)


def test_model_impl_flag(tmp_path):
    """--model-impl auto|sglkit|transformers (default auto), as the loader's choices; argparse refuses others."""
    from sglkit.models.loader import MODEL_IMPLS

    assert ServerArgs(model_path=str(tmp_path)).model_impl == "auto"
    for choice in MODEL_IMPLS:
        args = prepare_server_args(["--model-path", str(tmp_path), "--model-impl", choice])
        assert args.model_impl == choice and args.to_dict()["model_impl"] == choice
    with pytest.raises(SystemExit):
        prepare_server_args(["--model-path", str(tmp_path), "--model-impl", "vllm"])
    assert "'transformers'" in _help("model_impl") and "'auto'" in _help("model_impl")


def test_attention_backend_help_matches_the_factory(monkeypatch):
    text = _help("attention_backend")
    assert (
        "'triton' (the default on CUDA" in text
        and "TRITON_INTERPRET=1" in text
        and "sglkit[flashinfer]" in text
    )
    assert type(create_attention_backend(None, "cpu")).__name__ == "TorchNativeAttnBackend"  # the CPU default
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for name in ("triton", "flashinfer"):  # CUDA backends refuse a CPU device
        with pytest.raises(ValueError, match="needs a CUDA device"):
            create_attention_backend(name, "cpu")
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # not importable: the install hint
    with pytest.raises(ValueError, match=r"pip install 'sglkit\[flashinfer\]'"):
        create_attention_backend("flashinfer", "cuda")


def test_mem_fraction_static_help_matches_the_sizing_defaults():
    text = _help("mem_fraction_static")
    assert "default by GPU memory" in text and "at least 10 GB" in text
    assert f"default {model_runner.CPU_DEFAULT_MEM_FRACTION}" in text
    assert f"capped at {model_runner.CPU_MAX_AUTO_TOKENS} tokens" in text
    assert f"--max-running-requests, default {model_runner.CPU_DEFAULT_MAX_RUNNING_REQUESTS}" in text
    assert "available RAM" in text and "total memory" in text


def test_chunked_prefill_and_running_request_defaults_in_help():
    text = _help("chunked_prefill_size")
    assert "Default 2048 on CPU" in text and "4096 under 60 GB" in text and "8192 under 160 GB" in text
    text = _help("max_running_requests")
    assert "256 on CPU" in text and "4096 on CUDA" in text


def test_parallel_flags_and_their_aliases(tmp_path):
    args = prepare_server_args(
        ["--model-path", str(tmp_path), "--tp", "4", "--nnodes", "2", "--node-rank", "1"]
        + ["--dist-init-addr", "10.0.0.1:5000", "--dist-timeout", "30", "--base-gpu-id", "2"]
    )
    assert (args.tp_size, args.nnodes, args.node_rank, args.tp_size_per_node) == (4, 2, 1, 2)
    assert (args.dist_init_addr, args.dist_timeout, args.base_gpu_id) == ("10.0.0.1:5000", 30.0, 2)
    assert prepare_server_args(["--model-path", str(tmp_path), "--tp-size", "2"]).tp_size == 2
    info = ServerArgs(model_path=str(tmp_path), tp_size=2).to_dict()  # what /get_server_info reports
    assert info["tp_size"] == 2 and info["nnodes"] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tp_size": 0}, "tp_size must be a positive integer"),
        ({"tp_size": 3, "nnodes": 2, "dist_init_addr": "h:1"}, "divisible by nnodes"),
        ({"tp_size": 2, "nnodes": 2, "node_rank": 2, "dist_init_addr": "h:1"}, "node_rank must be in"),
        ({"tp_size": 2, "nnodes": 2}, "dist_init_addr .* is required when nnodes > 1"),
        ({"dist_init_addr": "no-port"}, "dist_init_addr must be 'host:port'"),
        ({"dist_timeout": 0}, "dist_timeout must be positive"),
        ({"tp_size": 2, "is_embedding": True}, "not supported for embedding models"),
        ({"tp_size": 2, "model_impl": "transformers"}, "needs sglkit's own model implementation"),
    ],
)
def test_parallel_arguments_are_validated(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServerArgs(model_path=str(tmp_path), **kwargs)
