"""README's four paths run as written on a fresh clone of the committed repository.

Each path's commands are the ```bash block under its heading. They run in that order, each block
in `bash -e` (a failing command fails the path), in one `git clone` of HEAD, with this checkout's
venv on PATH (reused, not reinstalled: the clone's `.venv` is a link to it, and its code is put
first on PYTHONPATH so the clone's own modules run) and an embedded Postgres of their own.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
PATHS = ("Researcher", "Operator", "Sensor integrator", "Contributor")
BLOCK_TIMEOUT = 300  # seconds a path may take; all four took 4 min at load 8 on 2 cores
# Harness, not README: a block that fails with a server in the background stops it on the way out,
# and each command is logged with the time it started (the log is shown when a path fails).
PRELUDE = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\nPS4='+ [$SECONDS s] '\nset -x\n"


def path_blocks(readme: str) -> dict[str, str]:
    """The first ```bash block under each path's heading, before the next heading."""
    blocks = {}
    for name in PATHS:
        section = re.search(rf"^#+ {re.escape(name)}\n(.*?)(?=^#)", readme, re.S | re.M)
        assert section, f"README has no heading {name!r}"
        block = re.search(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
        assert block, f"README's {name!r} path has no ```bash block"
        blocks[name] = block.group(1)
    return blocks


def test_path_blocks_are_found():
    blocks = path_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert list(blocks) == list(PATHS)
    assert all(block.strip() for block in blocks.values())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_paths_run_on_a_fresh_clone(tmp_path):
    if not (VENV / "bin" / "potability").exists():
        pytest.skip("no .venv in this checkout: run `make install` first")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    blocks = path_blocks((clone / "README.md").read_text(encoding="utf-8"))

    # Reuse this checkout's venv: make's install target is satisfied when `.venv/.installed`
    # is newer than requirements.txt and pyproject.toml, which a fresh clone has just written.
    (clone / ".venv").symlink_to(VENV, target_is_directory=True)
    for name in ("requirements.txt", "pyproject.toml"):
        os.utime(clone / name, (0, 0))

    # Not under pytest's temp root: a pytest started elsewhere on the machine makes that 0700,
    # and (run as root) the embedded Postgres runs as its own user, who must reach its data.
    pgdata = Path(tempfile.mkdtemp(prefix="readme-paths-pg-")) / "data"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POTABILITY_", "PYTEST_", "MLFLOW_", "PREFECT_"))
        and name not in {"DATABASE_URL", "DASK_SCHEDULER_ADDRESS", "VIRTUAL_ENV", "PYTHONPATH"}
    }
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(clone / "src"),
        POTABILITY_PGDATA=str(pgdata),
        PORT=str(free_port()),
        DVC_NO_ANALYTICS="1",
        NO_MKDOCS_2_WARNING="1",
        GIT_AUTHOR_NAME="readme-paths",
        GIT_AUTHOR_EMAIL="readme-paths@example.invalid",
        GIT_COMMITTER_NAME="readme-paths",
        GIT_COMMITTER_EMAIL="readme-paths@example.invalid",
    )
    where = subprocess.run(
        ["python", "-c", "import potability; print(potability.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(clone)), f"the clone's code must run, not {where.stdout}"

    groups = []
    timings = {}
    try:
        for name, block in blocks.items():
            started = time.monotonic()
            log = tmp_path / f"{name.replace(' ', '-').lower()}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    ["bash", "-e", "-o", "pipefail", "-c", PRELUDE + block],
                    cwd=clone,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # anything a block leaves behind is stopped below
                )
                groups.append(process.pid)
                try:
                    process.wait(timeout=BLOCK_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            output = log.read_text(errors="replace")
            timings[name] = round(time.monotonic() - started, 1)
            print(f"README path {name!r}: {timings[name]} s", flush=True)
            assert process.returncode == 0, (  # -9: killed after BLOCK_TIMEOUT
                f"README path {name!r} failed (exit {process.returncode}) on a fresh clone:\n"
                f"{block}\n--- output ---\n{output[-6000:]}"
            )
        print(f"README paths, seconds: {timings}")
        answers = (clone / "answers.csv").read_text(encoding="utf-8").splitlines()
        assert len(answers) == 6 and answers[0].startswith("line,"), answers
    finally:
        subprocess.run(["potability", "db", "stop"], cwd=clone, env=env, capture_output=True)
        for group in groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(pgdata.parent, ignore_errors=True)
