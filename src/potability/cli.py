"""The ``potability`` command: a few lines over the library for each subcommand."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

from potability.config import SettingsError, get_settings
from potability.errors import MartError

log = logging.getLogger("potability")


def _mart():
    from potability.mart import WaterMart

    return WaterMart()


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from potability import migrator

    applied = migrator.migrate()
    print(f"migrations applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    from potability import db
    from potability.config import get_settings

    stopped = db.stop_embedded_server(get_settings().pgdata)
    print("embedded Postgres stopped" if stopped else "no embedded Postgres running here")
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    from potability import db, roles

    print(roles.role_url(db.database_url(), args.role, get_settings()))
    return 0


SEED_CHUNK_ROWS = 1000  # synthetic rows per insert: small enough for the progress bar to move


def cmd_seed(args: argparse.Namespace) -> int:
    from potability.progress import bar
    from potability.synth import generate

    frame = generate(args.rows, args.seed)
    rows = [{k: (None if v != v else v) for k, v in r.items()} for r in frame.to_dict("records")]
    mart, inserted, skipped = _mart(), 0, 0
    with bar(len(rows), "seed") as progress:
        for i in range(0, len(rows), SEED_CHUNK_ROWS):
            chunk = rows[i : i + SEED_CHUNK_ROWS]
            report = mart.insert_samples(chunk, added_by=f"seed:{args.seed}")
            inserted, skipped = inserted + len(report.inserted), skipped + len(report.duplicates)
            progress.update(len(chunk))
    summary = f"inserted {inserted}, skipped {skipped} (already stored)"
    print(f"synthetic rows (seed {args.seed}): {summary}")
    return 0


def cmd_import_csv(args: argparse.Namespace) -> int:
    from potability.importer import import_csv
    from potability.progress import bar

    with bar(0, f"import {Path(args.path).name}") as progress:

        def advance(done: int, total: int) -> None:
            progress.total = total
            progress.update(done - progress.n)

        report = import_csv(Path(args.path), _mart(), added_by=args.added_by, on_rows=advance)
    for rejection in report.rejected[: args.show_rejected]:
        print(f"rejected line {rejection.line}: {rejection.reason}")
    if len(report.rejected) > args.show_rejected:
        print(f"... and {len(report.rejected) - args.show_rejected} more rejected rows")
    print(f"{args.path}: {report.summary()}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    token = _mart().create_token(args.name, args.role)
    print(f"created {args.role} token for {args.name!r}; it is shown once, store it now:")
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    count = _mart().revoke_tokens(args.name)
    print(f"revoked {count} token(s) of {args.name!r}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from potability import deploy
    from potability.config import get_settings

    settings = get_settings()
    try:
        if args.version:
            result = deploy.rollback(args.version, args.by, args.reason, settings)
        else:
            source = Path(args.source) if args.source else settings.promoted_dir
            result = deploy.deploy_promoted(
                source, args.by, args.reason, settings, force=args.force
            )
    except deploy.DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.message if result.changed else f"unchanged: {result.message}")
    print(result.registry_version)
    return 0


def cmd_deployments(args: argparse.Namespace) -> int:
    from potability import deployments
    from potability.config import get_settings

    shipped = deployments.history(get_settings().registered_model, limit=args.limit)
    if not shipped:
        print("no deployments yet: `dvc repro`, then `potability deploy`")
    for d in shipped:
        replaced = (
            f"{d.previous_version} ({d.previous_model_version})" if d.previous_version else "-"
        )
        print(
            f"{d.deployed_at:%Y-%m-%d %H:%M:%S%z}  {d.action:8}  version {d.registry_version} "
            f"({d.model_version})  replaced {replaced}  by {d.deployed_by}: {d.reason}"
        )
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    import json

    from potability import lineage

    try:
        found = lineage.describe(get_settings(), args.version)
    except lineage.LineageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    train = found["params"].get("train", {})
    lines = [
        f"version:       {found['version']} ({found['model_version']})"
        + ("  [served now]" if found["served"] else ""),
        f"commit:        {found['commit'] or 'none recorded'}"
        + (f"  [forced: {found['forced']}]" if found["forced"] else ""),
        f"data md5:      {found['data_md5']}  (data/raw/samples.csv, {found['lab_rows']} lab rows)",
        f"model md5:     {found['model_md5']}  (models/promoted)",
        f"params:        train.seed={train.get('seed')} min_recall={train.get('min_recall')} "
        f"confidence_level={train.get('confidence_level')} (--json: all)",
        f"mlflow runs:   training {found['mlflow_runs']['training']}, "
        f"registered from {found['mlflow_runs']['registered_from']}",
        *(
            f"{d['action'] + ':':15}{d['deployed_at']} by {d['deployed_by']}: {d['reason']}"
            for d in found["deployments"]
        ),
    ]
    print("\n".join(lines))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from potability import reproduce

    try:
        result = reproduce.reproduce(
            get_settings(),
            args.version,
            Path(args.workdir) if args.workdir else None,
            on_line=lambda line: print(line, file=sys.stderr),
        )
    except reproduce.ReproduceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.identical:
        print(
            f"version {result.version} rebuilt from commit {result.commit[:12]} in {result.workdir}: "
            f"largest probability difference {result.max_probability_gap:.1e}"
        )
        print("identical")
        return 0
    print(
        f"version {result.version} rebuilt from commit {result.commit[:12]} in {result.workdir} differs:"
    )
    for difference in result.differences:
        print(f"- {difference}")
    return 1


def cmd_retrain(args: argparse.Namespace) -> int:
    from potability.retrain.flow import retrain, serve_on_schedule

    if args.serve:
        if status := _flow_problems(False, False, args.allow_wider_privileges):
            return status
        serve_on_schedule()
        return 0
    result = retrain()
    print(result.get("summary", result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer a CSV of readings; exit 2 on bad rows or a refusal, 1 when the server stayed away."""
    from potability.sensor.client import PotabilityClient
    from potability.sensor.readings_csv import read_readings, send, write_answers

    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    by_line, problems = read_readings(Path(args.csv), args.read_at)
    for problem in problems:
        print(f"{args.csv}: {problem}", file=sys.stderr)
    if problems:
        print(f"{args.csv}: {len(problems)} bad row(s); nothing sent", file=sys.stderr)
        return 2
    with PotabilityClient(args.url, token, outbox=args.outbox, batch_size=args.batch) as client:
        run = send(client, by_line)
    for error in run.errors:
        print(f"{args.csv}: {error}", file=sys.stderr)
    with (
        open(args.out, "w", newline="", encoding="utf-8")
        if args.out
        else nullcontext(sys.stdout) as out
    ):
        written = write_answers(run.answers, run.line_of, out)
    waiting = f"; {run.waiting} waiting in the outbox {args.outbox}" if run.waiting else ""
    print(f"{args.csv}: {written} answer(s) for {len(by_line)} row(s){waiting}", file=sys.stderr)
    return run.status


