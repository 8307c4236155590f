"""Shared bench helpers: machine facts, free ports, waiting for a server, a wrk driver."""

from __future__ import annotations

import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

RESULTS = Path(__file__).resolve().parent / "results"


# One sensor sample near the real data set's means: the body every bench sends.
ROW = {
    "ph": 7.08,
    "Hardness": 196.4,
    "Solids": 22006.0,
    "Chloramines": 7.12,
    "Sulfate": 333.8,
    "Conductivity": 426.2,
    "Organic_carbon": 14.3,
    "Trihalomethanes": 66.4,
    "Turbidity": 3.97,
}


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def deployed_champion(settings):
    """The registered version the alias `champion` names, the one a server would load; exits if none."""
    from potability import tracking

    tracking.configure(settings)
    champion = tracking.version_for_alias(settings.registered_model, settings.champion_alias)
    if champion is None:
        raise SystemExit("nothing deployed: run `dvc repro` and `potability deploy` first")
    return champion


def small_champion(settings, work: Path, database_url: str) -> dict:
    """Deploy the library's small forest to a scratch registry; the env a server needs to follow it.

    Benches of the serving path (proxy, page load) measure the server, not the model: the
    pipeline's champion (a five-member vote, ~7 ms an answer here) would set the sensors'
    latency by itself. `potability deploy`'s own code registers it (manifest tag included),
    forced since a bench model has no committed lineage; the registry is an SQLite file
    under ``work`` and the deployment row goes to ``database_url`` (the bench's scratch one).
    """
    from potability import deploy
    from potability.pipeline.small_model import build_model_dir

    model_dir = build_model_dir(work / "model", version="bench-small-forest")
    scratch = settings.model_copy(
        update={
            "database_url": database_url,
            "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
            "mlflow_artifacts": str(work / "mlartifacts"),
            "registered_model": "bench-small-forest",
        }
    )
    deploy.deploy_promoted(model_dir, "bench", "bench: the library's small forest", scratch, True)
    return {
        "MLFLOW_TRACKING_URI": scratch.mlflow_tracking_uri,
        "POTABILITY_REGISTERED_MODEL": scratch.registered_model,
        "POTABILITY_MODEL_CACHE": str(work / "model-cache"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start a server in its own process group, output to ``log``, so ``stop`` takes its workers too."""
    return subprocess.Popen(
        command, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")


_LUA = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  io.write(string.format("RESULT {\\"requests\\": %%d, \\"errors\\": %%d, \\"non2xx\\": %%d, \\"seconds\\": %%f, \\"p50_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, summary.duration / 1e6, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url: str, body: str, connections: int, seconds: int, token: str | None = None) -> dict:
    """Drive ``url`` with wrk (POST ``body``) for ``seconds``; return rps and latency percentiles."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_LUA % (json.dumps(body), auth))
        script = fh.name
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t",
                str(min(connections, 2)),
                "-c",
                str(connections),
                "-d",
                f"{seconds}s",
                "--timeout",
                "10s",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script)
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    ok = r["requests"] - r["non2xx"]
    return {
        "rps": round(ok / r["seconds"], 1),
        "p50_ms": round(r["p50_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
        "requests": r["requests"],
        "errors": r["errors"] + r["non2xx"],
    }


def nginx(upstream: int, listen: int, work: Path) -> tuple[subprocess.Popen, Path]:
    """nginx from `potability proxy-config` in front of ``upstream``, as `nobody` when run as root.

    Returns the process (stop it with ``stop``) and its prefix directory (remove it after).
    """
    prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    command = [sys.executable, "-m", "potability.cli", "proxy-config"]
    command += ["--upstream", f"127.0.0.1:{upstream}", "--listen", f"127.0.0.1:{listen}"]
    (prefix / "nginx.conf").write_text(
        subprocess.run(command, capture_output=True, text=True, check=True).stdout
    )
    (prefix / "nginx.conf").chmod(0o644)
    run_as = []
    if os.geteuid() == 0:
        entry = pwd.getpwnam("nobody")
        os.chown(prefix, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", "nobody", "--"]
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = str(prefix / "nginx.conf")
    proc = start(
        [*run_as, nginx_bin, "-p", str(prefix), "-c", conf, "-g", "daemon off;"],
        dict(os.environ),
        work / "nginx.log",
    )
    return proc, prefix


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def copy_project(root: Path, dest: Path) -> Path:
    """Copy the project's files (as git sees them) into ``dest`` and make it a git repo, as a clone would be."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if (root / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dest / rel)
    git = ["git", "-c", "user.email=bench@example.org", "-c", "user.name=bench"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench copy"]):
        subprocess.run([*git, *args], cwd=dest, check=True)
    return dest
