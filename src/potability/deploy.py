"""Shipping: the one act that changes what sensors are answered with.

``dvc repro`` and ``dvc exp run`` only *decide* (``models/promoted/``).
``deploy_promoted`` registers that directory in MLflow as a new version of the
registered model, moves the alias ``champion`` to it and records who did it and
why; ``rollback`` moves the alias back to any earlier version. Servers follow
the alias (``tracking.fetch_version`` is how they, and the promote stage, read a version).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from potability import artifacts, db, deployments, lineage, rollups, tracking
from potability.config import Settings
from potability.deployments import Deployment
from potability.errors import MartError

log = logging.getLogger(__name__)


class DeployError(Exception):
    """Nothing was shipped: the reason says what to do."""


@dataclass(frozen=True)
class DeployResult:
    registry_version: str
    model_version: str
    previous_version: str | None
    changed: bool
    message: str


def deploy_promoted(
    promoted_dir: Path,
    deployed_by: str,
    reason: str | None,
    settings: Settings,
    force: bool = False,
) -> DeployResult:
    """Ship ``promoted_dir`` as the new champion, unless it already is one.

    Refused when the directory holds no checked model, when the champion
    has changed since the pipeline decided against it (rerun the promote stage),
    or when the ``dvc.lock`` that produced it is not committed (commit it); ``force``
    ships anyway and the record says what was overridden.
    """
    try:
        promoted = artifacts.load_model_dir(promoted_dir)
    except artifacts.ArtifactError as exc:
        raise DeployError(f"nothing to deploy: {exc}") from exc
    meta = promoted.meta
    name, alias = settings.registered_model, settings.champion_alias
    tracking.configure(settings)
    current = tracking.version_for_alias(name, alias)
    if current is not None and current.model_version == promoted.version:
        return DeployResult(
            current.version,
            promoted.version,
            current.version,
            False,
            f"{promoted.version} is already the champion ({name} version {current.version})",
        )
    decided_against = meta.get("decided_against")
    now_champion = current.version if current else None
    if decided_against != now_champion and not force:
        raise DeployError(
            f"{promoted.version} was judged against champion version {decided_against or 'none'}, "
            f"but the champion is now version {now_champion or 'none'}: run "
            "`dvc repro --force --single-item promote` to decide again (or deploy --force)"
        )
    try:
        origin = lineage.of_promoted(promoted_dir, force)
    except lineage.LineageError as exc:
        raise DeployError(f"refusing to deploy {promoted.version}: {exc}") from exc
    tags = {
        "model_version": promoted.version,
        "sha256": meta["sha256"],
        tracking.MANIFEST_TAG: meta["manifest_sha256"],  # servers check every file against it
        "threshold": f"{promoted.threshold:.6f}",
        "kind": str(meta.get("kind")),
        "data_hash": str(meta.get("data_hash")),
        "code_commit": str(meta.get("git_commit")),
        "training_run": str(meta.get("mlflow_run_id")),
        "n_lab_rows": str(int(meta.get("n_train", 0)) + int(meta.get("n_test", 0))),
        "test_precision": f"{meta['metrics']['precision']:.4f}",
        "test_recall": f"{meta['metrics']['recall']:.4f}",
        **origin.tags(),
    }
    registered = tracking.register_model_dir(
        promoted_dir, name, meta.get("mlflow_run_id"), tags, meta["input_example"]
    )
    why = reason or meta.get("decision_reason") or "deployed from models/promoted"
    if origin.forced:
        why = f"{why} [forced, not reproducible: {origin.forced}]"
    _register_drift_bins(promoted.version, meta, settings)
    return _move_champion(registered, current, "deploy", deployed_by, why, settings)


def rollback(
    version: str, deployed_by: str, reason: str | None, settings: Settings
) -> DeployResult:
    """Point the champion at an earlier registered ``version``, after checking its files."""
    name, alias = settings.registered_model, settings.champion_alias
    tracking.configure(settings)
    try:
        target = tracking.get_version(name, version)
    except LookupError as exc:
        raise DeployError(str(exc)) from exc
    current = tracking.version_for_alias(name, alias)
    if current is not None and current.version == target.version:
        return DeployResult(
            target.version,
            target.model_version,
            current.version,
            False,
            f"version {target.version} ({target.model_version}) is already the champion",
        )
    with tempfile.TemporaryDirectory(prefix="rollback-") as tmp:
        try:
            fetched = tracking.fetch_version(target, Path(tmp) / "model")
        except artifacts.ArtifactError as exc:
            raise DeployError(f"version {version} cannot be served: {exc}") from exc
    _register_drift_bins(target.model_version, fetched.meta, settings)
    why = reason or f"rollback to version {target.version}"
    return _move_champion(target, current, "rollback", deployed_by, why, settings)


def _register_drift_bins(model_version: str, meta: dict[str, Any], settings: Settings) -> None:
    """Bin this version's answers for the drift panel from its first one (rollups.register_edges).

    A database that refuses is a warning, not a failed deploy: each server
    registers the version it loads, too (potability/serve/maintenance.py).
    """
    if not meta.get("reference"):
        return
    try:
        rollups.register_edges(db.database_url(settings), model_version, meta["reference"])
    except (MartError, psycopg2.Error) as exc:
        log.warning("drift bins of %s not registered (servers will retry): %s", model_version, exc)


def _move_champion(
    target: tracking.RegisteredVersion,
    current: tracking.RegisteredVersion | None,
    action: str,
    deployed_by: str,
    reason: str,
    settings: Settings,
) -> DeployResult:
    tracking.set_alias(target.name, settings.champion_alias, target.version)
    deployments.record(
        Deployment(
            None,
            deployed_by,
            action,
            target.name,
            target.version,
            target.model_version,
            current.version if current else None,
            current.model_version if current else None,
            reason,
            target.tags.get("lock_commit") or None,
        ),
        settings,
    )
    before = f"version {current.version} ({current.model_version})" if current else "nothing"
    message = (
        f"{target.name}@{settings.champion_alias} -> version {target.version} "
        f"({target.model_version}); was {before}"
    )
    log.info("%s by %s: %s", action, deployed_by, message)
    return DeployResult(
        target.version, target.model_version, current.version if current else None, True, message
    )
