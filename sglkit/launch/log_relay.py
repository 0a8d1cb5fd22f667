"""Launch, output side: a launched child's stdout pipe -> log file + in-memory tail + optional notebook echo.

Sits between a launched process (``sglkit.launch.process``) and the notebook. A daemon thread always drains
the child's pipe, so the child never blocks on a full pipe. The echo to ``sys.stdout`` runs on a second thread
behind a bounded queue: if the notebook or terminal cannot keep up, echo lines are dropped (and counted)
instead of stalling the reader. The log file always gets every byte.
"""

from __future__ import annotations

import codecs
import collections
import os
import queue
import sys
import threading
from typing import IO

DEFAULT_TAIL_LINES = 2000  # lines kept in memory for tail()
_MAX_PARTIAL_CHARS = 64 * 1024  # a "line" longer than this is cut, so memory stays bounded
_ECHO_QUEUE_LINES = 10_000
_READ_CHUNK_BYTES = 64 * 1024


class LogRelay:
    """Drains one pipe on a daemon thread into a log file, a bounded tail and optionally ``sys.stdout``.

    ``echo`` lines are written to whatever ``sys.stdout`` is at write time (a Jupyter kernel's stream in a
    notebook). Use :meth:`tail` for the last lines, :meth:`join` to wait for end-of-file.
    """

    def __init__(
        self,
        pipe: IO[bytes],
        log_path: str,
        *,
        echo: bool = True,
        tail_lines: int = DEFAULT_TAIL_LINES,
        name: str = "sglkit-log",
    ) -> None:
        self.log_path = log_path
        self.echo = echo
        self.num_dropped_echo_lines = 0
        self._pipe = pipe
        self._lines: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._lock = threading.Lock()
        self._echo_queue: queue.Queue[str | None] | None = (
            queue.Queue(maxsize=_ECHO_QUEUE_LINES) if echo else None
        )
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True)
        self._echoer = (
            threading.Thread(target=self._echo_loop, name=f"{name}-echo", daemon=True) if echo else None
        )

    def start(self) -> LogRelay:
        """Start the reader (and echo) threads; returns self."""
        if self._echoer is not None:
            self._echoer.start()
        self._reader.start()
        return self

    @property
    def done(self) -> bool:
        """True once the pipe reached end-of-file (every writer of the pipe has exited or closed it)."""
        return not self._reader.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for end-of-file and for the echo backlog to be written; True if both."""
        self._reader.join(timeout)
        if self._echoer is not None and not self._reader.is_alive():
            self._echoer.join(timeout)
            return not self._echoer.is_alive()
        return not self._reader.is_alive()

    def tail(self, num_lines: int = 50) -> list[str]:
        """The last ``num_lines`` complete lines seen (carriage-return updates collapsed to their last state)."""
        with self._lock:
            lines = list(self._lines)
        return lines[-num_lines:] if num_lines > 0 else []

    # -- threads ------------------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        partial = ""
        log_file = self._open_log_file()
        try:
            fd = self._pipe.fileno()
            while True:
                try:
                    chunk = os.read(fd, _READ_CHUNK_BYTES)
                except OSError:
                    break
                if not chunk:
                    break
                if log_file is not None:
                    try:
                        log_file.write(chunk)
                    except OSError:  # disk full or similar: keep draining the pipe regardless
                        log_file = None
                *lines, partial = (partial + decoder.decode(chunk)).split("\n")
                if len(partial) > _MAX_PARTIAL_CHARS:
                    lines.append(partial)
                    partial = ""
                for line in lines:
                    self._add_line(line)
            partial += decoder.decode(b"", final=True)
            if partial:
                self._add_line(partial)
        finally:
            if log_file is not None:
                try:
                    log_file.close()
                except OSError:
                    pass
            try:
                self._pipe.close()
            except OSError:
                pass
            if self._echo_queue is not None:
                self._echo_queue.put(None)  # blocking put: the sentinel must arrive

    def _open_log_file(self) -> IO[bytes] | None:
        try:
            return open(self.log_path, "ab", buffering=0)  # unbuffered: the file is current for `tail -f`
        except OSError:
            return None

    def _add_line(self, line: str) -> None:
        visible = line.rstrip("\r").rsplit("\r", 1)[-1]  # what a terminal shows after \r progress updates
        with self._lock:
            self._lines.append(visible)
        if self._echo_queue is not None:
            try:
                self._echo_queue.put_nowait(line + "\n")
            except queue.Full:
                self.num_dropped_echo_lines += 1

    def _echo_loop(self) -> None:
        assert self._echo_queue is not None
        while True:
            batch = [self._echo_queue.get()]
            while batch[-1] is not None and len(batch) < 256:
                try:
                    batch.append(self._echo_queue.get_nowait())
                except queue.Empty:
                    break
            text = "".join(item for item in batch if item is not None)
            if text:
                _write_stdout(text)
            if batch[-1] is None:
                return


def _write_stdout(text: str) -> None:
    stream = sys.stdout
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except Exception:  # noqa: BLE001 - any stream may be closed or replaced (kernel restart, pytest capture)
        pass  # a failing echo must not kill the relay thread