def _flow_problems(deploying: bool, work_pool: bool = True, allow_wider: bool = False) -> int:
    """Print what would make a scheduled run fail; 2 if anything, else 0."""
    from potability.config import get_settings
    from potability.retrain import deployment

    problems = (
        deployment.guard()
        if deploying
        else deployment.check_inputs(get_settings(), work_pool, allow_wider)
    )
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _allow_wider(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-wider-privileges",
        action="store_true",
        help="accept runs that train with more than the pipeline role's rights (the roles could "
        "not be made, or MLFLOW_TRACKING_URI is used as given); see docs/security.md",
    )


def cmd_flow_check(args: argparse.Namespace) -> int:
    status = _flow_problems(args.deploying, allow_wider=args.allow_wider_privileges)
    if status == 0 and not args.deploying:
        print("ready: a scheduled retrain run would find everything it needs")
    return status


def cmd_flow_deploy(args: argparse.Namespace) -> int:
    from potability.config import get_settings
    from potability.retrain import deployment

    try:
        deployed = deployment.deploy(get_settings(), args.allow_wider_privileges)
    except deployment.DeployRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"deployed retrain-potability/{deployed.name} to work pool {deployed.work_pool!r}, "
        f"schedule {deployed.cron!r} (UTC); start a worker: prefect worker start --pool {deployed.work_pool}"
    )
    return 0


