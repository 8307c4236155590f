"""A real nginx under test, from the configuration `potability proxy-config` prints, as an ordinary user."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.project import REPO

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UNPRIVILEGED = "nobody"  # who runs nginx when the tests run as root


def proxy_config(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`potability proxy-config FLAGS` as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "potability.cli", "proxy-config", *flags],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def prefix_dir() -> Path:
    """A directory nginx's user owns (under /tmp: every parent is open to it)."""
    path = Path(tempfile.mkdtemp(prefix="potability-nginx-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _as_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", UNPRIVILEGED, "--", *cmd] if os.geteuid() == 0 else cmd


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
            return True
    except OSError:
        return False


class Nginx:
    """``nginx -p PREFIX -c PREFIX/nginx.conf`` in the foreground, started when constructed.

    ``flags`` are proxy-config's (``--upstream``, ``--listen``, ...); ``--prefix`` is added
    only when ``absolute`` (paths in the file absolute), else nginx's ``-p`` resolves them.
    """

    def __init__(self, *flags: str, listen: str, absolute: bool = False, env=None):
        self.prefix = prefix_dir()
        self.listen = listen
        extra = ["--prefix", str(self.prefix)] if absolute else []
        made = proxy_config(*flags, "--listen", listen, *extra, env=env)
        assert made.returncode == 0, made.stderr
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(made.stdout)
        self.conf.chmod(0o644)
        self.log = self.prefix / "stderr.log"
        command = [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"]
        self.proc = subprocess.Popen(
            _as_user(command),
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if _listening(listen):
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"nginx did not start: {self.errors()}")

    @property
    def base(self) -> str:
        return f"http://{self.listen}"

    def errors(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        error_log = self.prefix / "error.log"
        return text + (error_log.read_text(errors="replace") if error_log.exists() else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)
