"""Logging in SGLang's shape: ``[2025-01-13 13:00:41] message`` (``[... TP0]`` in the scheduler process)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "info", prefix: str = "") -> None:
    """Route sglkit (and uvicorn) logs to stderr as ``[time<prefix>] message`` at ``level``."""
    tag = f" {prefix}" if prefix else ""
    formatter = logging.Formatter(f"[%(asctime)s{tag}] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    for name in ("sglkit", "uvicorn", "uvicorn.error", "uvicorn.access"):
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.setLevel(level.upper())
        log.propagate = False
