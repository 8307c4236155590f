"""The console script as a user types it, against the session's real Postgres."""

import subprocess
import sys

import psycopg2
import pytest

from tests.support.project import HEADER_HINT, REPO, run


def potability(*args, env, check=True):
    return run([sys.executable, "-m", "potability.cli", *args], cwd=REPO, env=env, check=check)


def test_db_seed_import_token(clean_db, tmp_path, cli_env):
    out = potability("db", "migrate", env=cli_env).stdout
    assert "up to date" in out
    assert potability("db", "url", env=cli_env).stdout.strip().splitlines()[-1] == clean_db
    assert "inserted 500" in potability("seed", "--rows", "500", "--seed", "4", env=cli_env).stdout
    assert (
        "inserted 0, skipped 500"
        in potability("seed", "--rows", "500", "--seed", "4", env=cli_env).stdout
    )
    csv = tmp_path / "w.csv"
    csv.write_text(HEADER_HINT + "7,200,20000,7,300,400,14,60,4,1\nabc,1,2,3,4,5,6,7,8,1\n")
    out = potability("import-csv", str(csv), env=cli_env).stdout
    assert "rejected line 3: ph:" in out and "inserted 1" in out and "rejected 1" in out
    out = potability("token", "create", "--role", "lab", "--name", "lab-anna", env=cli_env).stdout
    token = out.split()[-1]
    with psycopg2.connect(clean_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT name, role FROM water.api_tokens")
        assert cur.fetchall() == [("lab-anna", "lab")]
        cur.execute("SELECT count(*) FROM water.api_tokens WHERE token_sha256 = %s", (token,))
        assert cur.fetchone()[0] == 0  # never the token itself


def test_errors_are_one_clear_line(clean_db, tmp_path, cli_env):
    result = potability("import-csv", str(tmp_path / "nope.csv"), env=cli_env, check=False)
    assert result.returncode == 2 and "nope.csv: no such file" in result.stderr
    result = potability(
        "token", "create", "--role", "root", "--name", "x", env=cli_env, check=False
    )
    assert result.returncode == 2 and "role" in result.stderr


def test_a_queued_experiment_uses_the_workspace_database(tmp_path, monkeypatch):
    """`dvc exp run --queue` runs stages under .dvc/tmp/exps/: they must not start an empty Postgres."""
    from potability.config import Settings

    monkeypatch.delenv("POTABILITY_PGDATA", raising=False)
    monkeypatch.delenv("POTABILITY_MLFLOW_ARTIFACTS", raising=False)
    queued = tmp_path / "ws" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    settings = Settings(root=queued)
    assert settings.pgdata == tmp_path / "ws" / ".pgdata"
    assert settings.mlflow_artifacts == str(tmp_path / "ws" / "mlartifacts")
    assert Settings(root=tmp_path / "ws").pgdata == tmp_path / "ws" / ".pgdata"


def test_token_names_with_nul_surrogates_or_too_long_are_refused(clean_db, cli_env):
    """A token's name becomes the sensor_id of every answer: bytes that are no text are refused."""

    for name, words in ((b"sensor\x01\xff", "surrogate"), (b"x" * 201, "longer than 200")):
        result = subprocess.run(
            [
                sys.executable.encode(),
                b"-m",
                b"potability.cli",
                b"token",
                b"create",
                b"--role",
                b"sensor",
                b"--name",
                name,
            ],
            cwd=REPO,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and "token name" in result.stderr and words in result.stderr
        assert "Traceback" not in result.stderr
    from potability.errors import ValidationError
    from potability.mart import WaterMart

    mart = WaterMart(url=clean_db)  # NUL cannot travel in argv; the library refuses it too
    with pytest.raises(ValidationError, match="NUL"):
        mart.create_token("a\x00b", "sensor")
    with pytest.raises(ValidationError, match="NUL"):
        mart.revoke_tokens("a\x00b")


def test_log_requeue_moves_quarantined_files_back_into_the_spool(tmp_path, cli_env):
    quarantine = tmp_path / "spool" / "quarantine"
    quarantine.mkdir(parents=True)
    (quarantine / "spool-7-1.jsonl.rows.1765000000").write_bytes(b"")
    env = {**cli_env, "POTABILITY_SPOOL_DIR": str(tmp_path / "spool")}
    out = potability("log", "requeue", env=env).stdout
    assert "requeued 1 quarantined file(s)" in out
    assert list(quarantine.iterdir()) == []
    assert [p.name.endswith(".jsonl") for p in (tmp_path / "spool").glob("spool-*")] == [True]
