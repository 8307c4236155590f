"""Least-privileged roles: a server's database role cannot add a token, move the champion or alter a table.

`potability db migrate` makes each database's roles; `potability db url --role`
prints their URLs. A server connected as its role still answers, logs, stores
lab rows and renders its page; the pipeline's role logs training runs but
cannot deploy; a server cannot drop recent log partitions.
"""

from __future__ import annotations

import stat
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import psycopg2
import psycopg2.errors
import pytest
import requests
from psycopg2 import sql

from potability import db, roles
from potability.config import Settings
from potability.pipeline.small_model import build_model_dir
from potability.serve import create_app, shutdown
from tests.support.database import query, scratch_database
from tests.support.project import REPO, run
from tests.support.server import SAMPLE, Server, auth, logged


@pytest.fixture
def server_url(clean_db) -> str:
    return roles.role_url(clean_db, "server", Settings(root=REPO))


def _refused(url: str, statement: str, params=None) -> str:
    with pytest.raises(psycopg2.errors.InsufficientPrivilege) as caught:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
    return str(caught.value)


def test_a_role_url_never_keeps_the_owners_login_from_the_query_string():
    """libpq lets ``?user=&password=`` win over the userinfo: a role URL built from such an owner's
    URL would connect as the owner and carry its password into the flow's stages."""
    owner = "postgresql://db.internal:5432/water?user=owner&password=s3cret&sslmode=require"
    role = roles.with_user(owner, "potability_pipeline_water", "p1pe")
    parts = urlsplit(role)
    assert "s3cret" not in role and "owner" not in role
    assert parts.username == "potability_pipeline_water" and parts.password == "p1pe"
    assert parse_qs(parts.query) == {"sslmode": ["require"]}
    socket = "postgresql://postgres:@/postgres?host=/work/.pgdata"  # untouched: no login in it
    assert roles.with_user(socket, "u", "p") == "postgresql://u:p@/postgres?host=/work/.pgdata"


def test_db_url_prints_each_role_with_a_password_kept_in_a_private_file(cli_env, tmp_path):
    urls = {
        role: run(["potability", "db", "url", "--role", role], REPO, cli_env).stdout.strip()
        for role in roles.ROLES
    }
    assert urls["admin"] == cli_env["DATABASE_URL"]
    database = roles.database_name(cli_env["DATABASE_URL"])
    for role in ("server", "pipeline"):
        assert urls[role].startswith(f"postgresql://potability_{role}_{database}:")
        with psycopg2.connect(urls[role]) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == roles.role_name(role, database)
    again = run(["potability", "db", "url", "--role", "server"], REPO, cli_env).stdout.strip()
    assert again == urls["server"]  # generated once
    mode = stat.S_IMODE(Settings(root=REPO).db_roles_file.stat().st_mode)
    assert mode == 0o600


def test_the_server_role_cannot_add_a_token_change_deployments_or_alter_a_table(server_url):
    assert "api_tokens" in _refused(
        server_url,
        "INSERT INTO water.api_tokens (name, role, token_sha256) VALUES ('x', 'admin', 'y')",
    )
    _refused(server_url, "UPDATE water.api_tokens SET revoked_at = NULL")
    _refused(server_url, "INSERT INTO water.deployments (deployed_by) VALUES ('x')")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="owner"):
        with psycopg2.connect(server_url) as conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE water.water_inferences ADD COLUMN evil int")
    _refused(server_url, "DELETE FROM water.water_inferences")
    _refused(server_url, "TRUNCATE water.water_potability")


def test_the_server_role_cannot_move_the_champion(deploy_dir, server_url, tmp_path):
    import mlflow

    name = f"roles-{uuid.uuid4().hex[:8]}"
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    registry = db.database_on(server_url, "mlflow").replace(
        "postgresql://", "postgresql+psycopg2://", 1
    )
    client = mlflow.MlflowClient(tracking_uri=registry)
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    # refused writing the alias, not reading what MLflow checks first (webhooks, experiments)
    with pytest.raises(Exception, match="permission denied for table registered_model_aliases"):
        client.set_registered_model_alias(name, "other", first.version)
    with pytest.raises(Exception, match="permission denied for table registered_model_aliases"):
        client.delete_registered_model_alias(name, "champion")


