"""Which commit, data and parameters made a served version: checked and recorded at deploy, read back later.

`potability deploy` ships ``models/promoted/`` only when the ``dvc.lock`` that
produced it is committed (``--force`` overrides, and says so in the record):
the commit, the md5s the lock gives the exported data and the promoted model,
and the parameters become tags of the MLflow version and a column of
``water.deployments``. From the commit and the DVC remote, `potability
reproduce` rebuilds the version years later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from potability import deployments, tracking, vcs
from potability.config import Settings

LOCK_FILE = "dvc.lock"
PARAMS_FILE = "params.yaml"
DATA_OUT = "data/raw/samples.csv"  # the export stage's output: the lab rows trained and tested on
MODEL_OUT = "models/promoted"  # the promote stage's output: what deploy ships
DECIDING_STAGE = "promote"
FORCED_TAG = "lineage_forced"
DEPLOYMENTS_SHOWN = 1000  # deployments searched for a version's own


class LineageError(Exception):
    """The promoted model's lineage is not recorded; the message says what to commit."""


@dataclass(frozen=True)
class Lineage:
    """The recorded origin of a promoted model (``commit`` None when a deploy was forced without one)."""

    commit: str | None
    data_md5: str | None
    model_md5: str | None
    params: dict[str, Any]
    forced: str | None = None  # what was wrong when --force shipped it anyway

    def tags(self) -> dict[str, str]:
        """The MLflow version tags that carry it (``git_commit`` is the commit holding the lock)."""
        tags = {
            "git_commit": self.commit or "uncommitted",
            "lock_commit": self.commit or "",
            "data_md5": self.data_md5 or "",
            "model_md5": self.model_md5 or "",
            "params": json.dumps(self.params, sort_keys=True, separators=(",", ":")),
        }
        if self.forced:
            tags[FORCED_TAG] = self.forced
        return {k: v for k, v in tags.items() if v}


def of_promoted(promoted_dir: Path, force: bool = False) -> Lineage:
    """The lineage of ``promoted_dir``, checked: its ``dvc.lock`` committed and matching the files.

    Raises ``LineageError`` naming each problem unless ``force``; forced, the
    lineage has no commit and ``forced`` says what was wrong.
    """
    root = vcs.toplevel(promoted_dir) if promoted_dir.is_dir() else None
    if root is None:
        problems = [f"{promoted_dir} is not inside a git work tree"]
        lock_text = params_text = ""
    else:
        problems = _problems(root)
        # forced: the working files describe the model shipped, not the last commit's
        read = _working if problems else _committed
        lock_text, params_text = read(root, LOCK_FILE), read(root, PARAMS_FILE)
    if problems and not force:
        raise LineageError(
            "the dvc.lock that produced this model is not committed: "
            + "; ".join(problems)
            + ". Commit it (git add dvc.lock params.yaml metrics plots && git commit), "
            "or deploy --force (recorded as unreproducible)"
        )
    stages = vcs.read_lock(lock_text)
    return Lineage(
        commit=None if problems else vcs.rev(root, "HEAD"),
        data_md5=vcs.out_md5(stages, DATA_OUT),
        model_md5=vcs.out_md5(stages, MODEL_OUT),
        params=yaml.safe_load(params_text) or {},
        forced="; ".join(problems) or None,
    )


def _problems(root: Path) -> list[str]:
    if vcs.rev(root, "HEAD") is None:
        return [f"{root} has no commit yet"]
    changed = vcs.uncommitted(root, [LOCK_FILE, PARAMS_FILE])
    if changed:
        return [f"changed since commit HEAD: {', '.join(changed)}"]
    try:
        status = vcs.dvc_json(["status", "--json", DECIDING_STAGE], root)
    except vcs.VcsError as exc:
        return [f"cannot compare {MODEL_OUT} with dvc.lock: {exc}"]
    if status:
        return [
            f"{MODEL_OUT} or its inputs differ from what dvc.lock records (dvc status {DECIDING_STAGE})"
        ]
    return []


def _working(root: Path, name: str) -> str:
    path = root / name
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _committed(root: Path, name: str) -> str:
    shown = vcs.git(["show", f"HEAD:{name}"], root, check=False)
    return shown.stdout if shown.returncode == 0 else ""


def describe(settings: Settings, version: str | None = None) -> dict[str, Any]:
    """Everything recorded about registered ``version`` (default: the served one), for `potability lineage`.

    Raises ``LineageError`` when there is no such version or nothing is served yet.
    """
    name = settings.registered_model
    tracking.configure(settings)
    served = tracking.version_for_alias(name, settings.champion_alias)
    try:
        found = tracking.get_version(name, version) if version else served
    except LookupError as exc:
        raise LineageError(str(exc)) from None
    if found is None:
        raise LineageError(
            f"{name}@{settings.champion_alias} names no version yet: deploy one first"
        )
    tags = found.tags
    shipped = [
        {
            "deployed_at": d.deployed_at.isoformat(),
            "deployed_by": d.deployed_by,
            "action": d.action,
            "reason": d.reason,
        }
        for d in reversed(deployments.history(name, limit=DEPLOYMENTS_SHOWN, settings=settings))
        if d.registry_version == found.version
    ]
    return {
        "registered_model": name,
        "version": found.version,
        "model_version": found.model_version,
        "served": served is not None and served.version == found.version,
        "commit": tags.get("lock_commit"),
        "forced": tags.get(FORCED_TAG),
        "data_md5": tags.get("data_md5"),
        "model_md5": tags.get("model_md5"),
        "params": json.loads(tags.get("params", "{}")),
        "lab_rows": int(tags["n_lab_rows"]) if tags.get("n_lab_rows") else None,
        "mlflow_runs": {"training": tags.get("training_run"), "registered_from": found.run_id},
        "deployments": shipped,
    }
