"""Output folding (front end, after the scheduler): one request's GenerateOutput deltas -> SGLang's response dict.

The scheduler sends news only (text, token ids and logprobs since the last output). ``OutputFolder`` adds them up
for one request; the offline Engine returns ``response()`` at the end (or streams the deltas), and the HTTP
tokenizer manager sends ``response()`` as the cumulative chunk of every step. With ``--incremental-streaming-output``
a streamed /generate chunk is ``response(incremental=True)`` instead, as SGLang's: only what the last ``add`` brought
(``text``, ``output_ids`` and the output logprob lists); the input logprobs and the rest of meta_info stay whole.
Imports no scheduler code, so the HTTP process stays light.
"""

from __future__ import annotations

from typing import Any

from sglkit.core.messages import GenerateOutput

__all__ = ["OutputFolder", "format_logprobs"]

LOGPROB_KEYS = ("input_token_logprobs", "input_top_logprobs", "output_token_logprobs", "output_top_logprobs")
TOKEN_IDS_KEYS = ("input_token_ids_logprobs", "output_token_ids_logprobs")
OUTPUT_POSITION_KEYS = (
    "output_token_logprobs",
    "output_top_logprobs",
    "output_token_ids_logprobs",
)  # one per token
POSITION_LIST_KEYS = ("input_top_logprobs", "output_top_logprobs", *TOKEN_IDS_KEYS)


def _triples(pairs: list) -> list[list]:
    return [[logprob, token_id, None] for logprob, token_id in pairs]


def format_logprobs(logprobs: dict[str, list]) -> dict[str, list]:
    """(logprob, id) pairs -> SGLang's [logprob, id, None] triples; per-position lists (top-k, token_ids_logprob)
    likewise, None rows kept. The token_ids keys are there only when the request asked for token_ids_logprob."""
    out = {
        "input_token_logprobs": _triples(logprobs["input_token_logprobs"]),
        "output_token_logprobs": _triples(logprobs["output_token_logprobs"]),
    }
    for key in POSITION_LIST_KEYS:
        if key in logprobs:
            out[key] = [None if t is None else _triples(t) for t in logprobs[key]]
    return out


class OutputFolder:
    """Folds one request's GenerateOutput deltas into its cumulative text, token ids, meta_info and logprobs."""

    def __init__(self, return_logprob: bool) -> None:
        self.return_logprob = return_logprob
        self.text = ""
        self.output_ids: list[int] = []
        self.meta_info: dict[str, Any] = {}
        self.finished = False
        self.error: str | None = None
        self.logprobs: dict[str, list] = {key: [] for key in LOGPROB_KEYS}
        self.last_text_len = (
            0  # text and output_ids before the latest add (where an incremental chunk starts)
        )
        self.last_num_output_ids = 0

    def add(self, out: GenerateOutput) -> None:
        """Fold one delta in (the latest meta_info replaces the previous one)."""
        self.last_text_len, self.last_num_output_ids = len(self.text), len(self.output_ids)
        self.text += out.text_delta
        self.output_ids.extend(out.output_ids_delta)
        self.meta_info = dict(out.meta_info)
        self.finished = out.finished
        self.error = out.error
        if self.return_logprob:
            self.logprobs["input_token_logprobs"].extend(out.input_token_logprobs)
            self.logprobs["input_top_logprobs"].extend(out.input_top_logprobs)
            self.logprobs["output_token_logprobs"].extend(out.output_token_logprobs_delta)
            self.logprobs["output_top_logprobs"].extend(out.output_top_logprobs_delta)
            if out.input_token_ids_logprobs is not None:  # token_ids_logprob was asked for
                self.logprobs.setdefault("input_token_ids_logprobs", []).extend(out.input_token_ids_logprobs)
                self.logprobs.setdefault("output_token_ids_logprobs", []).extend(
                    out.output_token_ids_logprobs_delta or []
                )

    def response(self, incremental: bool = False) -> dict[str, Any]:
        """SGLang's ``{"text", "output_ids", "meta_info"}``; logprobs as [logprob, id, None] triples in meta_info.

        ``incremental``: only the text, output ids and output logprobs the latest ``add`` brought."""
        meta = dict(self.meta_info)
        if self.return_logprob:
            meta.update(format_logprobs(self.logprobs))
        if not incremental:
            return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}
        start = self.last_num_output_ids
        for key in OUTPUT_POSITION_KEYS:
            if key in meta:
                meta[key] = meta[key][start:]
        return {
            "text": self.text[self.last_text_len :],
            "output_ids": self.output_ids[start:],
            "meta_info": meta,
        }
