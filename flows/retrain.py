"""The daily retrain flow: new lab rows -> `dvc repro` -> push -> deploy if promoted -> report.

Nothing new since the watermark: finish early and say so. A failing `dvc repro`
fails the flow with its last log lines; the champion and the watermark stay as
they were. Only a decision "promoted" (the challenger beat the served champion
on the same test rows) is shipped, by the same `potability deploy` an operator
types; servers follow the alias by themselves, and a configured server is also
asked to reload at once. Two runs never retrain at once: a Postgres advisory
lock makes the second one skip.

Run once: `potability retrain`; on a schedule: `potability retrain --serve`
(``flow.serve``) or `prefect deploy` with ``flows/prefect.yaml``.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from potability import db, deploy
from potability.config import get_settings
from potability.features import file_sha256
from potability.mart import WaterMart

FLOW_NAME = "retrain-potability"
WATERMARK = "retrain"
RETRAIN_LOCK_KEY = 727_202  # advisory lock id shared by every retrain run
LOG_TAIL_LINES = 30


@task(retries=3, retry_delay_seconds=[1, 5, 15])
def new_rows_since_watermark() -> tuple[int, int | None, int | None]:
    """Count lab rows committed since the last successful retrain; return (count, newest commit_seq, watermark)."""
    mart = WaterMart()
    watermark = mart.watermark(WATERMARK)
    count, newest = mart.samples_added_since(watermark)
    return count, newest, watermark


@task
def run_dvc(args: list[str], root: str) -> list[str]:
    """Run a dvc command, streaming its output into the flow log; raise with its last lines on failure."""
    logger = get_run_logger()
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    dvc = str(Path(sys.executable).with_name("dvc"))
    command = [dvc if Path(dvc).exists() else "dvc", *args]
    with subprocess.Popen(
        command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info("%s", line)
                tail.append(line)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed (exit {proc.returncode}); last lines:\n"
            + "\n".join(tail)
        )
    return list(tail)


@task
def ship_promoted(reason: str) -> dict[str, Any]:
    """`potability deploy`: register models/promoted/ and move the alias champion to it."""
    settings = get_settings()
    result = deploy.deploy_promoted(
        settings.promoted_dir, FLOW_NAME, f"retrain flow: {reason}", settings
    )
    return {"version": result.registry_version, "model_version": result.model_version,
            "previous": result.previous_version, "changed": result.changed, "message": result.message}  # fmt: skip


@task(retries=2, retry_delay_seconds=[1, 4])
def request_reload(server_url: str, admin_token: str, timeout: float) -> dict[str, Any]:
    """Ask the running server to load the new champion (POST /admin/reload)."""
    response = requests.post(f"{server_url.rstrip('/')}/admin/reload",
                             headers={"Authorization": f"Bearer {admin_token}"}, timeout=timeout)  # fmt: skip
    if response.status_code >= 500:
        response.raise_for_status()  # worth a retry
    return {"status": response.status_code, "body": response.json()}


@task(retries=3, retry_delay_seconds=[1, 5, 15])
def advance_watermark(newest: int | None, data_hash: str | None, lock_hash: str | None) -> None:
    """Store the newest lab row trained on, by commit order (never a row committed late)."""
    WaterMart().set_watermark(WATERMARK, newest, data_hash, lock_hash)


@task
def publish_report(
    before: dict[str, Any],
    after: dict[str, Any],
    decision: dict[str, Any],
    rows: int,
    shipped: dict[str, Any] | None,
) -> str:
    """A markdown artifact: the metrics diff per candidate, the decision and the deployed version."""
    deployed = f"{shipped['message']}" if shipped else "nothing: the champion keeps serving"
    lines = [f"## Retrain on {rows} new lab row(s)", "", f"**Decision:** {decision.get('reason', 'unknown')}", "",
             f"**Deployed:** {deployed}", "",
             "| model | precision | recall | positives |", "|---|---|---|---|"]  # fmt: skip
    for kind, metrics in sorted(after.items()):
        old = before.get(kind, {})
        cells = [_diff_cell(old, metrics, "precision"), _diff_cell(old, metrics, "recall"),
                 _diff_cell(old, metrics, "positives", "{}")]  # fmt: skip
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    markdown = "\n".join(lines)
    create_markdown_artifact(
        markdown=markdown, key="retrain-report", description="Metrics diff and promotion decision"
    )
    return markdown


def _diff_cell(old: dict[str, Any], new: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
    """``old → new`` for one metric, or just ``new`` for a candidate seen the first time."""
    new_value = fmt.format(new[key])
    return f"{fmt.format(old[key])} → {new_value}" if key in old else new_value


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


@flow(name=FLOW_NAME, log_prints=True)
def retrain() -> dict[str, Any]:
    """Retrain when the lab added rows; deploy only a model the pipeline promoted."""
    settings = get_settings()
    logger = get_run_logger()
    root = settings.root
    with db.advisory_lock(RETRAIN_LOCK_KEY, settings) as acquired:
        if not acquired:
            summary = "skipped: another retrain is running (advisory lock held)"
            logger.warning(summary)
            return {"status": "skipped", "summary": summary}
        count, newest, watermark = new_rows_since_watermark()
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
        before = _read_json(root / "metrics/evaluate.json")
        decision_before = _read_json(root / "metrics/promotion.json")
        run_dvc(["repro"], str(root))
        warnings = []
        try:
            run_dvc(["push"], str(root))
        except RuntimeError as exc:
            warnings.append(f"dvc push failed: {str(exc).splitlines()[-1]}")
        decision = _read_json(root / "metrics/promotion.json")
        if decision == decision_before:  # promote did not run: the training data came out the same
            decision = {
                "promoted": False,
                "reason": "pipeline outputs unchanged; the champion is kept",
            }
        logger.info("promotion decision: %s", decision.get("reason"))
        shipped = ship_promoted(decision["reason"]) if decision.get("promoted") else None
        if shipped:
            logger.info("deployed: %s", shipped["message"])
        reload_result = None
        if shipped and settings.server_url and settings.admin_token:
            try:
                reload_result = request_reload(
                    settings.server_url, settings.admin_token, settings.reload_timeout_seconds
                )
            except Exception as exc:  # an unreachable server must not fail a good retrain
                warnings.append(f"server reload failed: {exc}")
        for warning in warnings:
            logger.warning(warning)
        data_hash = file_sha256(root / "data/raw/samples.csv")
        lock_hash = file_sha256(root / "dvc.lock")
        publish_report(before, _read_json(root / "metrics/evaluate.json"), decision, count, shipped)
        advance_watermark(newest, data_hash, lock_hash)
        summary = (
            f"retrained on {count} new row(s): {decision.get('reason', 'no decision recorded')}; "
            + (f"deployed version {shipped['version']}" if shipped else "nothing deployed")
        )
        return {"status": "retrained", "summary": summary, "repro_ran": True, "decision": decision,
                "deployed": shipped,
                "data_hash": data_hash, "lock_hash": lock_hash, "reload": reload_result, "warnings": warnings}  # fmt: skip


def serve_on_schedule() -> None:
    """Serve the flow on this machine with its daily cron schedule (Ctrl-C stops)."""
    retrain.serve(name="daily-retrain", cron=get_settings().retrain_cron)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve_on_schedule()
    else:
        print(retrain()["summary"])
