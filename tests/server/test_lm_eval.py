"""lm-eval's ``local-completions`` model against a real sglkit server on the trained demo model, with no tokenizer
arguments: lm-eval probes /tokenizer_info and /tokenize, picks its remote tokenizer (the server's own, through
/tokenize and /detokenize) and never loads one from a hub.

The tasks are tiny and local (tests/server/lm_eval_tasks: a JSONL file of capitals, one multiple-choice task made
of loglikelihood requests and one generate_until task), so the scores are known: the demo model knows them all.
"""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

from sglkit.testing.demo import default_model_path
from sglkit.utils import terminate_process
from tests.server.conftest import start_server

TASK_DIR = Path(__file__).parent / "lm_eval_tasks"
NUM_DOCS = sum(1 for line in (TASK_DIR / "capitals.jsonl").read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def demo_server():
    """A server on the demo model, stopped after the module."""
    running = start_server(default_model_path())
    yield running
    terminate_process(running.process)


def test_local_completions_runs_a_tiny_task_with_the_servers_tokenizer(demo_server, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASK_DIR)  # the task YAMLs name their data file relative to their folder
    lm = get_model("local-completions")(base_url=f"{demo_server.base_url}/v1/completions")
    assert lm.tokenizer_backend == "remote"  # found through /tokenizer_info + /tokenize, no HF download
    assert lm.eot_token_id == lm.tok_encode("<|im_end|>")[0]

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["sglkit_capitals_mc", "sglkit_capitals_gen"],
        task_manager=TaskManager(include_path=str(TASK_DIR)),
        log_samples=True,
    )
    results = out["results"]
    assert results["sglkit_capitals_mc"]["acc,none"] == 1.0
    assert results["sglkit_capitals_gen"]["exact_match,none"] == 1.0

    mc = out["samples"]["sglkit_capitals_mc"]
    assert len(mc) == NUM_DOCS
    for sample in mc:
        scores = [loglikelihood for loglikelihood, _ in sample["filtered_resps"]]
        assert all(score < 0 for score in scores)  # sums of token logprobs of each choice
        assert scores.index(max(scores)) == sample["doc"]["label"]
    gen = out["samples"]["sglkit_capitals_gen"]
    assert [s["filtered_resps"][0] for s in gen] == [s["target"] for s in gen]
