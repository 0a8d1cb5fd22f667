"""Triton kernels of the triton attention backend (imported only by ``triton_backend``, never by ``import sglkit``).

One concept per module:

- ``kv_store``: one fused K+V write per token into the paged pool at ``out_cache_loc``;
- ``kv_indices``: a batch's int32 KV-slot list built from ``req_to_token`` (a kernel, no host sync);
- ``decode_attention``: split-KV decode over the pool with grouped GQA, then an LSE merge of the splits;
- ``extend_attention``: causal attention of new tokens over prefix + new KV read from the pool;
- ``common``: what the kernels share (soft-cap tanh, block sizes, the interpreter switch).

Every kernel runs under Triton's CPU interpreter (``TRITON_INTERPRET=1``) as well as on CUDA; nothing here uses
a Triton API newer than 3.6.
"""
