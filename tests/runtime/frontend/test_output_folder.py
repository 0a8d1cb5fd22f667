"""OutputFolder (sglkit/runtime/frontend/output_folder.py): deltas fold into SGLang's response dict."""

from __future__ import annotations

from sglkit.core.messages import GenerateOutput
from sglkit.runtime.frontend.output_folder import OutputFolder, format_logprobs


def delta(text, ids, finished=False, **logprobs):
    meta = {"id": "r", "finish_reason": {"type": "length", "length": 3} if finished else None}
    return GenerateOutput("r", text, ids, finished, meta, **logprobs)


def test_text_ids_and_meta_accumulate():
    folder = OutputFolder(return_logprob=False)
    folder.add(delta("Hel", [1]))
    folder.add(delta("lo", [2, 3], finished=True))
    assert folder.response() == {
        "text": "Hello",
        "output_ids": [1, 2, 3],
        "meta_info": {"id": "r", "finish_reason": {"type": "length", "length": 3}},
    }
    assert folder.finished and folder.error is None


def test_logprobs_become_sglang_triples():
    folder = OutputFolder(return_logprob=True)
    folder.add(
        delta(
            "a",
            [5],
            input_token_logprobs=[(None, 7), (-0.5, 8)],
            input_top_logprobs=[None, [(-0.5, 8)]],
            output_token_logprobs_delta=[(-0.1, 5)],
            output_top_logprobs_delta=[[(-0.1, 5), (-2.0, 6)]],
        )
    )
    folder.add(delta("b", [6], True, output_token_logprobs_delta=[(-0.2, 6)], output_top_logprobs_delta=[[]]))
    meta = folder.response()["meta_info"]
    assert meta["input_token_logprobs"] == [[None, 7, None], [-0.5, 8, None]]
    assert meta["input_top_logprobs"] == [None, [[-0.5, 8, None]]]
    assert meta["output_token_logprobs"] == [[-0.1, 5, None], [-0.2, 6, None]]
    assert meta["output_top_logprobs"] == [[[-0.1, 5, None], [-2.0, 6, None]], []]


def test_without_logprobs_meta_has_none():
    folder = OutputFolder(return_logprob=False)
    folder.add(delta("x", [1], True, output_token_logprobs_delta=[(-0.1, 1)]))
    assert "output_token_logprobs" not in folder.response()["meta_info"]


def test_error_is_kept():
    folder = OutputFolder(return_logprob=False)
    out = delta("", [], True)
    out.error = "The request does not fit in the KV cache."
    folder.add(out)
    assert folder.error == "The request does not fit in the KV cache."


def test_format_logprobs_empty():
    empty = {
        k: []
        for k in (
            "input_token_logprobs",
            "input_top_logprobs",
            "output_token_logprobs",
            "output_top_logprobs",
        )
    }
    assert format_logprobs(empty) == empty


def test_token_ids_logprobs_fold_only_when_asked():
    folder = OutputFolder(return_logprob=True)
    folder.add(
        delta(
            "a",
            [5],
            input_token_logprobs=[(None, 7), (-0.5, 8)],
            input_token_ids_logprobs=[None, [(-3.0, 1), (-4.0, 2)]],
            output_token_logprobs_delta=[(-0.1, 5)],
            output_token_ids_logprobs_delta=[[(-2.5, 1), (-6.0, 2)]],
        )
    )
    folder.add(
        delta(
            "b",
            [6],
            True,
            input_token_ids_logprobs=[],
            output_token_logprobs_delta=[(-0.2, 6)],
            output_token_ids_logprobs_delta=[[(-1.5, 1), (-7.0, 2)]],
        )
    )
    meta = folder.response()["meta_info"]
    assert meta["input_token_ids_logprobs"] == [None, [[-3.0, 1, None], [-4.0, 2, None]]]
    assert meta["output_token_ids_logprobs"] == [
        [[-2.5, 1, None], [-6.0, 2, None]],
        [[-1.5, 1, None], [-7.0, 2, None]],
    ]
    plain = OutputFolder(return_logprob=True)
    plain.add(delta("a", [5], True, output_token_logprobs_delta=[(-0.1, 5)]))
    assert "output_token_ids_logprobs" not in plain.response()["meta_info"]
