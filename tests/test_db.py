import psycopg2
import pytest

from potability import db
from potability.errors import DatabaseUnavailable, SchemaError
from potability.mart import WaterMart


def test_migrate_twice_is_idempotent(pg_url):
    assert db.migrate(url=pg_url) == []  # the session fixture applied everything already
    assert db.migrate(url=pg_url) == []
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM water.schema_migrations ORDER BY version")
        assert [r[0] for r in cur.fetchall()] == [v for v, _, _ in db.migration_files()]
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'water'")
        tables = {r[0] for r in cur.fetchall()}
    assert {"water_potability", "water_inferences", "api_tokens", "deployments"} <= tables


def test_fresh_database_migrates_from_nothing(pg_url):
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS migrate_probe")
        cur.execute("CREATE DATABASE migrate_probe")
    probe = pg_url.replace("/postgres?", "/migrate_probe?")
    with pytest.raises(SchemaError, match="potability db migrate"):
        WaterMart(url=probe).sample_count()
    assert db.migrate(url=probe) == [f"{v:03d}_{name}" for v, name, _ in db.migration_files()]
    assert db.migrate(url=probe) == []
    assert WaterMart(url=probe).sample_count() == 0
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE migrate_probe WITH (FORCE)")
    admin.close()


def test_unreachable_database_is_a_clear_error(tmp_path):
    url = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2"
    with pytest.raises(DatabaseUnavailable, match="cannot reach Postgres"):
        WaterMart(url=url).sample_count()


def test_redact_hides_passwords():
    assert db.redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"


def test_mlflow_uri_names_the_driver_and_its_database(pg_url):
    uri = db.mlflow_tracking_uri()
    assert uri.startswith("postgresql+psycopg2://")
    assert "/mlflow?" in uri
