"""Session-wide fixtures: tiny models made once per session by sglkit.testing (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """make(arch, **kwargs) -> path of a tiny HF-format model, cached per argument set."""
    from sglkit.testing import make_tiny_model

    cache: dict = {}

    def make(architecture: str = "LlamaForCausalLM", **kwargs) -> str:
        key = (architecture, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = architecture + "-" + "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
            cache[key] = str(
                make_tiny_model(tmp_path_factory.mktemp("models") / name, architecture, **kwargs)
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def llama_path(tiny_model_factory) -> str:
    """The default tiny Llama."""
    return tiny_model_factory("LlamaForCausalLM")


@pytest.fixture(scope="session")
def same_shape_model_path(tiny_model_factory) -> str:
    """Same architecture and shapes as the tiny Llama, other weights (seed 7): /update_weights succeeds."""
    return tiny_model_factory("LlamaForCausalLM", seed=7)


@pytest.fixture(scope="session")
def other_size_model_path(tiny_model_factory) -> str:
    """Same architecture, wider hidden size: /update_weights fails and rolls back."""
    return tiny_model_factory("LlamaForCausalLM", hidden_size=96, intermediate_size=192)


# -- markers by path, for make test-fast (-m "not slow and not browser and not integration") ---------------------
# `integration`: the test starts subprocesses (real sglkit servers, stand-in servers, process trees, a CLI) or
# builds the docs / replays Binder. `slow`: in-process suites too long for test-fast. make test runs them all.
# Entries are paths under tests/: a folder ("server/"), a file ("test_utils.py") or one test ("file.py::name").

INTEGRATION_PATHS = (
    "server/",  # every test talks to a real server subprocess
    "widgets/",  # one real server shared by the widget tests; the browser test
    "docs/",  # docs build, README tour (launches a server), Binder replay
    "launch/",  # process trees, parent death, session watchdog, log relay: real child processes
    "test_utils.py",  # launch_server_cmd / wait_for_server / terminate_process against stand-in servers
    "bench/test_serving_bench.py",  # bench_serving against a real server
    "bench/test_startup.py",  # python -m sglkit.bench.startup launches real servers
    "bench/test_soak.py::test_soak_cli_short_run_is_clean",  # python -m sglkit.bench.soak: its own server
    "bench/test_one_batch.py::test_cli_prints_sglang_lines_per_batch_size",  # python -m sglkit.bench_one_batch
    "bench/test_peers_workers.py",  # peer workers as subprocesses (sglkit, HF; llama.cpp / vLLM venvs)
    "scripts/test_gpu_check.py",  # scripts/gpu_check.sh --dry-run in a subprocess
    "layers/test_triton_fused.py::test_kernels_under_interpreter",  # re-runs the file under TRITON_INTERPRET=1
    # The Triton attention kernels and the graph hooks, re-run in a child pytest under TRITON_INTERPRET=1.
    "layers/attention/test_triton_interpreter.py::test_triton_kernels_and_backend_under_the_interpreter",
    "runtime/executor/test_cuda_graph_runner.py::test_triton_graph_hooks_and_graph_safety_under_the_interpreter",
    "testing/test_tiny_models.py::test_cli_prints_folder",  # python -m sglkit.testing in a subprocess
)
IN_PROCESS_PATHS = (  # under an integration folder, but pure in-process unit tests: they stay in test-fast
    "server/function_call/",
    "server/test_reasoning_parser.py",
    "server/test_openai_tools.py",
    "server/test_openai_chat_output.py",
    "server/test_openai_fields.py",
)
SLOW_PATHS = (
    "testing/test_demo_reward_model.py",  # the shipped reward model scored on its fact tables (~40 s on 2 cores)
    "runtime/test_engine_tp.py",  # Engine(tp_size=2) vs tp 1 for every architecture: spawned ranks (~100 s)
)
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _matches(item, entries) -> bool:
    rel = os.path.relpath(str(item.path), _TESTS_DIR).replace(os.sep, "/")
    name = getattr(item, "originalname", None) or item.name
    for entry in entries:
        if "::" in entry:
            if entry == f"{rel}::{name}":
                return True
        elif rel == entry or (entry.endswith("/") and rel.startswith(entry)):
            return True
    return False


def pytest_itemcollected(item):
    """Add the ``integration`` / ``slow`` markers by path (per item, before ``-m`` deselects)."""
    if _matches(item, INTEGRATION_PATHS) and not _matches(item, IN_PROCESS_PATHS):
        item.add_marker(pytest.mark.integration)
    if _matches(item, SLOW_PATHS):
        item.add_marker(pytest.mark.slow)