def test_a_server_connected_as_its_role_answers_logs_and_stores_lab_rows(
    champion, server_url, server_settings, mart, tmp_path
):
    registry = db.database_on(server_url, "mlflow").replace(
        "postgresql://", "postgresql+psycopg2://", 1
    )
    config = {**champion.app_config(tmp_path), "mlflow_tracking_uri": registry}
    app = create_app(server_settings(database_url=server_url, **config))
    try:
        client = app.test_client()
        sensor = auth(mart.create_token("role-sensor", "sensor"))
        lab = auth(mart.create_token("role-lab", "lab"))
        assert client.get("/readyz").status_code == 200
        answer = client.post("/v1/predict", json=SAMPLE, headers=sensor)
        assert answer.status_code == 200, answer.get_json()
        row = {**SAMPLE, "sample_id": "role-1", "Potability": 1}
        assert client.post("/v1/samples", json=row, headers=lab).status_code in (200, 201)
        assert list(logged(app, mart)["inference_id"]) == [answer.get_json()["inference_id"]]
        assert client.get("/").status_code == 200
    finally:
        shutdown(app)


def test_the_page_names_the_lab_match_window_the_database_matched_with(
    champion, clean_db, server_url, server_settings, tmp_path
):
    """The window is db migrate's: a server whose params.yaml says otherwise shows the one used."""
    from potability.log_maintenance import lab_match_minutes

    registry = db.database_on(server_url, "mlflow").replace(
        "postgresql://", "postgresql+psycopg2://", 1
    )
    config = {**champion.app_config(tmp_path), "mlflow_tracking_uri": registry}
    query(clean_db, "SELECT water.set_lab_match_window(90)")  # an owner's db migrate elsewhere
    app = create_app(server_settings(database_url=server_url, **config))
    try:
        agreement = app.test_client().get("/v1/stats/agreement")
        assert agreement.status_code == 200, agreement.get_json()
        assert agreement.get_json()["window_minutes"] == 90
    finally:
        shutdown(app)
        params = lab_match_minutes(Settings(root=REPO).params_path)
        query(clean_db, "SELECT water.set_lab_match_window(%s)", (params,))


def test_the_server_role_keeps_the_log_maintained(server_url, tmp_path):
    """Partitions ahead, retention and lab matches run as their functions' owner; the window stays the owner's."""
    from potability import log_maintenance

    settings = Settings(root=REPO, database_url=server_url, log_retention_days=30)
    report = log_maintenance.maintain(settings, url=server_url)
    assert report.skipped is None, report.lines()
    _refused(server_url, "CREATE TABLE water.evil (x int)")
    # a server's params.yaml asking for another lab-match window leaves the owner's
    report = log_maintenance.maintain(settings, url=server_url, window_minutes=90)
    assert report.skipped is None and report.window_minutes == 60, report.lines()
    assert "params.yaml says 90 min" in report.lines()[3]
    assert query(server_url, "SELECT window_minutes FROM water.lab_match_config") == [(60,)]


@pytest.mark.slow
def test_potability_serve_on_the_embedded_default_connects_as_the_server_role(
    champion, mart, tmp_path
):
    """With DATABASE_URL unset, `potability serve` takes the server role's URL by itself."""
    pgdata = parse_qs(urlsplit(mart.url).query).get("host", [""])[0]
    if not pgdata.endswith("data"):
        pytest.skip("the session's Postgres is not the embedded one")
    # the session's embedded Postgres found the way `make run` finds it: no URL at all
    server = Server(
        tmp_path,
        mart.url,
        champion,
        DATABASE_URL="",
        MLFLOW_TRACKING_URI="",
        POTABILITY_PGDATA=pgdata,
    )
    try:
        token = mart.create_token("embedded-sensor", "sensor")
        answer = requests.post(
            server.base + "/v1/predict", json=SAMPLE, headers=auth(token), timeout=10
        )
        assert answer.status_code == 200
        with psycopg2.connect(mart.url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                (roles.role_name("server", roles.database_name(mart.url)),),
            )
            assert cur.fetchone()[0] > 0
    finally:
        server.stop()
    assert "permission denied" not in server.log.read_text()


