"""The constrained-decoding workload of ``bench_offline_throughput --json-schema``: constrained vs unconstrained.

The same prompts run twice in one process: first with a JSON schema (every request ends when its grammar does), then
unconstrained with ``ignore_eos`` and each request's ``max_new_tokens`` set to the length its constrained output
had, so both runs decode the same number of tokens per request and the output-throughput ratio is the grammar's
cost. The grammar's compile time is measured on its own (a fresh backend: first compile, then the cached lookup).
"""

from __future__ import annotations

import json
import time

LEAF_TYPES = (
    {"type": "integer", "minimum": 0, "maximum": 1000},
    {"type": "boolean"},
    {"enum": ["red", "green", "blue", "violet"]},
    {"type": "string", "maxLength": 12},
    {"type": "null"},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3},
)


def bench_schema(num_properties: int = 30) -> dict:
    """An object schema with ``num_properties`` required properties of mixed types (the issue's 30-property case)."""
    props = {f"field_{i:02d}": LEAF_TYPES[i % len(LEAF_TYPES)] for i in range(num_properties)}
    return {"type": "object", "properties": props, "required": sorted(props)}


def load_schema(arg: str) -> dict:
    """``--json-schema`` value: "builtin" (``bench_schema()``) or a path to a JSON Schema file."""
    if arg == "builtin":
        return bench_schema()
    with open(arg, encoding="utf-8") as f:
        return json.load(f)


def compile_times(model_path: str, schema: dict) -> tuple[float, float]:
    """(seconds of the first compile, seconds of the second, cached) of ``schema`` on a fresh xgrammar backend."""
    from transformers import AutoConfig, AutoTokenizer

    from sglkit.constrained import create_grammar_backend

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    vocab_size = AutoConfig.from_pretrained(model_path).vocab_size
    backend = create_grammar_backend("xgrammar", tokenizer, vocab_size, [tokenizer.eos_token_id])
    spec = ("json_schema", json.dumps(schema))
    try:
        start = time.perf_counter()
        backend.compile(spec)
        first = time.perf_counter() - start
        start = time.perf_counter()
        backend.compile(spec)
        return first, time.perf_counter() - start
    finally:
        backend.shutdown()


def run_constrained_pair(
    model_path: str,
    prompts: list[list[int]],
    max_new_tokens: int,
    schema: dict,
    engine_kwargs: dict,
    rounds: int = 1,
) -> tuple[dict, dict]:
    """(constrained result, unconstrained result on the same prompts and per-request lengths), one engine.

    With ``rounds`` > 1 the two runs alternate that many times and each side keeps its fastest round, so a
    machine whose load changes during the run biases neither side.
    """
    import sglkit

    constrained_params = {
        "temperature": 0,
        "max_new_tokens": max_new_tokens,
        "json_schema": json.dumps(schema),
    }
    best: dict[str, dict] = {}

    def timed(name: str, params: list[dict]) -> None:
        llm.flush_cache()
        start = time.perf_counter()
        outs = llm.generate(input_ids=prompts, sampling_params=params)
        elapsed = time.perf_counter() - start
        if name not in best or elapsed < best[name]["elapsed"]:
            best[name] = {"elapsed": elapsed, "outputs": outs}

    with sglkit.Engine(model_path=model_path, random_seed=0, **engine_kwargs) as llm:
        llm.generate(input_ids=prompts[0][:8], sampling_params={**constrained_params, "max_new_tokens": 4})
        timed("constrained", [constrained_params] * len(prompts))
        lengths = [max(1, len(o["output_ids"])) for o in best["constrained"]["outputs"]]
        plain = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in lengths]
        for round_index in range(rounds):
            if round_index:
                timed("constrained", [constrained_params] * len(prompts))
            timed("unconstrained", plain)
    constrained, unconstrained = best["constrained"], best["unconstrained"]
    for result in (constrained, unconstrained):
        result["output_tokens"] = sum(len(o["output_ids"]) for o in result["outputs"])
    constrained["num_valid"] = sum(_is_valid(o["text"], schema) for o in constrained["outputs"])
    return constrained, unconstrained


def _is_valid(text: str, schema: dict) -> bool:
    try:
        import jsonschema

        jsonschema.validate(json.loads(text), schema)
        return True
    except Exception:  # noqa: BLE001 - any parse or validation failure counts as invalid
        return False
