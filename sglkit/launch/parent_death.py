"""Parent-death signal: a child process asks Linux to signal it when its parent goes (launch and scheduler processes).

One definition for both users: ``sglkit.launch.process`` applies it in a launched server's ``preexec_fn``;
the server's scheduler process calls it first thing, so a killed server takes its scheduler down too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_prctl = None


def _load_prctl():
    """libc's prctl with its argument types, loaded once (None where unavailable)."""
    global _prctl
    if _prctl is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            prctl = libc.prctl
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
            prctl.restype = ctypes.c_int
            _prctl = prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl or None


def parent_death_supported() -> bool:
    """True where :func:`die_with_parent` works (Linux with a loadable prctl)."""
    return sys.platform.startswith("linux") and _load_prctl() is not None


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> bool:
    """Make the calling process receive ``sig`` when the thread that created it exits (Linux prctl).

    Call it first thing in a child process (e.g. a server's scheduler subprocess) so that a killed parent takes
    the child down too. If ``parent_pid`` is given and the parent is already gone, ``sig`` is raised at once.
    Returns False where unsupported (non-Linux).
    """
    prctl = _load_prctl() if sys.platform.startswith("linux") else None
    if prctl is None or prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
    return True