def test_an_owner_that_cannot_create_roles_still_migrates(pg_url, caplog):
    """A managed database's owner lacks CREATEROLE: the schema is made, the roles are not."""
    from potability import migrator

    name = f"limited_{uuid.uuid4().hex[:8]}"
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN")  # noqa: S608 (a generated name)
    conn.close()
    url = db.create_database(pg_url, name)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"ALTER DATABASE {name} OWNER TO {name}")  # noqa: S608
    conn.close()
    owner_url = url.replace("postgres:@", f"{name}:@", 1)
    try:
        applied = migrator.migrate(
            Settings(root=REPO, mlflow_tracking_uri="file:///unused"), owner_url
        )
        assert applied and "database roles not made" in caplog.text
    finally:
        db.drop_database(pg_url, name)


def test_an_mlflow_uri_naming_the_database_beside_ours_gets_the_grants_there(pg_url):
    """Named explicitly, the MLflow database beside ours is still beside: `db migrate` grants the
    pipeline role its tables there, as the retrain then logs its runs as that role."""
    from potability import migrator

    beside = db.mlflow_tracking_uri(Settings(root=REPO), pg_url).replace("+psycopg2", "", 1)
    pipeline = roles.role_name("pipeline", roles.database_name(pg_url))
    may_insert = f"SELECT has_table_privilege('{pipeline}', 'public.runs', 'INSERT')"  # noqa: S608
    query(beside, f'REVOKE INSERT, UPDATE ON ALL TABLES IN SCHEMA public FROM "{pipeline}"')
    try:
        assert query(beside, may_insert) == [(False,)]
        migrator.migrate(Settings(root=REPO, mlflow_tracking_uri=beside), pg_url)
        assert query(beside, may_insert) == [(True,)]
    finally:
        migrator.migrate(url=pg_url)  # the session's grants, whatever happened


def test_a_scheduled_run_on_a_database_without_roles_warns_that_it_runs_as_the_owner(pg_url):
    """The one-URL fallback of a scheduled run: allowed where no pipeline role exists, never silent."""
    from potability.retrain import connections

    name = f"noroles_{uuid.uuid4().hex[:8]}"
    with scratch_database(pg_url, name) as url:
        run_as = connections.split(Settings(root=REPO, database_url=url, deploy_database_url=url))
    pipeline = roles.role_name("pipeline", name)
    assert run_as.widened and run_as.one_url
    assert [w for w in run_as.warnings if f"{pipeline!r} does not exist" in w]
    assert run_as.pipeline.deploy_database_url is None  # never handed to the training tasks


