"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no extra package.

``Page(url)`` loads ``url`` in a fresh profile and keeps what a person would
see (the rendered text, the headings, the DOM) and every console error, uncaught
exception and failed load the browser reported while doing so.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SEE = """JSON.stringify({
  text: document.body.innerText,
  headings: [...document.querySelectorAll("h1, h2, h3")].map((h) => h.innerText.trim()),
  sections: [...document.querySelectorAll("section[id]")].map((s) => s.id),
  svgs: document.querySelectorAll("svg").length,
  html: document.documentElement.outerHTML,
})"""


@dataclass
class Page:
    """What Chromium showed at ``url``; ``errors`` are the console's errors, exceptions and failed loads."""

    url: str
    text: str = field(default="", repr=False)
    headings: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    svgs: int = 0
    html: str = field(default="", repr=False)
    errors: list[str] = field(default_factory=list)


class _Pipe:
    """CDP messages are JSON, each ended by a NUL byte: we write to the browser's fd 3, read its fd 4."""

    def __init__(self, binary: str, profile: str, timeout: float):
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        # in the child: the browser's ends at fds 3 and 4, whatever numbers they have here
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]

        def place():
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(3, 4),
            preexec_fn=place,
        )
        for fd in (to_browser, from_browser, *high):
            os.close(fd)
        self.timeout, self._buffer, self._next, self.events = timeout, b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command; return its result, keeping every event that arrives meanwhile."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def receive(self, deadline: float | None = None) -> dict:
        deadline = deadline or time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(
                    f"Chromium exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}"
                )
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not any(e["method"] == method for e in self.events):
            try:
                self.receive(deadline)
            except TimeoutError:
                return False
        return True

    def settle(self, seconds: float) -> None:
        """Keep reading events for ``seconds`` (late errors: a script, a stylesheet, an image)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.receive(deadline)
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            os.write(self._out, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._out)
            os.close(self._in)
            self.proc.stderr.close()


def errors_of(events: list[dict]) -> list[str]:
    """Console errors and assertions, uncaught exceptions, and the browser's own error log (failed loads, CSP)."""
    found = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            found.append(
                "console."
                + params["type"]
                + ": "
                + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(
                "uncaught: "
                + details.get("exception", {}).get("description", details.get("text", ""))
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(
                f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
            )
    return found


def load(
    url: str,
    screenshot: Path | None = None,
    binary: str | None = CHROMIUM,
    settle: float = 1.0,
    timeout: float = 60,
) -> Page:
    """Open ``url`` in a new headless Chromium, wait for its load event and ``settle`` seconds; see the page.

    ``screenshot``: also save the whole page there as a PNG, for a person to look at.
    """
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        pipe = _Pipe(binary, profile, timeout)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            viewport = {"width": 1280, "height": 2200, "deviceScaleFactor": 1, "mobile": False}
            pipe.send("Emulation.setDeviceMetricsOverride", viewport, session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            if not pipe.wait_for("Page.loadEventFired", timeout):
                raise TimeoutError(f"{url} did not finish loading in {timeout} s")
            pipe.settle(settle)
            seen = pipe.send(
                "Runtime.evaluate", {"expression": SEE, "returnByValue": True}, session=session
            )
            page = Page(url, **json.loads(seen["result"]["value"]))
            page.errors = errors_of(pipe.events)
            if screenshot is not None:
                shot = pipe.send(
                    "Page.captureScreenshot",
                    {"format": "png", "captureBeyondViewport": True},
                    session=session,
                )
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            return page
        finally:
            pipe.close()
