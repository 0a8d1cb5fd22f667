"""Scheduler output path: after sampling, append tokens, check finish conditions, detokenize, emit GenerateOutput.

Finish order (SGLang's): max_new_tokens -> EOS / stop_token_ids -> stop strings -> stop_regex -> the grammar
(a constrained request whose grammar rejects the token aborts; one whose grammar reached its end stops) -> context
length.
While stop strings are active, streamed text holds back the last ``max_stop_len - 1`` characters so a
stream never shows the start of a stop string that the final text trims.
Detokenization is lazy: ``req.text`` is brought up to date (``catch_up_text``) only when something reads it: every
step for a request with stop strings or stop_regex, else when an output is built (a stream chunk, the final
output) or the request finishes by length. A non-streaming request is detokenized once, at its end.
Without a tokenizer (``--skip-tokenizer-init``: ``tokenizer`` is None) nothing is detokenized: ``req.text`` stays
empty and outputs carry token ids only (the front end refused stop strings, stop_regex and grammars).
"""

from __future__ import annotations

import re
import time

import torch

from sglkit.core.messages import GenerateOutput
from sglkit.core.req import FinishReason, Req
from sglkit.runtime.executor.sampling.logprobs import compute_logprobs, get_token_logprobs, get_top_logprobs
from sglkit.runtime.scheduler.detokenizer import IncrementalDetokenizer, find_stop_str
from sglkit.runtime.scheduler.readout import RowLogprobs, StepReadout


def init_detokenizer(req: Req, tokenizer) -> None:
    """Attach an incremental detokenizer to ``req`` (once; never without a tokenizer)."""
    if req.detokenizer is None and tokenizer is not None:
        params = req.sampling_params
        req.detokenizer = IncrementalDetokenizer(
            tokenizer,
            prompt_ids=req.origin_input_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )


def append_token(req: Req, token_id: int, eos_token_ids: set[int], context_len: int, tokenizer) -> None:
    """Record one sampled token and set ``req.finished_reason`` when a finish condition holds.

    ``tokenizer`` None (token-in, token-out): the token is not detokenized and ``req.text`` stays "".
    """
    params = req.sampling_params
    init_detokenizer(req, tokenizer)
    req.output_ids.append(token_id)
    if not req.first_token_time:
        req.first_token_time = time.perf_counter()
    prev_len = len(req.text)
    if params.stop or params.stop_regex:  # the finish checks read the text
        catch_up_text(req)

    if len(req.output_ids) >= params.max_new_tokens:
        req.finished_reason = FinishReason("length", length=params.max_new_tokens)
    elif (not params.ignore_eos and token_id in eos_token_ids) or token_id in (params.stop_token_ids or ()):
        req.finished_reason = FinishReason("stop", matched=token_id)
    if req.finished_reason is None and params.stop:
        found = find_stop_str(req.text, params.stop, max(0, prev_len - params.max_stop_str_len + 1))
        if found is not None:
            index, matched = found
            req.text = req.text[: index + (len(matched) if params.no_stop_trim else 0)]
            req.finished_reason = FinishReason("stop", matched=matched)
    if req.finished_reason is None and params.stop_regex:
        _check_stop_regex(req)
    if req.finished_reason is None and req.grammar is not None:
        if not req.grammar.accept_token(token_id):
            req.finished_reason = FinishReason(
                "abort", message=f"Token {token_id} is not allowed by the request's grammar."
            )
        elif req.grammar.is_terminated():
            req.finished_reason = FinishReason("stop", matched=token_id)
    if req.finished_reason is None and req.seq_len >= context_len:
        req.finished_reason = FinishReason("length", length=len(req.output_ids))
    finished_by_length = req.finished_reason is not None and req.finished_reason.type == "length"
    if finished_by_length and req.detokenizer is not None:
        catch_up_text(req)
        req.text += req.detokenizer.flush()


def catch_up_text(req: Req) -> None:
    """Detokenize the output ids not yet in ``req.text`` (no-op without a detokenizer or after a stop trim)."""
    detokenizer = req.detokenizer
    if detokenizer is not None and detokenizer.num_tokens < len(req.output_ids):
        req.text += detokenizer.append(req.output_ids[detokenizer.num_tokens :])


def _check_stop_regex(req: Req) -> None:
    """Stop at the leftmost match of any ``stop_regex`` pattern (trimmed unless ``no_stop_trim``).

    The whole text is searched: a match that ended in earlier text would have stopped the request then.
    """
    params = req.sampling_params
    best: re.Match | None = None
    for pattern in params.stop_regexes:
        match = re.search(pattern, req.text)
        if match is not None and (best is None or match.start() < best.start()):
            best = match
    if best is not None:
        req.text = req.text[: best.end() if params.no_stop_trim else best.start()]
        req.finished_reason = FinishReason("stop", matched=best.group(0))


def streamable_text_end(req: Req) -> int:
    """How much of ``req.text`` may be sent now (all of it once finished)."""
    if req.finished() or not req.sampling_params.stop:
        return len(req.text)
    hold = req.sampling_params.max_stop_str_len - 1
    return max(req.sent_text_len, len(req.text) - hold)