def test_the_pipeline_role_logs_training_runs_and_reads_the_registry_but_cannot_deploy(
    deploy_dir, clean_db, tmp_path
):
    """What the retrain's stages do as the pipeline role works; what only a deploy may do is refused."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelStatus

    settings = Settings(root=REPO)
    pipeline_url = roles.role_url(clean_db, "pipeline", settings)
    assert "api_tokens" in _refused(
        pipeline_url,
        "INSERT INTO water.api_tokens (name, role, token_sha256) VALUES ('x', 'admin', 'y')",
    )
    assert "deployments" in _refused(
        pipeline_url, "INSERT INTO water.deployments (deployed_by) VALUES ('x')"
    )
    name = f"pipeline-{uuid.uuid4().hex[:8]}"
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    user = roles.role_name("pipeline", roles.database_name(clean_db))
    tracking = roles.with_user(
        db.mlflow_tracking_uri(), user, roles.passwords(settings)["pipeline"]
    )
    client = mlflow.MlflowClient(tracking_uri=tracking)
    # a training run, as the train and evaluate stages log it
    experiment = client.create_experiment(f"roles-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment, tags={"data_hash": "abc"}).info.run_id
    client.log_param(run_id, "max_depth", 4)
    client.log_metric(run_id, "cv_precision", 0.7)
    client.log_metric(run_id, "cv_precision", 0.8, step=1)  # latest_metrics moves on
    client.set_tag(run_id, "kind", "rf")
    dataset = Dataset("samples", "d1g35t", "local", "data/raw/samples.csv")
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
    model = client.create_logged_model(experiment, name="model", source_run_id=run_id)
    client.log_model_params(model.model_id, {"threshold": "0.5"})
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.set_terminated(run_id)
    stored = client.get_run(run_id).data
    assert stored.metrics["cv_precision"] == 0.8 and stored.params["max_depth"] == "4"
    # the train and evaluate stages' own calls: a candidate with its model, its test results
    import numpy as np
    from matplotlib.figure import Figure
    from sklearn.linear_model import LogisticRegression

    from potability.tracking import configure, log_candidate, log_test_results

    features = np.random.default_rng(0).normal(size=(40, 9))
    candidate = LogisticRegression().fit(features, features[:, 0] > 0)
    previous = mlflow.get_tracking_uri()
    try:
        configure(Settings(root=REPO, mlflow_tracking_uri=tracking))
        candidate_run, _ = log_candidate(
            kind="logreg",
            model=candidate,
            params={"C": 1.0},
            metrics={"cv_precision": 0.6},
            tags={"data_hash": "abc"},
            example=features[:2],
        )
        log_test_results(candidate_run, {"precision": 0.7}, Figure())
        assert client.get_run(candidate_run).data.metrics["test_precision"] == 0.7
    finally:
        mlflow.set_tracking_uri(previous)
    # the champion stage reads the alias
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    for deploying in (
        lambda: client.set_registered_model_alias(name, "challenger", first.version),
        lambda: client.delete_registered_model_alias(name, "champion"),
        lambda: client.create_registered_model(f"{name}-other"),
        lambda: client.set_model_version_tag(name, first.version, "manifest_sha256", "forged"),
    ):
        with pytest.raises(Exception, match="permission denied"):
            deploying()


def _day_partition(url: str, days_ago: int) -> str:
    day = (datetime.now(UTC) - timedelta(days=days_ago)).date()
    query(url, "SELECT water.ensure_inference_partition(%s)", (day,))
    return f"water_inferences_p{day:%Y%m%d}"


def _partitions(url: str) -> set[str]:
    rows = query(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'water.water_inferences'::regclass",
    )
    return {r[0] for r in rows}


def test_the_server_role_cannot_drop_recent_log_partitions(clean_db, server_url):
    """Retention is the owner's: `db migrate` records it, and a server keeps at least that, whatever it asks."""
    from potability import log_maintenance, migrator

    recent, old = _day_partition(clean_db, 3), _day_partition(clean_db, 45)
    try:
        # keep forever (the default): a server asking for one day drops nothing
        assert query(server_url, "SELECT * FROM water.drop_inference_partitions(1)") == []
        assert {recent, old} <= _partitions(clean_db)
        migrator.migrate(Settings(root=REPO, log_retention_days=30), url=clean_db)
        assert query(clean_db, "SELECT keep_days FROM water.log_retention") == [(30,)]
        # unattended retention, as a server's hourly maintenance runs it: the old day goes
        settings = Settings(root=REPO, database_url=server_url, log_retention_days=1)
        report = log_maintenance.maintain(settings, url=server_url)
        assert old in report.dropped and recent not in report.dropped, report.lines()
        assert "retention: 30 days, not the 1 day asked for" in report.lines()[-1]
        assert recent in _partitions(clean_db) and old not in _partitions(clean_db)
        # a server left at 0 (no preference of its own) takes the recorded days, with no warning
        settings = Settings(root=REPO, database_url=server_url, log_retention_days=0)
        report = log_maintenance.maintain(settings, url=server_url)
        assert report.retention_days == 30 and recent not in report.dropped
        assert not [line for line in report.lines() if line.startswith("retention:")], (
            report.lines()
        )
    finally:
        migrator.migrate(url=clean_db)  # the session's retention again (keep forever)
        for part in (recent, old):
            query(clean_db, f"DROP TABLE IF EXISTS water.{part}")  # noqa: S608 (our names)
    assert query(clean_db, "SELECT keep_days FROM water.log_retention") == [(0,)]


