"""The page renderer: a niced process beside the gunicorn workers that keeps the page cache fresh.

Every ``page_refresh_seconds`` it renders ``/`` (and ``/model``) and every
``/v1/stats/<name>`` into the page cache, each panel computed once. Its slow
queries and template work happen here, never on a worker a sensor needs. It
follows the champion alias like a worker (the page shows the served model) and
takes no traffic. ``Supervisor`` runs it from the gunicorn master
(``gunicorn.conf.py``) and starts it again when it dies; meanwhile workers
answer the last copy, and render themselves once it is ``page_stale_seconds``
old. It exits when its parent (the master) is gone.

Run by hand: ``python -m potability.serve.renderer`` (same environment as the server).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from potability.config import get_settings
from potability.serve import context

log = logging.getLogger(__name__)


def render_once(app) -> float:
    """Render every entry into the app's page cache; return the seconds it took."""
    from potability.serve import page

    cache = context.part(context.PAGE_CACHE, app)
    started = time.perf_counter()
    with app.test_request_context("/"), cache.render_lock(wait=True):
        for key, entry in page.render_all().items():
            cache.write(key, entry)
    return time.perf_counter() - started


def yield_cpu(increment: int, idle: bool = False) -> None:
    """Nice every thread of this process by ``increment`` (and put it in the idle class with ``idle``).

    Linux schedules threads, ``os.nice`` sets only the calling one, and libraries start some
    at import (before ``main`` runs): each is set here, and the ones started later inherit it.
    """
    niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    task_dir = f"/proc/{os.getpid()}/task"
    for tid in [int(t) for t in os.listdir(task_dir)] if os.path.isdir(task_dir) else [0]:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
            if idle and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:
            continue  # a thread that ended meanwhile


@dataclass
class Child:
    """A process the gunicorn master supervises: asked to stop by a signal, or orphaned."""

    stop: threading.Event  # set by SIGTERM (the master's stop) or SIGINT (by hand)
    parent: int  # the master's pid when the child started

    def running(self) -> bool:
        """Whether no signal asked it to stop and the master is still its parent.

        A master killed outright sends no SIGTERM: the child, reparented, ends by itself.
        """
        return not self.stop.is_set() and os.getppid() == self.parent

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (a signal ends it early); then whether to go on running."""
        self.stop.wait(seconds)
        return self.running()


def start_child(nice: int, idle: bool = False) -> Child:
    """Set up a child of the gunicorn master (the renderer, the page listener), one way for both.

    The master's log format with this process's pid, the CPU yielded to the workers
    (``yield_cpu``), and SIGTERM/SIGINT turned into the returned ``Child``'s stop event so
    its loop ends and its ``finally`` closes what it holds.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    yield_cpu(nice, idle=idle)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return Child(stop, os.getppid())


def main() -> int:
    from potability.serve import create_page_app, shutdown

    settings = get_settings()
    child = start_child(settings.page_renderer_nice)
    app = create_page_app(settings)  # takes no traffic: the page, its reads and the champion only
    log.info(
        "page renderer up: every %.0f s into %s",
        settings.page_refresh_seconds,
        context.part(context.PAGE_CACHE, app).directory,
    )
    try:
        while child.running():
            try:
                took = render_once(app)
                if took > settings.page_refresh_seconds:  # the page lags behind its interval
                    log.warning(
                        "page render took %.1f s, longer than POTABILITY_PAGE_REFRESH_SECONDS (%.0f s)",
                        took,
                        settings.page_refresh_seconds,
                    )
            except Exception:
                # a bad cycle (Postgres away) must not end the renderer: retry next cycle
                log.exception("page render failed; the last copy keeps being served")
                took = 0.0
            child.stop.wait(max(0.0, settings.page_refresh_seconds - took))
    finally:
        shutdown(app)
    return 0


class Supervisor:
    """Start a module (the renderer, the page listener) as a child of the gunicorn master, again whenever it dies.

    ``os.posix_spawn``, not ``subprocess``: the master forks workers from its
    main thread while this thread spawns, and a worker forked mid-``Popen``
    would inherit Popen's error pipe and hang it until that worker exits.
    ``file_actions`` are posix_spawn's (the page listener's socket is dup'ed
    into its child only).
    """

    def __init__(
        self,
        restart_seconds: float,
        module: str = "potability.serve.renderer",
        args: tuple[str, ...] = (),
        file_actions: list[tuple] | None = None,
    ):
        self.restart_seconds, self.module = restart_seconds, module
        self.argv = [sys.executable, "-m", module, *args]
        self.file_actions = file_actions or []
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=module, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> int:
        # the children keep no worker metrics: their files would outlive them in the multiprocess directory
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        return os.posix_spawn(sys.executable, self.argv, env, file_actions=self.file_actions)

    def alive(self) -> bool:
        """Whether the child runs; the master reaps every child (waitpid(-1)), so it may be gone already."""
        if self.pid is None:
            return False
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.pid = self._spawn()
            while self.alive() and not self._stop.wait(1.0):
                pass
            if not self._stop.is_set():
                log.warning(
                    "%s (pid %d) exited; starting another in %g s",
                    self.module,
                    self.pid,
                    self.restart_seconds,
                )
                self._stop.wait(self.restart_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout)  # no new renderer after this
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
