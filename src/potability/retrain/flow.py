"""The daily retrain flow: new lab rows -> `dvc repro` -> push -> deploy if promoted -> report.

Nothing new since the watermark: finish early and say so. A failing `dvc repro`
fails the flow with its last log lines; the champion and the watermark stay as
they were. Only a decision "promoted" (the challenger beat the served champion
on the same test rows) is shipped, by the same `potability deploy` an operator
types; servers follow the alias by themselves, and a configured server is also
asked to reload at once. Two runs never retrain at once: a Postgres advisory
lock makes the second one skip.

The run connects as the database's pipeline role for everything but the
deploy step, which alone uses the owner's URLs (``retrain/connections.py``).

Run once: `potability retrain`; on a schedule: `potability retrain --serve`
(``flow.serve``) or `potability flow deploy` (``src/potability/retrain/prefect.yaml`` on a worker).
A missing server URL or admin token is a warning in the run's log and report:
the server then picks the new champion up on its next poll.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from potability import db, deploy, vcs
from potability.config import Settings, get_settings
from potability.features import file_sha256
from potability.mart import WaterMart
from potability.retrain import connections, workspace
from potability.retrain.deployment import admin_token, load_run_secrets

FLOW_NAME = "retrain-potability"
WATERMARK = "retrain"
RETRAIN_LOCK_KEY = 727_202  # advisory lock id shared by every retrain run
STAGES = 7  # count new rows, workspace, dvc repro, commit, push, deploy, report
# `potability retrain --serve`'s deployment; prefect.yaml's is daily-retrain
SERVED_DEPLOYMENT = "daily-retrain-here"


# tasks given Settings never cache: their inputs hold database URLs with passwords
@task(retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def new_rows_since_watermark(settings: Settings) -> tuple[int, int | None, int | None]:
    """Count lab rows committed since the last successful retrain; return (count, newest commit_seq, watermark)."""
    mart = WaterMart(settings)
    try:
        watermark = mart.watermark(WATERMARK)
        count, newest = mart.samples_added_since(watermark)
    finally:
        mart.close()
    return count, newest, watermark


@task(cache_policy=NO_CACHE)
def prepare_workspace(settings: Settings) -> workspace.Workspace:
    """The retrain's own clone at the source tip, with the last retrain's lock, pulled from the DVC remote."""
    logger = get_run_logger()
    prepared = workspace.prepare(settings, on_line=lambda line: logger.info("%s", line))
    logger.info(
        "workspace %s at %s (last retrain commit: %s)",
        prepared.path,
        prepared.source_commit[:12],
        (prepared.previous_commit or "none")[:12],
    )
    return prepared


@task(cache_policy=NO_CACHE)
def run_dvc(args: list[str], prepared: workspace.Workspace) -> list[str]:
    """Run a dvc command in the workspace, streaming its output into the flow log; raise with its last lines on failure."""
    logger = get_run_logger()
    try:
        return vcs.dvc(args, prepared.path, prepared.env, lambda line: logger.info("%s", line))
    except vcs.VcsError as exc:
        raise RuntimeError(str(exc)) from None


@task(cache_policy=NO_CACHE)
def record_retrain(prepared: workspace.Workspace, message: str) -> str:
    """Commit dvc.lock, params and metrics on the retrain branch: the lineage of whatever gets deployed."""
    return workspace.record(prepared, get_settings(), message)


@task(cache_policy=NO_CACHE)
def push_retrain(prepared: workspace.Workspace) -> list[str]:
    """git push the retrain branch, dvc push the outputs; failures come back as warnings."""
    logger = get_run_logger()
    return workspace.push(prepared, get_settings(), lambda line: logger.info("%s", line))


@task(cache_policy=NO_CACHE)
def ship_promoted(promoted_dir: Path, reason: str, settings: Settings) -> dict[str, Any]:
    """`potability deploy` with the owner's ``settings``: register models/promoted/, move the alias champion to it."""
    result = deploy.deploy_promoted(promoted_dir, FLOW_NAME, f"retrain flow: {reason}", settings)
    return {
        "version": result.registry_version,
        "model_version": result.model_version,
        "previous": result.previous_version,
        "changed": result.changed,
        "message": result.message,
    }


