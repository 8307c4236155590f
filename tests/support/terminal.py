"""A command with stderr on a pseudo-terminal, as in an operator's shell (progress bars show only there)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import tempfile
import termios
from pathlib import Path


def stderr_in_a_terminal(
    argv: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    columns: int = 100,
    timeout: float = 120,
) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a ``columns``-wide terminal; return (exit code, stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    # a file, not a pipe: a full pipe cannot block the child
    with tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=follower
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal, everything was read
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=timeout)
        os.close(leader)
        stdout.seek(0)
        answer = stdout.read().decode(errors="replace")
    return code, answer, b"".join(chunks).decode(errors="replace")