def make_output(req: Req) -> GenerateOutput:
    """The news of ``req`` since its last output (and its meta_info)."""
    catch_up_text(req)
    end = streamable_text_end(req)
    text_delta = req.text[req.sent_text_len : end]
    ids_delta = req.output_ids[req.sent_output_len :]
    finished = req.finished()
    meta_info = {
        "id": req.rid,
        "finish_reason": req.finished_reason.to_json() if finished else None,
        "prompt_tokens": len(req.origin_input_ids),
        "completion_tokens": len(req.output_ids),
        "cached_tokens": req.cached_tokens,
    }
    if finished:
        meta_info["e2e_latency"] = round(time.perf_counter() - req.created_time, 6)
    out = GenerateOutput(
        rid=req.rid,
        text_delta=text_delta,
        output_ids_delta=list(ids_delta),
        finished=finished,
        meta_info=meta_info,
    )
    if req.return_logprob:
        out.input_token_logprobs = req.input_token_logprobs if req.sent_output_len == 0 else []
        out.input_top_logprobs = req.input_top_logprobs if req.sent_output_len == 0 else []
        done = req.sent_output_len
        out.output_token_logprobs_delta = req.output_token_logprobs[done:]
        out.output_top_logprobs_delta = req.output_top_logprobs[done:]
        if req.token_ids_logprob is not None:
            out.input_token_ids_logprobs = req.input_token_ids_logprobs if done == 0 else []
            out.output_token_ids_logprobs_delta = req.output_token_ids_logprobs[done:]
    if finished and req.finished_reason.type == "abort" and req.finished_reason.message:
        out.error = req.finished_reason.message
    req.sent_text_len = end
    req.sent_output_len = len(req.output_ids)
    return out


def should_stream(req: Req, stream_interval: int) -> bool:
    """True when a streaming request has enough news for a chunk."""
    interval = req.sampling_params.stream_interval or stream_interval
    new_tokens = len(req.output_ids) - req.sent_output_len
    return req.stream and new_tokens > 0 and (new_tokens >= interval or len(req.output_ids) == 1)


def append_tokens(
    reqs: list[Req], readout: StepReadout, eos_token_ids: set[int], context_len: int, tokenizer
) -> None:
    """Record each unfinished request's sampled token (``readout.next_ids[i]``) and its logprobs if asked."""
    for i, req in enumerate(reqs):
        if req.finished():
            continue
        if i in readout.logprobs:
            record_output_logprobs(req, readout.next_ids[i], readout.logprobs[i])
        append_token(req, readout.next_ids[i], eos_token_ids, context_len, tokenizer)


def record_output_logprobs(req: Req, token_id: int, row: RowLogprobs) -> None:
    """Append the sampled token's logprob (and its top-k / token_ids_logprob entries) read back this step."""
    req.output_token_logprobs.append((row.token_logprob, token_id))
    if req.top_logprobs_num > 0:
        req.output_top_logprobs.append(list(row.top or []))
    if req.token_ids_logprob is not None:
        req.output_token_ids_logprobs.append(list(row.token_ids or []))


def _token_ids_logprobs(logprobs: torch.Tensor, token_ids: list[int]) -> list[list[tuple[float, int]]]:
    """logprobs: [N, V] -> for each row, the (logprob, token_id) pairs of ``token_ids`` in their order."""
    if not token_ids:
        return [[] for _ in range(logprobs.shape[0])]
    values = logprobs[:, torch.tensor(token_ids, device=logprobs.device)].tolist()  # [N, len(token_ids)]
    return [list(zip(row, token_ids)) for row in values]


def collect_input_logprobs(
    req: Req, logits: torch.Tensor, first_row: int, count: int, first_pos: int
) -> None:
    """Score prompt tokens first_pos+1 .. first_pos+count with logits rows first_row .. first_row+count."""
    lp = compute_logprobs(logits[first_row : first_row + count])  # [count, V]
    targets = torch.tensor(req.origin_input_ids[first_pos + 1 : first_pos + 1 + count], device=lp.device)
    if req.logprob_start_len == 0 and first_pos == 0 and not req.input_token_logprobs:
        req.input_token_logprobs.append((None, req.origin_input_ids[0]))
        req.input_top_logprobs.append(None)
        if req.token_ids_logprob is not None:
            req.input_token_ids_logprobs.append(None)
    if req.token_ids_logprob is not None:
        req.input_token_ids_logprobs.extend(_token_ids_logprobs(lp, req.token_ids_logprob))
    values = get_token_logprobs(lp, targets).tolist()
    req.input_token_logprobs.extend(zip(values, targets.tolist()))
    if req.top_logprobs_num > 0:
        top_v, top_i = get_top_logprobs(lp, req.top_logprobs_num)
        req.input_top_logprobs.extend(list(zip(v, i)) for v, i in zip(top_v.tolist(), top_i.tolist()))
