"""sglkit.launch.log_relay: a launched child's output reaches the log file, the tail and the echo, and a flood
never blocks the child."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from sglkit.launch.log_relay import LogRelay
from sglkit.launch.process import execute_shell_command, tail_log, terminate_process


def test_a_relay_drains_a_pipe_into_file_and_tail(tmp_path):
    read_fd, write_fd = os.pipe()
    log_path = tmp_path / "out.log"
    relay = LogRelay(os.fdopen(read_fd, "rb"), str(log_path), echo=False).start()
    os.write(write_fd, "first\nprogress 10%\rprogress 100%\nhalf a line, then é".encode())
    os.close(write_fd)
    assert relay.join(10.0) and relay.done
    assert relay.tail(3) == ["first", "progress 100%", "half a line, then é"]  # \r updates collapse
    assert relay.tail(0) == []
    assert log_path.read_bytes() == "first\nprogress 10%\rprogress 100%\nhalf a line, then é".encode()


def test_logs_go_to_file_tail_and_stdout(capsys):
    script = (
        "import sys\nfor i in range(3000): print(f'line {i}')\n"
        "print('to stderr', file=sys.stderr)\nprint('no newline', end='')"
    )
    process = execute_shell_command(f"python -c {shlex.quote(script)}", echo=True)
    assert process.wait(timeout=60) == 0
    assert tail_log(process, 3).splitlines() == ["line 2999", "to stderr", "no newline"]
    terminate_process(process)  # joins the relay: the file and the echo are complete
    text = Path(process.log_path).read_text()
    assert text.startswith("line 0\nline 1\n") and text.endswith("to stderr\nno newline")
    assert len(text.splitlines()) == 3002
    out = capsys.readouterr().out
    assert "line 1500\n" in out and "to stderr\n" in out


def test_a_flood_of_output_never_blocks_the_child():
    # ~8 MB on one pipe without echo: far more than a pipe buffer holds; the child must still finish.
    process = execute_shell_command(
        "python -c \"import sys; [sys.stdout.write('x' * 79 + chr(10)) for _ in range(100000)]\"", echo=False
    )
    assert process.wait(timeout=120) == 0
    terminate_process(process)
    assert os.path.getsize(process.log_path) == 80 * 100000
    assert tail_log(process, 1) == "x" * 79