def test_two_databases_on_one_cluster_keep_their_own_roles(pg_url, tmp_path):
    """Roles are cluster-wide: each database's are its own, so a second `db migrate` leaves the first's alone."""
    from potability import migrator

    tag = uuid.uuid4().hex[:8]
    names = (f"roles_a_{tag}", f"roles_b_{tag}")
    urls, settings = {}, {}
    try:
        for name in names:  # two workspaces: their own database and roles file
            urls[name] = db.create_database(pg_url, name)
            settings[name] = Settings(
                root=REPO,
                db_roles_file=tmp_path / name / ".db-roles.json",
                mlflow_tracking_uri="file:///unused",
            )
            migrator.migrate(settings[name], urls[name])
            if name == names[0]:
                first = roles.role_name("server", name)
                verifier = query(
                    pg_url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (first,)
                )
        # the second migrate did not set the first's password again
        assert (
            query(pg_url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (first,))
            == verifier
        )
        servers = {n: roles.role_url(urls[n], "server", settings[n]) for n in names}
        assert servers[names[0]] != servers[names[1]]
        for name in names:
            assert query(servers[name], "SELECT current_user") == [
                (roles.role_name("server", name),)
            ]
            assert query(servers[name], "SELECT count(*) FROM water.api_tokens") == [(0,)]
        # nor does the first's server role read the second's tokens
        other = db.database_on(servers[names[0]], names[1])
        _refused(other, "SELECT count(*) FROM water.api_tokens")
    finally:
        for name in names:
            db.drop_database(pg_url, name)
            for role in roles.MADE:
                query(
                    pg_url,
                    sql.SQL("DROP ROLE IF EXISTS {}").format(
                        sql.Identifier(roles.role_name(role, name))
                    ),
                )


def _executable(url: str) -> set[str]:
    rows = query(
        url,
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = 'water' "
        "AND has_function_privilege(p.oid, 'EXECUTE')",
    )
    return {r[0] for r in rows}


def test_the_server_role_executes_only_the_log_functions_a_server_calls(clean_db, server_url):
    """Each function a server may run as the log's owner is listed, with its bound; the rest are refused."""
    listed = {
        r[0]
        for r in query(
            clean_db, "SELECT unnest(%s::regprocedure[])::text", (list(roles.SERVER_FUNCTIONS),)
        )
    }
    assert _executable(server_url) == listed
    for abuse in (
        "SELECT water.set_lab_match_window(100000)",  # every lab sample matched again, far apart
        "SELECT water.ensure_inference_partition('2999-01-01')",
        "SELECT water.recompute_rollups('-infinity')",
        "SELECT water.lock_histograms('v', true)",
        "SELECT water.hourly_rollup_sql('x')",
    ):
        assert "permission denied for function" in _refused(server_url, abuse)
    assert query(clean_db, "SELECT window_minutes FROM water.lab_match_config") == [(60,)]


