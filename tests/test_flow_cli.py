"""The flow's operator side without a Prefect server: deploy refusals, and the stage bar in a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.support.project import REPO
from tests.support.terminal import stderr_in_a_terminal

STAGES = "from potability.retrain.flow import stage_progress\nwith stage_progress() as stage:\n    for name in {names!r}:\n        stage(name)\n"
FULL_RUN = (
    "counting new lab rows",
    "workspace",
    "dvc repro",
    "commit",
    "push",
    "deploy",
    "report",
)


def flow_cli(command: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    """`potability flow COMMAND` in a clean environment, as an operator's shell would run it."""
    return subprocess.run(
        [sys.executable, "-m", "potability.cli", "flow", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_flow_check_names_every_missing_input(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    result = flow_cli("deploy", env, tmp_path)
    assert result.returncode == 2
    for named in (
        f"project root {tmp_path}",
        "DATABASE_URL is not set",
        "POTABILITY_SERVER_URL is not set",
        "PREFECT_API_URL is not set",
        f"git repository {tmp_path}",  # runs clone it: it must be one
        "no DVC remote",
    ):
        assert named in result.stderr, result.stderr


def test_flow_check_names_an_unreachable_database_and_server(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONWARNINGS": "ignore",
        "POTABILITY_ROOT": str(REPO),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "POTABILITY_SERVER_URL": "http://127.0.0.1:9",
    }
    result = flow_cli("check", env, tmp_path)
    assert result.returncode == 2
    assert (
        "DATABASE_URL: cannot reach Postgres at postgresql://nobody@127.0.0.1:9/none"
        in result.stderr
    )
    assert (
        "POTABILITY_SERVER_URL=http://127.0.0.1:9: http://127.0.0.1:9/healthz unreachable"
        in result.stderr
    )
    assert "project root" not in result.stderr


def in_a_terminal(script: str) -> str:
    """What ``script`` shows on stderr when stderr is a terminal."""
    code, _, shown = stderr_in_a_terminal([sys.executable, "-c", script], cwd=REPO)
    assert code == 0, shown
    return shown


def test_stage_bar_shows_in_a_terminal_and_stays_quiet_when_piped():
    # each run imports Prefect (seconds of CPU): the three side by side, not one after another
    piped = subprocess.Popen(
        [sys.executable, "-c", STAGES.format(names=FULL_RUN)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with ThreadPoolExecutor(2) as pool:
        full, early = pool.map(
            in_a_terminal, [STAGES.format(names=FULL_RUN), STAGES.format(names=FULL_RUN[:1])]
        )
    every = f"{len(FULL_RUN)}/{len(FULL_RUN)}"
    assert "retrain" in full and every in full and "done" in full
    # a run that stops after counting (nothing new) shows the one stage it ran, not a full bar
    assert f"1/{len(FULL_RUN)}" in early and "stopped early" in early and every not in early
    stdout, stderr = piped.communicate(timeout=120)
    assert piped.returncode == 0 and stderr == b"" and stdout == b""