def cmd_log_maintain(args: argparse.Namespace) -> int:
    from potability import log_maintenance
    from potability.config import get_settings

    settings = get_settings()
    report = log_maintenance.maintain(settings)
    days = settings.log_retention_days
    retention = f"{days} days" if days > 0 else "keep forever"
    print(f"retention (POTABILITY_LOG_RETENTION_DAYS): {retention}")
    print(f"partitions ahead: {settings.log_partitions_ahead_days} days")
    for line in report.lines():
        print(line)
    return 1 if report.skipped else 0


def cmd_log_requeue(args: argparse.Namespace) -> int:
    """Move the spool's quarantined files back, for the servers' next replay."""
    from potability.serve.spool import Spool

    spool = Spool(get_settings().spool_dir)
    moved = spool.requeue()
    print(f"requeued {moved} quarantined file(s) from {spool.quarantine_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from potability import db, roles
    from potability.serve.run import run_gunicorn

    if not get_settings().database_url:  # the embedded Postgres: serve as its server role too
        os.environ["DATABASE_URL"] = roles.role_url(db.database_url(), "server", get_settings())

    return run_gunicorn(
        host=args.host, port=args.port, workers=args.workers, page_port=args.page_port
    )


def cmd_proxy_config(args: argparse.Namespace) -> int:
    from potability import proxy

    try:
        options = proxy.check(
            args.upstream, args.listen, args.page_listen, args.tls_cert, args.tls_key, args.prefix
        )
    except proxy.ProxyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(proxy.render(options, get_settings()))
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number, 1 to 65535, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="potability", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    dbp = sub.add_parser("db", help="the database").add_subparsers(dest="db_command", required=True)
    dbp.add_parser("migrate", help="apply pending migrations (idempotent)").set_defaults(
        func=cmd_db_migrate
    )
    p = dbp.add_parser("url", help="print a libpq URI for psql and psycopg2")
    p.add_argument(
        "--role",
        choices=["server", "pipeline", "admin"],
        default="admin",
        help="whose URL: the server's and pipeline's least-privileged roles, or the owner's",
    )
    p.set_defaults(func=cmd_db_url)
    dbp.add_parser("stop", help="stop the embedded Postgres of this project").set_defaults(
        func=cmd_db_stop
    )

    logp = sub.add_parser("log", help="the inference log").add_subparsers(
        dest="log_command", required=True
    )
    logp.add_parser(
        "maintain", help="create partitions ahead, drop those past retention; prints what it did"
    ).set_defaults(func=cmd_log_maintain)
    logp.add_parser(
        "requeue", help="move the spool's quarantined files back to be replayed (cause fixed)"
    ).set_defaults(func=cmd_log_requeue)

    p = sub.add_parser("seed", help="insert synthetic lab rows shaped like the real data")
    p.add_argument("--rows", type=int, default=3300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("import-csv", help="import water_potability.csv or a file with its columns")
    p.add_argument("path")
    p.add_argument("--added-by", default=f"import:{getpass.getuser()}")
    p.add_argument("--show-rejected", type=int, default=50, help="how many rejected rows to list")
    p.set_defaults(func=cmd_import_csv)

    tokens = sub.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", required=True
    )
    p = tokens.add_parser("create", help="create a token; prints it once, as the last word")
    p.add_argument("--role", required=True, choices=["sensor", "lab", "admin"])
    p.add_argument("--name", required=True, help="who holds it; a sensor's name is its sensor_id")
    p.set_defaults(func=cmd_token_create)
    p = tokens.add_parser("revoke", help="revoke every token of a name")
    p.add_argument("--name", required=True)
    p.set_defaults(func=cmd_token_revoke)

    p = sub.add_parser(
        "deploy", help="ship models/promoted/ as the champion, or roll back (--version)"
    )
    p.add_argument("--version", help="registered version to roll back (or forward) to")
    p.add_argument(
        "--from", dest="source", help="model directory to ship (default: models/promoted)"
    )
    p.add_argument("--reason", help="why (recorded; default: the pipeline's promotion reason)")
    p.add_argument("--by", default=getpass.getuser(), help="who deploys (recorded)")
    p.add_argument(
        "--force",
        action="store_true",
        help="ship even if the champion changed since the pipeline decided, or dvc.lock is "
        "not committed (recorded: such a version cannot be reproduced)",
    )
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "lineage", help="the commit, data and model md5s, params and runs behind a version"
    )
    p.add_argument("--version", help="registered version (default: the served one)")
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser(
        "reproduce", help="rebuild a version from its commit and the DVC remote, and compare"
    )
    p.add_argument("--version", required=True, help="registered version to rebuild")
    p.add_argument(
        "--workdir", help="an empty directory to rebuild in (default: a new temporary one)"
    )
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("deployments", help="list deployments and rollbacks, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_deployments)

    p = sub.add_parser(
        "retrain", help="run the retrain flow once now (or --serve it on its schedule)"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="check the inputs, then serve the flow on POTABILITY_RETRAIN_CRON",
    )
    _allow_wider(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser(
        "predict", help="send a CSV of readings to a server; write the answers as CSV"
    )
    p.add_argument("csv", help="the data set's columns; optional reading_id, read_at")
    p.add_argument(
        "--read-at",
        help="when a row without read_at (or collected_at) was read, RFC 3339 with an offset",
    )
    p.add_argument("--url", required=True, help="the server, e.g. http://plant:8000")
    p.add_argument("--token-file", required=True, help="a file holding a sensor token")
    p.add_argument("--out", help="answers CSV (default: standard output)")
    p.add_argument(
        "--batch", type=_positive, help="readings per request (default: the server's maximum)"
    )
    p.add_argument(
        "--outbox", help="keep unsent readings in this directory; run again to send them"
    )
    p.set_defaults(func=cmd_predict)

    flowp = sub.add_parser("flow", help="the retrain flow on a Prefect server").add_subparsers(
        dest="flow_command", required=True
    )
    p = flowp.add_parser(
        "deploy", help="check the inputs, then deploy src/potability/retrain/prefect.yaml"
    )
    _allow_wider(p)
    p.set_defaults(func=cmd_flow_deploy)
    p = flowp.add_parser("check", help="check what a scheduled run needs, without deploying")
    p.add_argument(
        "--deploying",
        action="store_true",
        help="prefect.yaml's build step: refuse a deploy not made by `flow deploy`",
    )
    _allow_wider(p)
    p.set_defaults(func=cmd_flow_check)

    p = sub.add_parser(
        "proxy-config", help="print an nginx.conf for nginx in front of the serving hosts"
    )
    p.add_argument(
        "--upstream", action="append", metavar="HOST:PORT", help="a serving host (repeat for each)"
    )
    p.add_argument(
        "--listen", default="0.0.0.0:8080", help="where nginx listens (default: %(default)s)"
    )
    p.add_argument(
        "--page-listen",
        metavar="ADDR:PORT",
        help="also serve only the open page here (default: off)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument(
        "--prefix",
        metavar="DIR",
        help="where nginx keeps its pid, logs, temp files and cache (default: nginx -p's directory)",
    )
    p.set_defaults(func=cmd_proxy_config)

    p = sub.add_parser("serve", help="start the inference server (gunicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--page-port",
        type=_port,
        default=None,
        help="also serve the open page and stats on this port (same host), in a process of their "
        "own, so they never take a sensor's worker (default: POTABILITY_PAGE_BIND, else off)",
    )
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "pgserver", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        get_settings()  # refuse bad settings now, naming them, not deep inside a command
        return args.func(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: no such file", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
