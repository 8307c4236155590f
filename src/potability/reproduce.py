"""Rebuild a deployed version from its commit and the DVC remote, and say whether it is the same model.

`potability reproduce --version V` clones the repository at the commit V's
lineage names, pulls that commit's data from the DVC remote (the exported lab
rows and the champion the decision was made against, as ``dvc.lock`` records
them: today's table is never read) and reruns every stage after the export in
the clone. Nothing shared is written: the candidates' MLflow runs go to an
SQLite store inside the work directory, and no alias moves. The rebuilt
``model.onnx`` must give the recorded one's probabilities on the recorded test
split (within ``POTABILITY_REPRODUCE_TOLERANCE``), at the same threshold, with
the same decision.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from potability import artifacts, lineage, tracking, vcs
from potability.config import Settings
from potability.features import feature_matrix, file_sha256, read_samples

FIRST_REBUILT_STAGE = "split"  # every stage downstream of it; export and champion come from DVC
TEST_SPLIT = "data/split/test.csv"
DECISION = "metrics/promotion.json"
DECISION_KEYS = ("promoted", "challenger")


class ReproduceError(Exception):
    """The version cannot be rebuilt; the message names what is missing."""


@dataclass
class Reproduction:
    """What a rebuild found: ``differences`` is empty when it is the same model."""

    version: str
    commit: str
    workdir: Path
    differences: list[str] = field(default_factory=list)
    max_probability_gap: float | None = None

    @property
    def identical(self) -> bool:
        return not self.differences


def reproduce(
    settings: Settings,
    version: str,
    workdir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Reproduction:
    """Rebuild registered ``version`` in ``workdir`` (a new temporary directory by default) and compare."""
    found, commit = _registered(settings, version)
    remote = vcs.dvc_remote(settings)
    if remote is None:
        raise ReproduceError("no DVC remote to pull from: set POTABILITY_DVC_REMOTE")
    workdir = _empty_workdir(workdir, version)
    repo, recorded = workdir / "repo", workdir / "recorded"
    _checkout(vcs.source_url(settings), commit, repo, version)
    _pull(repo, remote, commit, on_line)
    _keep_recorded(repo, recorded)
    try:
        vcs.dvc(
            ["repro", "--force", "--no-run-cache", "--downstream", FIRST_REBUILT_STAGE],
            repo,
            _rebuild_env(repo, workdir),
            on_line,
        )
    except vcs.VcsError as exc:
        return Reproduction(version, commit, workdir, [f"the pipeline failed: {exc}"])
    result = Reproduction(version, commit, workdir)
    _compare(result, found, recorded, repo, settings.reproduce_tolerance)
    return result


def _registered(settings: Settings, version: str) -> tuple[tracking.RegisteredVersion, str]:
    """The registered version and the commit its lineage names (``ReproduceError`` saying why not)."""
    tracking.configure(settings)
    try:
        found = tracking.get_version(settings.registered_model, version)
    except LookupError as exc:
        raise ReproduceError(str(exc)) from None
    commit = found.tags.get("lock_commit")
    if commit and not vcs.COMMIT.fullmatch(commit):
        raise ReproduceError(
            f"version {version}'s lock_commit tag {commit[:50]!r} is not a commit id"
        )
    if not commit:
        why = found.tags.get(lineage.FORCED_TAG)
        raise ReproduceError(
            f"version {version} has no recorded commit: "
            + (
                f"it was deployed with --force ({why})"
                if why
                else "it was deployed before lineage was recorded"
            )
        )
    return found, commit


def _empty_workdir(workdir: Path | None, version: str) -> Path:
    """``workdir``, made and empty (a new temporary directory when None)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"reproduce-v{version}-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise ReproduceError(f"--workdir {workdir} is not empty")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _keep_recorded(repo: Path, recorded: Path) -> None:
    """Copy what the commit recorded (the promoted model, the test split, the decision) aside."""
    recorded.mkdir(parents=True)
    for name in (lineage.MODEL_OUT, TEST_SPLIT, DECISION):
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, recorded / name)
        elif source.is_file():
            (recorded / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, recorded / name)


def _rebuild_env(repo: Path, workdir: Path) -> dict[str, str]:
    """This process's environment without the caller's stores: no database, a private MLflow store."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POTABILITY_", "MLFLOW_")) and k != "DATABASE_URL"
    }
    env.update(
        POTABILITY_ROOT=str(repo),
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        POTABILITY_MLFLOW_ARTIFACTS=str(workdir / "mlartifacts"),
    )
    return env


def _checkout(url: str, commit: str, repo: Path, version: str) -> None:
    try:
        vcs.git(["clone", "--quiet", "--no-checkout", "--", url, str(repo)], repo.parent)
        if vcs.rev(repo, commit) is None:
            raise ReproduceError(
                f"commit {commit} (version {version}'s dvc.lock) is not in {url}: "
                "was the retrain branch pushed?"
            )
        vcs.git(["checkout", "--quiet", "--detach", commit], repo)
    except vcs.VcsError as exc:
        raise ReproduceError(f"cannot check out commit {commit[:12]} of {url}: {exc}") from None


def _pull(repo: Path, remote: str, commit: str, on_line: Callable[[str], None] | None) -> None:
    try:
        vcs.use_dvc_remote(repo, remote)
        vcs.dvc(["pull"], repo, None, on_line)
    except vcs.VcsError as exc:
        raise ReproduceError(
            f"the DVC remote {remote} lacks data of commit {commit[:12]}: {exc}"
        ) from None


def _compare(
    result: Reproduction,
    found: tracking.RegisteredVersion,
    recorded: Path,
    repo: Path,
    tolerance: float,
) -> None:
    """Append to ``result.differences`` every way the rebuild differs from the record and the registry."""
    differences = result.differences
    try:
        before = artifacts.load_model_dir(recorded / lineage.MODEL_OUT)
        after = artifacts.load_model_dir(repo / lineage.MODEL_OUT)
    except artifacts.ArtifactError as exc:
        differences.append(f"no model to compare: {exc}")
        return
    if found.tags.get("sha256") != before.meta["sha256"]:
        differences.append(
            f"the recorded {lineage.MODEL_OUT}/model.onnx is not the registered version {found.version}'s file"
        )
    if file_sha256(repo / TEST_SPLIT) != file_sha256(recorded / TEST_SPLIT):
        differences.append(f"the rebuilt {TEST_SPLIT} differs from the recorded one")
    X = feature_matrix(read_samples(recorded / TEST_SPLIT))
    gap = float(np.max(np.abs(after.model.predict_proba(X) - before.model.predict_proba(X))))
    result.max_probability_gap = gap
    if gap > tolerance:
        differences.append(
            f"probabilities on the recorded test split differ by up to {gap:.3e} > {tolerance:.0e}"
        )
    if abs(after.threshold - before.threshold) > tolerance:
        differences.append(
            f"threshold {after.threshold!r} differs from the recorded {before.threshold!r}"
        )
    decided = [
        json.loads((path / DECISION).read_text(encoding="utf-8")) for path in (recorded, repo)
    ]
    for key in DECISION_KEYS:
        if decided[0].get(key) != decided[1].get(key):
            differences.append(
                f"decision {key}: rebuilt {decided[1].get(key)!r}, recorded {decided[0].get(key)!r}"
            )
