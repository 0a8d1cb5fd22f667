"""SGLang's frontend language (the ``sglang`` package: ``@sgl.function``, ``sgl.RuntimeEndpoint``) against a real
sglkit server on the trained demo model, so answers can be checked for meaning ("Paris"), not just shape.

``sglang`` is installed without its GPU runtime (``requirements-frontend.txt``, by the Makefile); its
``RuntimeEndpoint`` talks to /get_model_info, /generate (text, sampling_params with every SGLang key, logprobs with
``return_text_in_logprobs``, streaming) and /flush_cache. The demo model's template is ChatML, which the frontend
cannot guess from a folder path, so the backend is given ``chat_template_name="chatml"``.
"""

from __future__ import annotations

import math
import re

import pytest
import sglang as sgl

from sglkit.testing.demo import default_model_path
from sglkit.utils import terminate_process
from tests.server.conftest import start_server

FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def backend():
    """A server on the demo model, set as the frontend's default backend; stopped after the module."""
    running = start_server(default_model_path())
    try:
        runtime = sgl.RuntimeEndpoint(running.base_url, chat_template_name="chatml")
        sgl.set_default_backend(runtime)
        yield runtime
    finally:
        terminate_process(running.process)


@sgl.function
def qa(s, question, stop=None, max_tokens=24):
    s += sgl.user(question)
    s += sgl.assistant(
        sgl.gen(
            "answer",
            max_tokens=max_tokens,
            stop=stop,
            temperature=0,
            return_logprob=True,
            top_logprobs_num=2,
            return_text_in_logprobs=True,
        )
    )


def run_ok(function, **kwargs):
    """Run ``function`` and fail with the frontend's captured error (it runs programs in threads)."""
    state = function.run(**kwargs)
    assert state.error() is None, state.error()
    return state


def test_gen_answers_and_logprob_entries_carry_text(backend) -> None:
    state = run_ok(qa, question=FRANCE)
    assert state["answer"] == "The capital of France is Paris."
    meta = state.get_meta_info("answer")
    assert meta["finish_reason"]["type"] == "stop"
    entries = meta["output_token_logprobs"]
    assert "".join(text for _, _, text in entries).startswith("The capital of France is Paris.")
    assert all(isinstance(lp, float) and lp <= 0 and isinstance(tid, int) for lp, tid, _ in entries)
    top = meta["output_top_logprobs"][0]
    assert len(top) == 2 and top[0][2] == entries[0][2] and top[0][0] >= top[1][0]


def test_gen_with_stop(backend) -> None:
    state = run_ok(qa, question=FRANCE, stop=" is")
    assert state["answer"] == "The capital of France"
    assert state.get_meta_info("answer")["finish_reason"] == {"type": "stop", "matched": " is"}
    assert state.text().endswith("The capital of France<|im_end|>\n")


def test_select_picks_the_likely_choice(backend) -> None:
    @sgl.function
    def pick(s):
        s += sgl.user(FRANCE)
        s += sgl.assistant(
            "The capital of France is " + sgl.select("city", choices=["London", "Paris", "Berlin"])
        )

    state = run_ok(pick)
    assert state["city"] == "Paris"
    meta = state.get_meta_info("city")
    scores = meta["normalized_prompt_logprobs"]
    assert len(scores) == 3 and all(math.isfinite(x) for x in scores)
    assert scores[1] == max(scores)
    # The choice's tokens come back with their text (return_text_in_logprobs), which select relies on.
    assert "".join(entry[2] for entry in meta["input_token_logprobs"][1]).endswith("Paris")


def test_fork_and_join(backend) -> None:
    @sgl.function
    def capitals(s):
        s += sgl.user("Name two capitals.")
        forks = s.fork(2)
        for fork, country in zip(forks, ["France", "Japan"]):
            fork += sgl.assistant(
                f"The capital of {country} is" + sgl.gen("city", max_tokens=8, stop=".", temperature=0)
            )
        forks.join()
        s += sgl.assistant("Answers:" + forks[0]["city"] + " and" + forks[1]["city"])

    state = run_ok(capitals)
    assert state.text().endswith("Answers: Paris and Tokyo<|im_end|>\n")


def test_run_batch(backend) -> None:
    countries = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome"}
    states = qa.run_batch(
        [{"question": f"What is the capital of {c}?"} for c in countries], num_threads=2, progress_bar=False
    )
    for state, (country, city) in zip(states, countries.items()):
        assert state.error() is None, state.error()
        assert state["answer"] == f"The capital of {country} is {city}."


def test_streaming(backend) -> None:
    expected = run_ok(qa, question="What is the capital of Japan?")["answer"]
    state = qa.run(question="What is the capital of Japan?", stream=True)
    chunks = list(state.text_iter("answer"))
    assert len(chunks) > 1
    assert "".join(chunks) == state["answer"] == expected


def test_gen_regex(backend) -> None:
    """Needs constrained decoding (sampling_params.regex)."""

    @sgl.function
    def sentence(s):
        s += sgl.user(FRANCE)
        s += sgl.assistant(
            sgl.gen("answer", max_tokens=16, regex=r"(Paris|Lyon|Nice) is the capital\.", temperature=0)
        )

    state = run_ok(sentence)
    assert re.fullmatch(r"(Paris|Lyon|Nice) is the capital\.", state["answer"]), state["answer"]


def test_gen_int(backend) -> None:
    """``gen_int``: the frontend sends SGLang's integer regex (constrained decoding) and stops at a space."""

    @sgl.function
    def count(s):
        s += sgl.user("How many countries are in the list? France, Japan, Italy.")
        s += sgl.assistant("There are " + sgl.gen_int("n", max_tokens=4))

    state = run_ok(count)
    assert re.fullmatch(r"[-+]?[0-9]+", state["n"]), state["n"]


def test_flush_cache_and_server_info(backend) -> None:
    backend.flush_cache()
    assert backend.get_server_info()["model_path"] == default_model_path()
    assert backend.get_model_name() == default_model_path()
