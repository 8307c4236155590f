"""git and DVC as the user's own commands: the one place that runs them.

The retrain flow commits, pushes and pulls; `potability deploy` asks which
commit holds the ``dvc.lock`` it ships; `potability reproduce` clones and
rebuilds. They all go through these few functions, so every git call has the
same error (``VcsError``, naming the command and its last lines) and every
commit the same author, whatever the host's ``git config`` says.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from potability.config import Settings

TAIL_LINES = 30  # lines of a failed command kept in its error
DVC_REMOTE_NAME = "shared"  # the remote a clone gets in .dvc/config.local: the setting's URL
COMMIT = re.compile(r"[0-9a-f]{40}")  # a full commit id, as lineage records it


class VcsError(RuntimeError):
    """A git or dvc command failed; the message names it and ends with its last output lines."""


def git(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """``git ARGS`` in ``cwd``; raise ``VcsError`` with its stderr when it fails and ``check``."""
    # never wait on a password prompt: an unattended run fails and says so instead
    env = {**(env or os.environ), "GIT_TERMINAL_PROMPT": "0"}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise VcsError(
            f"`git {' '.join(args)}` failed in {cwd} (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


def git_out(args: list[str], cwd: Path) -> str:
    """The stripped standard output of a git command that must succeed."""
    return git(args, cwd).stdout.strip()


def author_env(name: str, email: str) -> dict[str, str]:
    """The environment that makes ``name <email>`` author and committer of a commit."""
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def rev(cwd: Path, ref: str) -> str | None:
    """The commit ``ref`` names in the repository at ``cwd``, or None when it names nothing."""
    found = git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd, check=False)
    return found.stdout.strip() or None


def toplevel(path: Path) -> Path | None:
    """The work tree holding ``path`` (a directory), or None outside any git repository."""
    found = git(["rev-parse", "--show-toplevel"], path, check=False)
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def uncommitted(root: Path, paths: list[str]) -> list[str]:
    """Which of ``paths`` differ from HEAD (modified, staged or untracked); [] when all are committed."""
    status = git(["status", "--porcelain", "--untracked-files=all", "--", *paths], root)
    return [line[3:] for line in status.stdout.splitlines() if line.strip()]


def remote_url(root: Path, remote: str) -> str | None:
    """The URL of ``remote`` in the repository at ``root``, or None when it has no such remote."""
    found = git(["remote", "get-url", remote], root, check=False)
    return found.stdout.strip() or None if found.returncode == 0 else None


def dvc_executable() -> str:
    """This interpreter's ``dvc`` (the venv's), else whatever ``dvc`` PATH finds."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def dvc(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> list[str]:
    """``dvc ARGS`` in ``cwd``, each output line passed to ``on_line``; return its last lines.

    Raises ``VcsError`` with the command and its last lines when it fails.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        [dvc_executable(), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                if on_line:
                    on_line(line)
    if proc.returncode != 0:
        raise VcsError(
            f"`dvc {' '.join(args)}` failed (exit {proc.returncode}); last lines:\n"
            + "\n".join(tail)
        )
    return list(tail)


def dvc_json(args: list[str], cwd: Path) -> Any:
    """The JSON a ``dvc ... --json`` command prints on stdout (its warnings go to stderr)."""
    done = subprocess.run(
        [dvc_executable(), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise VcsError(
            f"`dvc {' '.join(args)}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    try:
        return json.loads(done.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise VcsError(f"`dvc {' '.join(args)}` printed no JSON: {done.stdout[-500:]}") from exc


def read_lock(text: str) -> dict[str, Any]:
    """A ``dvc.lock`` file's stages, by name."""
    return (yaml.safe_load(text) or {}).get("stages", {})


def out_md5(stages: dict[str, Any], path: str) -> str | None:
    """The md5 a lock records for the output ``path`` of whichever stage writes it."""
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == path:
                return out.get("md5")
    return None


def source_url(settings: Settings) -> str:
    """The repository retrains clone and `reproduce` rebuilds from: the setting, the root's remote, or the root."""
    return settings.git_url or remote_url(settings.root, settings.git_remote) or str(settings.root)


def dvc_remote(settings: Settings) -> str | None:
    """The DVC remote retrains push to and `reproduce` pulls from: the setting, else the root's default.

    A local path is made absolute against the root, so every clone names the same folder.
    """
    remote = settings.dvc_remote or default_dvc_remote(settings.root)
    if remote is None or "://" in remote:
        return remote
    return str((settings.root / remote).resolve())


def use_dvc_remote(repo: Path, url: str) -> None:
    """Make ``url`` the default DVC remote of the clone at ``repo`` (in its untracked config.local)."""
    dvc(["remote", "add", "--local", "--force", "--default", DVC_REMOTE_NAME, url], repo)


def default_dvc_remote(root: Path) -> str | None:
    """The URL of the root's default DVC remote (a local one as an absolute path), or None when it has none."""
    try:
        listed = dvc(["remote", "list"], root)
    except VcsError:
        return None
    for line in listed:  # "name  url  (default)"; dvc resolves a local path against .dvc/
        fields = line.split()
        if len(fields) >= 3 and fields[-1] == "(default)":
            return " ".join(fields[1:-1])
    return None
