"""Core: what every part of sglkit shares and nothing else defines. Imports nothing else in sglkit.

- ``ForwardBatch`` / ``ForwardMode``: the model runner's input for one forward pass.
- ``Req`` / ``FinishReason``: the plain request object of the queue, the radix cache and the scheduler.
- ``SamplingParams``: SGLang's sampling parameters with their ranges.
- ``messages``: the dataclasses that cross the front-end / scheduler boundary (in-process or over ZMQ).
- ``ModelConfig``: the HF config normalised once (head_dim, KV heads, context length, rope, window, ...).
"""

from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.core.model_config import ModelConfig
from sglkit.core.req import FinishReason, Req
from sglkit.core.sampling_params import SamplingParamError, SamplingParams

__all__ = [
    "FinishReason",
    "ForwardBatch",
    "ForwardMode",
    "ModelConfig",
    "Req",
    "SamplingParamError",
    "SamplingParams",
]
