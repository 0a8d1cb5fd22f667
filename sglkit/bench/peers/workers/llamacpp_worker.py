"""Benchmark peer worker for llama.cpp (llama-cpp-python's low-level API), run in .bench-peers/llamacpp.

``python -m llamacpp_worker < job.json`` (PYTHONPATH = this folder). Loads ``job['gguf']`` and decodes every
prompt of a call as its own sequence in one llama.cpp context (unified KV cache, ``n_seq_max = max_batch``):
prompts are packed into batches of up to ``n_batch`` tokens, then one decode step feeds one token per live
sequence — the parallel decoding of llama.cpp's ``batched`` example / llama-server's slots. Greedy: argmax of
each sequence's logits (numpy). Threads: ``job['threads']`` for both prefill and decode.
"""

from __future__ import annotations

import sys

try:
    from . import peer_harness
except ImportError:  # run as a top-level module in the side venv
    import peer_harness

N_BATCH = 2048  # logical batch (tokens per llama_decode); the physical ubatch is llama.cpp's default 512


class LlamaCppGreedy:
    """One llama.cpp model + context; ``generate(prompts, max_tokens)`` decodes all prompts in parallel."""

    def __init__(self, job: dict) -> None:
        import llama_cpp as lc
        import numpy as np

        self.lc, self.np = lc, np
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(job["gguf"].encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {job['gguf']}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        longest = max([len(p) for p in job["prompts"]] + [len(job["decode_prompt"]), len(job["ttft_prompt"])])
        self.max_seqs = max(1, job["max_batch"])
        per_seq = longest + max(job["output_len"], job["decode_len"]) + 8
        ctx_params = lc.llama_context_default_params()
        ctx_params.n_ctx = per_seq * self.max_seqs
        ctx_params.n_batch = N_BATCH
        ctx_params.n_seq_max = self.max_seqs
        ctx_params.n_threads = ctx_params.n_threads_batch = job["threads"]
        ctx_params.kv_unified = True
        self.ctx = lc.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.batch = lc.llama_batch_init(max(N_BATCH, self.max_seqs), 0, self.max_seqs)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, pos, seq, wants_logits) entries."""
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, index: int) -> int:
        row = self.lc.llama_get_logits_ith(self.ctx, index)
        return int(self.np.ctypeslib.as_array(row, shape=(self.n_vocab,)).argmax())

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy ``max_tokens`` for each prompt (no EOS stop), ``max_seqs`` sequences at a time."""
        outputs: list[list[int]] = []
        for lo in range(0, len(prompts), self.max_seqs):
            outputs.extend(self._generate_group(prompts[lo : lo + self.max_seqs], max_tokens))
        return outputs

    def _generate_group(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        outs: list[list[int]] = [[] for _ in prompts]
        pending: list[tuple[int, int, int, bool]] = []
        for seq, prompt in enumerate(prompts):  # prefill, packed into n_batch-token calls
            for pos, token in enumerate(prompt):
                pending.append((token, pos, seq, pos == len(prompt) - 1))
                if len(pending) == N_BATCH:
                    self._flush_prefill(pending, outs)
                    pending = []
        if pending:
            self._flush_prefill(pending, outs)
        for step in range(1, max_tokens):
            entries = [(outs[s][-1], len(p) + step - 1, s, True) for s, p in enumerate(prompts)]
            self._decode(entries)
            for i, seq in enumerate(range(len(prompts))):
                outs[seq].append(self._argmax(i))
        return outs

    def _flush_prefill(self, entries: list[tuple[int, int, int, bool]], outs: list[list[int]]) -> None:
        self._decode(entries)
        for i, (_, _, seq, logits) in enumerate(entries):
            if logits:
                outs[seq].append(self._argmax(i))


def load(job: dict):
    """(generate, version) for the harness."""
    import llama_cpp

    if not job.get("gguf"):
        raise ValueError("the llama.cpp job needs 'gguf'")
    return LlamaCppGreedy(job).generate, f"llama-cpp-python {llama_cpp.__version__}"


if __name__ == "__main__":
    sys.exit(peer_harness.main("llama.cpp", load))
