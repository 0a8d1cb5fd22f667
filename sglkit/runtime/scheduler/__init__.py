"""Scheduler side of the runtime: queue, admission policy, batch building, outputs, statistics, the process loop.

``create_scheduler(server_args)`` returns the generation ``Scheduler`` or, with ``is_embedding``, the
``EmbeddingScheduler``; both are ``SchedulerBase`` objects driven by ``handle(msg)`` and ``step()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglkit.runtime.scheduler.base import SchedulerBase
    from sglkit.server_args import ServerArgs

__all__ = ["create_scheduler"]


def create_scheduler(server_args: ServerArgs, tokenizer=None) -> SchedulerBase:
    """The scheduler for ``server_args``: embedding (``is_embedding``) or generation; loads the model."""
    if server_args.is_embedding:
        from sglkit.runtime.scheduler.embedding_scheduler import EmbeddingScheduler

        return EmbeddingScheduler(server_args, tokenizer)
    from sglkit.runtime.scheduler.scheduler import Scheduler

    return Scheduler(server_args, tokenizer)
