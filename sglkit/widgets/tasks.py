"""Background work for the widgets (button click -> BackgroundTask / Ticker -> a daemon thread).

A click handler runs in the kernel's main thread; anything that waits on the server there would freeze the
notebook. A :class:`BackgroundTask` runs one action at a time on a daemon thread (clicks while it is busy are
ignored) and :class:`Ticker` calls a function every ``interval`` seconds until stopped. Setting widget
values from these threads is fine: ipywidgets sends the updates through the kernel's thread-safe IOPub.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundTask", "Ticker"]

logger = logging.getLogger("sglkit.widgets")


class BackgroundTask:
    """Runs at most one callable at a time on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """True while an action runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in the background; False (and nothing started) if an action is still running."""
        with self._lock:
            if self.busy:
                return False
            self.error = None
            self._thread = threading.Thread(target=self._run, args=(fn, args), name=self.name, daemon=True)
            self._thread.start()
            return True

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a widget action must not kill the thread silently
            self.error = exc
            logger.exception("%s failed", self.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the running action (if any) ends; True if none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy


class Ticker:
    """Calls ``fn()`` now and then every ``interval`` seconds on a daemon thread, until :meth:`stop`."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._fn = fn
        self.name = name
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.interval = 0.0

    @property
    def running(self) -> bool:
        """True while the ticker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, interval: float) -> None:
        """(Re)start ticking every ``interval`` seconds (> 0)."""
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.stop()
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(self._stop,), name=self.name, daemon=True)
        self._thread.start()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._fn()
            except Exception:  # noqa: BLE001 - keep ticking; the widget shows the state
                logger.exception("%s: refresh failed", self.name)
            stop.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop ticking; waits up to ``timeout`` s for a call in progress to end. True once the thread is gone."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.running