def test_the_server_role_creates_partitions_no_further_than_the_owner_recorded(
    clean_db, server_url
):
    """`db migrate` records POTABILITY_LOG_PARTITIONS_AHEAD_DAYS: a server asking for more gets that many."""
    from potability import log_maintenance

    before = _partitions(clean_db)
    today = datetime.now(UTC).date()
    try:
        made = query(server_url, "SELECT * FROM water.ensure_inference_partitions(400, 400)")
        days = {datetime.strptime(r[0][-8:], "%Y%m%d").date() for r in made}
        assert all(today - timedelta(days=1) <= d <= today + timedelta(days=7) for d in days)
        assert len(_partitions(clean_db) - before) <= 1  # at most a day that turned meanwhile
        # the owner still may (a bulk load of past days)
        assert len(query(clean_db, "SELECT * FROM water.ensure_inference_partitions(0, 3)")) == 2
        settings = Settings(root=REPO, database_url=server_url, log_partitions_ahead_days=30)
        report = log_maintenance.maintain(settings, url=server_url)
        assert report.skipped is None and report.ahead_days == 7, report.lines()
        assert report.lines()[3].startswith("partitions ahead: 7 days, not the 30 days asked for")
        assert max(_partitions(clean_db)) == f"water_inferences_p{today + timedelta(days=7):%Y%m%d}"
    finally:
        for part in _partitions(clean_db) - before:
            query(clean_db, f"DROP TABLE water.{part}")  # noqa: S608 (our names)


def test_the_server_role_matches_again_only_lab_rows_added_lately(clean_db, server_url):
    """However far back a server asks, it matches again only the rows of twice its recorded interval."""
    now = datetime.now(UTC)
    query(
        clean_db,
        "INSERT INTO water.water_inferences (inference_id, received_at, sensor_id, model_version, "
        "ph, probability, potable, threshold) VALUES (%s, %s, 's1', 'v1', 7.0, 0.7, true, 0.5)",
        (str(uuid.uuid4()), now - timedelta(minutes=5)),
    )
    query(
        clean_db,
        "INSERT INTO water.water_potability (sample_id, sensor_id, ph, potability, collected_at, "
        "added_by, added_at) VALUES ('old', 's1', 7.0, 1, %s, 'lab', %s), "
        "('new', 's1', 7.0, 1, %s, 'lab', %s)",
        (now, now - timedelta(days=3), now, now - timedelta(minutes=1)),
    )
    matched = "SELECT sample_id FROM water.lab_matches ORDER BY 1"
    assert query(clean_db, matched) == [("new",), ("old",)]  # the trigger matched both
    query(clean_db, "DELETE FROM water.lab_matches")
    query(server_url, "SELECT water.rematch_lab_samples('-infinity')")
    assert query(clean_db, matched) == [("new",)]
    query(clean_db, "SELECT water.rematch_lab_samples('-infinity')")  # the owner: all of them
    assert query(clean_db, matched) == [("new",), ("old",)]


def _readable(url: str) -> set[str]:
    rows = query(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
        "AND has_table_privilege(c.oid, 'SELECT')",
    )
    return {r[0] for r in rows}


def test_each_role_reads_only_its_mlflow_tables(clean_db):
    """Neither role reads MLflow's secrets or webhooks; the server reads the registry and no run."""
    settings = Settings(root=REPO)
    urls = {
        role: db.database_on(roles.role_url(clean_db, role, settings), "mlflow")
        for role in roles.MADE
    }
    everything = _readable(db.database_on(clean_db, "mlflow"))
    assert {"secrets", "webhooks", "runs", "registered_model_aliases"} <= everything
    assert _readable(urls["server"]) == set(roles.MLFLOW_SERVER_TABLES)
    assert _readable(urls["pipeline"]) == set(roles.MLFLOW_PIPELINE_TABLES)
    for url in urls.values():
        assert "secrets" in _refused(url, "SELECT * FROM secrets")
        assert "webhooks" in _refused(url, "SELECT * FROM webhooks")
        _refused(url, "SELECT url FROM webhooks")
        # what MLflow's registry store checks when it is made, and nothing more of a webhook
        assert query(url, "SELECT count(webhook_id) FROM webhooks WHERE workspace IS NOT NULL")
    assert "runs" in _refused(urls["server"], "SELECT * FROM runs")
    assert query(urls["server"], "SELECT count(*) FROM registered_model_aliases")