@task(retries=2, retry_delay_seconds=[1, 4])
def request_reload(server_url: str, admin_token: str, timeout: float) -> dict[str, Any]:
    """Ask the running server to load the new champion (POST /admin/reload)."""
    response = requests.post(
        f"{server_url.rstrip('/')}/admin/reload",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=timeout,
    )
    if response.status_code >= 500:
        response.raise_for_status()  # worth a retry
    return {"status": response.status_code, "body": response.json()}


@task(retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def advance_watermark(
    newest: int | None, data_hash: str | None, lock_hash: str | None, settings: Settings
) -> None:
    """Store the newest lab row trained on, by commit order (never a row committed late)."""
    mart = WaterMart(settings)
    try:
        mart.set_watermark(WATERMARK, newest, data_hash, lock_hash)
    finally:
        mart.close()


def reload_target(settings) -> tuple[str | None, str | None, list[str]]:
    """The server to ask for a reload and its admin token, or warnings naming what is missing."""
    token, source = admin_token(settings)
    warnings = []
    if not settings.server_url:
        warnings.append(
            "POTABILITY_SERVER_URL is not set: no server is asked to reload; "
            "servers pick a new champion up on their next poll"
        )
    if not token:
        warnings.append(
            f"no admin token (POTABILITY_ADMIN_TOKEN or the {source}): no server is asked to reload"
        )
    return settings.server_url, token, warnings


@contextmanager
def stage_progress() -> Iterator[Callable[[str], None]]:
    """A one-line bar over the flow's stages in a terminal; nothing when stderr is not a TTY."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("retrain"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not sys.stderr.isatty()) as bar:
        stage = bar.add_task("starting", total=STAGES)
        started = False

        def advance(description: str) -> None:
            nonlocal started
            bar.update(stage, description=description, advance=1 if started else 0)
            started = True

        yield advance
        # a run that stops early (nothing new, lock held) shows the stages it ran, not a full bar
        ran = bar.tasks[0].completed + (1 if started else 0)
        bar.update(stage, description="done" if ran == STAGES else "stopped early", completed=ran)


def report_markdown(
    before: dict[str, Any],
    after: dict[str, Any],
    decision: dict[str, Any],
    rows: int,
    shipped: dict[str, Any] | None,
    warnings: list[str],
) -> str:
    """The run's report: the metrics diff per candidate, the decision, the deployed version, warnings."""
    deployed = f"{shipped['message']}" if shipped else "nothing: the champion keeps serving"
    lines = [
        f"## Retrain on {rows} new lab row(s)",
        "",
        f"**Decision:** {decision.get('reason', 'unknown')}",
        "",
        f"**Deployed:** {deployed}",
        "",
        "| model | precision | recall | positives |",
        "|---|---|---|---|",
    ]
    for kind, metrics in sorted(after.items()):
        old = before.get(kind, {})
        cells = [
            _diff_cell(old, metrics, "precision"),
            _diff_cell(old, metrics, "recall"),
            _diff_cell(old, metrics, "positives", "{}"),
        ]
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    if warnings:
        lines += ["", "**Warnings:**", *(f"- {w}" for w in warnings)]
    return "\n".join(lines)


@task
def publish_report(markdown: str) -> str:
    """Publish the report as the markdown artifact ``retrain-report``."""
    create_markdown_artifact(
        markdown=markdown, key="retrain-report", description="Metrics diff and promotion decision"
    )
    return markdown


def commit_message(
    count: int, watermark: int | None, newest: int | None, decision: dict[str, Any]
) -> str:
    """The retrain commit's message: which lab rows were new, and what the pipeline decided."""
    first = (watermark or 0) + 1
    return (
        f"retrain on {count} new lab row(s) (commit_seq {first}..{newest}): "
        f"{'promoted' if decision.get('promoted') else 'champion kept'}\n\n"
        f"Decision: {decision.get('reason', 'no decision recorded')}\n"
    )


def _diff_cell(old: dict[str, Any], new: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
    """``old → new`` for one metric, or just ``new`` for a candidate seen the first time."""
    new_value = fmt.format(new[key])
    return f"{fmt.format(old[key])} → {new_value}" if key in old else new_value


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


@flow(name=FLOW_NAME, log_prints=True)
def retrain() -> dict[str, Any]:
    """Retrain when the lab added rows; deploy only a model the pipeline promoted."""
    logger = get_run_logger()
    if loaded := load_run_secrets(get_settings()):
        logger.info("credentials from the Secret block: %s", ", ".join(loaded))
    settings = get_settings()  # again: the database and tracking URLs may come from the block
    run_as = connections.split(settings)  # refuses a scheduled run as anyone but the pipeline
    pipeline = run_as.pipeline  # everything but the deploy step: the pipeline role
    server_url, token, warnings = reload_target(settings)
    warnings = run_as.warnings + warnings
    for warning in warnings:
        logger.warning(warning)
    with db.advisory_lock(RETRAIN_LOCK_KEY, pipeline) as acquired, stage_progress() as stage:
        if not acquired:
            summary = "skipped: another retrain is running (advisory lock held)"
            logger.warning(summary)
            return {"status": "skipped", "summary": summary}
        stage("counting new lab rows")
        count, newest, watermark = new_rows_since_watermark(pipeline)
        if count == 0:
            since = f"lab row #{watermark}" if watermark else "the beginning"
            summary = f"nothing new since {since}: no retraining"
            logger.info(summary)
            return {"status": "nothing new", "summary": summary, "repro_ran": False}
        logger.info(
            "%d new lab row(s) since %s: running dvc repro",
            count,
            f"lab row #{watermark}" if watermark else "the beginning",
        )
        stage("workspace")
        prepared = prepare_workspace(pipeline)
        warnings += prepared.warnings
        ws = prepared.path
        before = _read_json(ws / "metrics/evaluate.json")
        decision_before = _read_json(ws / "metrics/promotion.json")
        stage("dvc repro")
        run_dvc(["repro"], prepared)
        decision = _read_json(ws / "metrics/promotion.json")
        if decision == decision_before:  # promote did not run: the training data came out the same
            decision = {
                "promoted": False,
                "reason": "pipeline outputs unchanged; the champion is kept",
            }
        logger.info("promotion decision: %s", decision.get("reason"))
        stage("commit")
        commit = record_retrain(prepared, commit_message(count, watermark, newest, decision))
        logger.info("recorded as commit %s on branch %s", commit, settings.retrain_branch)
        stage("push")
        pushed = push_retrain(prepared)
        if pushed and prepared.throwaway:  # this clone goes with the run: so would the lineage
            raise RuntimeError(
                "nothing deployed, the watermark stays (the next run retries): " + "; ".join(pushed)
            )
        for warning in pushed:
            warnings.append(warning)
            logger.warning(warning)
        stage("deploy")
        shipped = (
            ship_promoted(ws / "models/promoted", decision["reason"], run_as.deploy)
            if decision.get("promoted")
            else None
        )
        if shipped:
            logger.info("deployed: %s", shipped["message"])
        reload_result = None
        if shipped and server_url and token:
            try:
                reload_result = request_reload(server_url, token, settings.reload_timeout_seconds)
            except Exception as exc:  # an unreachable server must not fail a good retrain
                warnings.append(f"server reload failed: {exc}")
                logger.warning(warnings[-1])
        stage("report")
        data_hash = file_sha256(ws / "data/raw/samples.csv")
        lock_hash = file_sha256(ws / "dvc.lock")
        after = _read_json(ws / "metrics/evaluate.json")
        publish_report(report_markdown(before, after, decision, count, shipped, warnings))
        advance_watermark(newest, data_hash, lock_hash, pipeline)
        summary = (
            f"retrained on {count} new row(s): {decision.get('reason', 'no decision recorded')}; "
            + (f"deployed version {shipped['version']}" if shipped else "nothing deployed")
        )
        return {
            "status": "retrained",
            "summary": summary,
            "repro_ran": True,
            "commit": commit,
            "workspace": str(ws),
            "decision": decision,
            "deployed": shipped,
            "data_hash": data_hash,
            "lock_hash": lock_hash,
            "reload": reload_result,
            "warnings": warnings,
        }


def serve_on_schedule() -> None:
    """Serve the flow on this machine with its daily cron schedule (Ctrl-C stops).

    Its own deployment name: serving under prefect.yaml's name would silently
    replace the worker deployment an operator made with `potability flow deploy`.
    """
    retrain.serve(name=SERVED_DEPLOYMENT, cron=get_settings().retrain_cron)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve_on_schedule()
    else:
        print(retrain()["summary"])
