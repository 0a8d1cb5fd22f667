"""Launch: notebook cell -> launched server process -> its end: the whole notebook process lifecycle.

- ``process``: spawn a command in its own session, registry, pid files, terminate_process / kill_all_servers /
  atexit cleanup.
- ``ports``: pick, claim and check ports; ``process_tree``: end a process tree (descendants + session).
- ``log_relay``: the child's output -> log file + tail + notebook echo.
- ``session_watchdog``: a helper process that ends launched sessions when the kernel dies.
- ``parent_death``: the Linux parent-death signal (also used by the server's scheduler process).
- ``log_format``: SGLang-shaped log lines (server and scheduler processes).

``sglkit.utils`` re-exports these under SGLang's names. Names below load lazily, so importing one submodule
(e.g. ``parent_death`` in a scheduler process) does not pull in the rest.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LogRelay",
    "ProcessTree",
    "SessionWatchdog",
    "configure_logging",
    "die_with_parent",
    "execute_shell_command",
    "is_port_free",
    "kill_all_servers",
    "pick_free_port",
    "spawn",
    "tail_log",
    "terminate_process",
]

_LAZY = {
    "LogRelay": "log_relay",
    "ProcessTree": "process_tree",
    "SessionWatchdog": "session_watchdog",
    "configure_logging": "log_format",
    "die_with_parent": "parent_death",
    "execute_shell_command": "process",
    "is_port_free": "ports",
    "kill_all_servers": "process",
    "pick_free_port": "ports",
    "spawn": "process",
    "tail_log": "process",
    "terminate_process": "process",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
