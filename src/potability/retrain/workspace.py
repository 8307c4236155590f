"""The retrain's own working copy: a clone of the researchers' code, never an operator's checkout.

``prepare`` clones the repository (or fetches into the clone it made before),
checks out the tip of the source branch, lays the last retrain's ``dvc.lock``
and metrics over it (so persisted outputs such as the decision history, and the
report's "before" column, continue from the last retrain rather than from
whatever lock the source branch carries), points DVC at the shared remote and
pulls. ``record`` commits what DVC keeps in git (``dvc.lock``, ``params.yaml``,
metrics and plots) on the retrain branch, with the source tip as a second
parent when the researchers moved on, so the branch only grows: every commit a
served model names stays reachable. ``push`` sends the branch and the DVC
outputs; a failed push is reported, never fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from potability import db, vcs
from potability.config import Settings, env_name
from potability.retrain import connections

# what DVC keeps in git: the lock, the parameters, the metrics and plots (cache: false)
RECORDED_PATHS = ("dvc.lock", "params.yaml", "metrics", "plots")
# what a retrain continues from the last one; params.yaml is the researchers', from the source tip
CONTINUED_PATHS = ("dvc.lock", "metrics", "plots")
# never in a stage's environment: the owner's URLs, and libpq's own ways to a user and password
NOT_FOR_STAGES = (*connections.DEPLOY_ENV, "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGUSER")


class WorkspaceError(RuntimeError):
    """The retrain cannot get or record its working copy; the message says which step and why."""


@dataclass
class Workspace:
    """A prepared working copy: where it is, what it started from, how to run DVC in it."""

    path: Path
    source_commit: str
    previous_commit: str | None  # the last retrain commit, if any
    env: dict[str, str] = field(repr=False)
    warnings: list[str] = field(default_factory=list)
    # an earlier retrain commit the remote's branch does not hold (its push failed, and another
    # retrain pushed since): kept as a parent, so the version that names it stays reachable
    unpushed_commit: str | None = None
    # the clone is made for this run and thrown away after it (the Prefect pull step's)
    throwaway: bool = False


def stage_env(settings: Settings, path: Path) -> dict[str, str]:
    """The environment of DVC stages run in ``path``: the database, tracking store and registry of ``settings``.

    The retrain passes the pipeline role's settings (``connections.split``), so
    the stages never hold the owner's URLs, nor libpq's variables that could
    log them in as someone else (``NOT_FOR_STAGES``). A clone has no `.env` and no
    embedded Postgres of its own: whatever the settings resolve to is passed on
    explicitly.
    """
    env = {k: v for k, v in os.environ.items() if k not in NOT_FOR_STAGES}
    env.update(
        {
            "POTABILITY_ROOT": str(path),
            env_name("database_url"): db.database_url(settings),
            env_name("mlflow_tracking_uri"): db.mlflow_tracking_uri(settings),
        }
    )
    if path != settings.root:
        env.update(
            {
                "POTABILITY_MLFLOW_ARTIFACTS": str(settings.mlflow_artifacts),
                "POTABILITY_REGISTERED_MODEL": settings.registered_model,
                "POTABILITY_CHAMPION_ALIAS": settings.champion_alias,
            }
        )
    return env


def prepare(settings: Settings, on_line: Callable[[str], None] | None = None) -> Workspace:
    """Clone or refresh the retrain's working copy at the source tip, with the last retrain's lock, pulled."""
    path = settings.retrain_workspace
    try:
        source_ref = _checkout_source(settings, path)
        source = vcs.rev(path, source_ref)
        if source is None:
            raise WorkspaceError(f"{vcs.source_url(settings)} has no branch {source_ref!r}")
        previous, unpushed = _previous_retrain(path, settings.retrain_branch)
        vcs.git(["checkout", "--quiet", "--force", "--detach", source], path)
        vcs.git(["clean", "-fdq"], path)  # untracked files only: DVC's ignored outputs stay
        if previous:
            recorded = vcs.git_out(
                ["ls-tree", "-r", "--name-only", previous, "--", *CONTINUED_PATHS], path
            )
            vcs.git(["checkout", previous, "--", *recorded.split()], path)
        remote = vcs.dvc_remote(settings)
        if remote:
            vcs.use_dvc_remote(path, remote)
    except vcs.VcsError as exc:
        raise WorkspaceError(f"preparing the retrain workspace {path}: {exc}") from exc
    workspace = Workspace(
        path,
        source,
        previous,
        stage_env(settings, path),
        unpushed_commit=unpushed,
        throwaway=path == settings.root,
    )
    try:
        vcs.dvc(["pull", "--allow-missing"], path, workspace.env, on_line)
    except vcs.VcsError as exc:  # the stages rebuild what could not be pulled
        workspace.warnings.append(
            f"dvc pull failed, outputs are rebuilt: {str(exc).splitlines()[-1]}"
        )
    return workspace


def _checkout_source(settings: Settings, path: Path) -> str:
    """Make ``path`` a clone with the remote's branches fetched; return the ref of the code to run."""
    if path == settings.root:  # a clone made for this run (the Prefect pull step's)
        changed = vcs.uncommitted(path, ["."])
        if changed:  # never an operator's checkout: checkout --force and clean would eat their work
            raise WorkspaceError(
                f"POTABILITY_RETRAIN_WORKSPACE=. runs in a clean clone made for the run, but {path} "
                f"has changes ({', '.join(changed[:5])}): unset it to retrain in a clone of its own"
            )
        if vcs.git_out(["rev-parse", "--is-shallow-repository"], path) == "true":
            vcs.git(["fetch", "--quiet", "--unshallow", "origin"], path)
        vcs.git(["fetch", "--quiet", "origin", "+refs/heads/*:refs/remotes/origin/*"], path)
        source = settings.source_branch or vcs.git_out(["rev-parse", "--abbrev-ref", "HEAD"], path)
        _not_the_retrain_branch(source, settings.retrain_branch)
        return f"origin/{settings.source_branch}" if settings.source_branch else "HEAD"
    url = vcs.source_url(settings)
    if not (path / ".git").is_dir():
        if path.exists() and any(path.iterdir()):
            raise WorkspaceError(
                f"POTABILITY_RETRAIN_WORKSPACE {path} is not empty and not a clone: "
                "name an empty or missing directory"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        vcs.git(["clone", "--quiet", "--", url, str(path)], path.parent)
    else:
        vcs.git(["remote", "set-url", "origin", "--", url], path)
        vcs.git(
            ["fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*"], path
        )
        vcs.git(["remote", "set-head", "origin", "--auto"], path)  # the remote's HEAD may move
    if settings.source_branch:
        _not_the_retrain_branch(settings.source_branch, settings.retrain_branch)
        return f"origin/{settings.source_branch}"
    head = vcs.git_out(["symbolic-ref", "--short", "refs/remotes/origin/HEAD"], path)
    _not_the_retrain_branch(head.removeprefix("origin/"), settings.retrain_branch)
    return "origin/HEAD"


def _not_the_retrain_branch(source: str, retrain: str) -> None:
    if source == retrain:
        raise WorkspaceError(
            f"the source branch and POTABILITY_RETRAIN_BRANCH are both {retrain!r}: retrains "
            "commit on a branch of their own, never on the one researchers work on"
        )


def _previous_retrain(path: Path, branch: str) -> tuple[str | None, str | None]:
    """The last retrain commit, and a local one the remote lacks when the two diverged.

    The local branch when it holds the remote's (a push that failed), else the
    remote's; a diverged local tip comes back second, to be kept as a parent.
    """
    local, remote = vcs.rev(path, f"refs/heads/{branch}"), vcs.rev(path, f"origin/{branch}")
    if local and (remote is None or _is_ancestor(path, remote, local)):
        return local, None
    if local and remote and not _is_ancestor(path, local, remote):
        return remote, local
    return remote, None


def record(workspace: Workspace, settings: Settings, message: str) -> str:
    """Commit the lock, params, metrics and plots on the retrain branch; return the commit.

    Raises ``WorkspaceError`` when the commit cannot be made: a retrain whose
    lineage is not recorded must not deploy.
    """
    path, branch = workspace.path, settings.retrain_branch
    try:
        present = [p for p in RECORDED_PATHS if (path / p).exists()]
        vcs.git(["add", "--all", "--", *present], path)
        tree = vcs.git_out(["write-tree"], path)
        parents = [workspace.previous_commit] if workspace.previous_commit else []
        if workspace.unpushed_commit:
            parents.append(workspace.unpushed_commit)
        if not any(_is_ancestor(path, workspace.source_commit, p) for p in parents):
            parents.append(workspace.source_commit)
        env = vcs.author_env(settings.commit_author, settings.commit_email)
        args = ["commit-tree", tree, *(a for p in parents for a in ("-p", p)), "-m", message]
        commit = vcs.git(args, path, env).stdout.strip()
        vcs.git(["update-ref", f"refs/heads/{branch}", commit], path)
        vcs.git(["symbolic-ref", "HEAD", f"refs/heads/{branch}"], path)
        vcs.git(["reset", "--quiet"], path)  # index = the new commit; the files already are
    except vcs.VcsError as exc:
        raise WorkspaceError(f"recording the retrain on branch {branch!r}: {exc}") from exc
    workspace.previous_commit = commit
    return commit


def _is_ancestor(path: Path, ancestor: str, descendant: str) -> bool:
    """Whether ``ancestor`` is reachable from ``descendant`` (or is it)."""
    return (
        vcs.git(["merge-base", "--is-ancestor", ancestor, descendant], path, check=False).returncode
        == 0
    )


def push(
    workspace: Workspace, settings: Settings, on_line: Callable[[str], None] | None = None
) -> list[str]:
    """Push the retrain branch to the git remote and the outputs to the DVC remote; return warnings."""
    warnings = []
    branch = settings.retrain_branch
    try:
        vcs.git(
            ["push", "--quiet", "origin", f"refs/heads/{branch}:refs/heads/{branch}"],
            workspace.path,
        )
    except vcs.VcsError as exc:
        warnings.append(
            f"git push of branch {branch!r} failed (the commit stays in {workspace.path}): {exc}"
        )
    try:
        vcs.dvc(["push"], workspace.path, workspace.env, on_line)
    except vcs.VcsError as exc:
        warnings.append(f"dvc push failed: {str(exc).splitlines()[-1]}")
    return warnings
