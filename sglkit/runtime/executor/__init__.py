"""Executor side of the runtime (scheduler -> executor -> model): the model runner and the sampler.

``ModelRunner`` loads the model, owns the KV pools and the attention backend, runs a ``ForwardBatch`` to logits
and samples next tokens; ``EmbeddingModelRunner`` is the same loading path sized for prefill-only embedding.
"""
