"""Runtime: the serving engine between the HTTP edge and the model (server -> runtime -> models/layers/cache -> core).

- ``frontend/``: before and after the scheduler, in the caller's process: validate and tokenize inputs
  (``input_processor``, ``embedding_input``), load tokenizers, fold output deltas into responses
  (``output_folder``).
- ``scheduler/``: queue, admission policy, batch building, finish checks and outputs, statistics, and the
  scheduler process loop; ``create_scheduler`` picks the generation or the embedding scheduler.
- ``executor/``: the model runner (weights, KV pools, forward, sampling) and the sampler.
- ``engine.py``: ``sglkit.Engine``, the same scheduler driven in-process.
"""
