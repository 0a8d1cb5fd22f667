"""Scheduler process: the server's runtime process. A thin loop recv -> handle -> step -> send over ZMQ.

The HTTP process never runs model compute; it talks to this process with the dataclasses of
``sglkit.core.messages``. This process dies with its parent (PR_SET_PDEATHSIG) and kills itself when a
batch makes no progress for ``watchdog_timeout`` seconds, so a hung runtime never hangs the server.
With tensor parallelism it is rank 0: its scheduler is a ``mirror.LeaderScheduler`` (each handle / step is
broadcast to the follower ranks first), and it exits non-zero when a collective with them fails.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

import zmq

from sglkit.core.messages import ControlResult
from sglkit.launch.log_format import configure_logging
from sglkit.launch.parent_death import die_with_parent
from sglkit.runtime.scheduler.mirror import LeaderScheduler, RankFailedError
from sglkit.runtime.scheduler.rank_process import PortArgs, setup_rank
from sglkit.server_args import ServerArgs

if TYPE_CHECKING:
    from sglkit.runtime.scheduler.base import SchedulerBase

logger = logging.getLogger("sglkit.scheduler")


def start_progress_watchdog(get_progress, is_busy, timeout: float) -> None:
    """Kill this process if the scheduler is busy but its forward counter stalls for ``timeout`` seconds.

    Not the notebook-session watchdog (``sglkit.launch.session_watchdog``): this one guards the scheduler's
    progress (``--watchdog-timeout``), as SGLang's scheduler watchdog does.
    """

    def watch() -> None:
        last, since = get_progress(), time.monotonic()
        while True:
            time.sleep(min(1.0, timeout / 4))
            progress = get_progress()
            if progress != last or not is_busy():
                last, since = progress, time.monotonic()
            elif time.monotonic() - since > timeout:
                logger.error(
                    f"Watchdog timeout: no progress for {timeout:.0f} s. Killing the scheduler process."
                )
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="sglkit-progress-watchdog").start()


def _exit_on_sigterm(*_) -> None:
    """SIGTERM while the model loads: exit at once (nothing to finish yet), skipping interpreter shutdown's GC."""
    signal.signal(
        signal.SIGTERM, signal.SIG_IGN
    )  # a second SIGTERM (tree-wide terminate) must not interrupt exit
    gc.freeze()
    sys.exit(0)


class ShutdownSignal:
    """SIGTERM once serving: a flag the serve loop checks between steps, and a byte that wakes its poller.

    Raising from the handler instead (sys.exit) can land inside a finalizer (e.g. a ZMQ socket's __del__),
    where the exception is swallowed and the process keeps running until something kills it.
    """

    def __init__(self) -> None:
        self.requested = False
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, *_) -> None:
        self.requested = True

    def fileno(self) -> int:
        """The file descriptor that becomes readable when a signal arrives (for the poller)."""
        return self._read.fileno()

    def drain(self) -> None:
        """Consume the wake-up bytes."""
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass


def run_scheduler_process(
    server_args: ServerArgs,
    port_args: PortArgs,
    ready_pipe,
    parent_pid: int,
    init_method: str | None = None,
    with_parent: bool = True,
) -> None:
    """Entry point of the scheduler process (tp rank 0): load the model, report readiness, serve until SIGTERM.

    ``init_method``: where the tp ranks meet (tp_size > 1). ``with_parent``: die with the spawning thread.
    """
    if with_parent:
        die_with_parent(signal.SIGKILL, parent_pid)  # a killed HTTP process takes this one down too
    configure_logging(server_args.log_level, prefix="TP0")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops us itself
    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())  # tqdm's default multiprocessing lock would be reported as leaked
    try:
        from sglkit.runtime.scheduler import create_scheduler

        scheduler = create_scheduler(setup_rank(server_args, 0, init_method))
        if server_args.tp_size > 1:
            scheduler = LeaderScheduler(scheduler)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which exits with the message
        ready_pipe.send(
            {"status": "error", "message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        )
        return
    ctx = zmq.Context()
    recv_sock = ctx.socket(zmq.PULL)
    recv_sock.bind(port_args.scheduler_input)
    send_sock = ctx.socket(zmq.PUSH)
    send_sock.connect(port_args.scheduler_output)
    gc.collect()
    gc.freeze()  # the model and pools are long-lived: keep them out of every later collection (no pauses)
    ready_pipe.send({"status": "ready", **scheduler.get_stats()})
    start_progress_watchdog(
        lambda: scheduler.forward_ct, lambda: not scheduler.is_idle(), server_args.watchdog_timeout
    )
    shutdown = ShutdownSignal()
    try:
        serve(scheduler, recv_sock, send_sock, shutdown)
    except RankFailedError as e:  # a rank or node died (or hung past --dist-timeout): fail, never hang
        logger.error(f"{e}. Exiting the scheduler process.")
        sys.stderr.flush()
        os._exit(1)
    if isinstance(scheduler, LeaderScheduler):
        scheduler.shutdown()  # the followers exit too
    # SIGTERM: the server is stopping. Close the sockets and return (multiprocessing runs the finalizers and
    # exits); skip the cyclic GC passes of interpreter shutdown, which take seconds with a loaded model.
    recv_sock.close(linger=0)
    send_sock.close(linger=0)
    ctx.term()
    gc.freeze()


def serve(scheduler: SchedulerBase, recv_sock, send_sock, shutdown: ShutdownSignal) -> None:
    """recv -> handle -> step -> send until SIGTERM (idle: a step every second, which heartbeats the tp ranks)."""
    poller = zmq.Poller()
    poller.register(recv_sock, zmq.POLLIN)
    poller.register(shutdown, zmq.POLLIN)
    while not shutdown.requested:
        timeout_ms = 0 if not scheduler.is_idle() else 1000
        while not shutdown.requested and (events := dict(poller.poll(timeout_ms))):
            if recv_sock in events:
                handle_message(scheduler, recv_sock.recv_pyobj(), send_sock)
            if shutdown in events:
                shutdown.drain()
            timeout_ms = 0
        if not shutdown.requested:
            outputs = scheduler.step()
            if outputs:
                send_sock.send_pyobj(outputs)


def handle_message(scheduler: SchedulerBase, msg, send_sock) -> None:
    """Dispatch one message from the HTTP process (``SchedulerBase.handle``) and send back what it produced."""
    result = scheduler.handle(msg)
    if isinstance(result, ControlResult) or result:
        send_sock.send_pyobj(result)
