import psycopg2
import pytest

from potability import db, migrator
from potability.errors import DatabaseUnavailable, SchemaError
from potability.mart import WaterMart
from tests.support.database import migrate_by_hand, scratch_database


def test_migrate_twice_is_idempotent(pg_url):
    assert migrator.migrate(url=pg_url) == []  # the session fixture applied everything already
    assert migrator.migrate(url=pg_url) == []
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM water.schema_migrations ORDER BY version")
        assert [r[0] for r in cur.fetchall()] == [v for v, _, _ in migrator.migration_files()]
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'water'")
        tables = {r[0] for r in cur.fetchall()}
    assert {"water_potability", "water_inferences", "api_tokens", "deployments"} <= tables


def databases(url: str) -> set[str]:
    with db.transaction(url=url) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        return {row[0] for row in cur.fetchall()}


def test_a_scratch_database_is_its_own_and_is_dropped_with_its_sessions(pg_url):
    """What the benchmarks rely on: a bench's log and tokens never reach the workspace's database,
    and its database is gone afterwards even when a server's session has not let go."""
    name = 'scratch "quoted" name'  # bound as an identifier, never pasted into the SQL
    sensor = "scratch-sensor"
    with scratch_database(pg_url, name) as url:
        migrator.migrate(url=url)
        mart = WaterMart(url=url)
        mart.create_token(sensor, "sensor")
        mart.close()
        lingering = db.connect(url=url)
        assert name in databases(pg_url)
        with db.transaction(url=url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM water.api_tokens WHERE name = %s", (sensor,))
            assert cur.fetchone()[0] == 1
        with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM water.api_tokens WHERE name = %s", (sensor,))
            assert cur.fetchone()[0] == 0
    assert name not in databases(pg_url)
    lingering.close()


def test_fresh_database_migrates_from_nothing(pg_url):
    with scratch_database(pg_url, "migrate_probe") as probe:
        with pytest.raises(SchemaError, match="potability db migrate"):
            WaterMart(url=probe).sample_count()
        assert migrator.migrate(url=probe) == [
            f"{v:03d}_{name}" for v, name, _ in migrator.migration_files()
        ]
        assert migrator.migrate(url=probe) == []
        assert WaterMart(url=probe).sample_count() == 0


def test_unreachable_database_is_a_clear_error(tmp_path):
    url = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2"
    with pytest.raises(DatabaseUnavailable, match="cannot reach Postgres"):
        WaterMart(url=url).sample_count()


def test_redact_hides_passwords():
    assert db.redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    # libpq also reads a password from the query string, and from a key=value DSN
    assert db.redact("postgresql://db/x?sslmode=require&password=s3cret&user=bob") == (
        "postgresql://db/x?sslmode=require&password=***&user=bob"
    )
    assert "s3cret" not in db.redact("host=db password='s3 cret' user=bob")


def test_mlflow_uri_names_the_driver_and_its_database(pg_url):
    uri = db.mlflow_tracking_uri()
    assert uri.startswith("postgresql+psycopg2://")
    assert "/mlflow?" in uri


def test_a_filled_version_2_database_keeps_rows_and_the_flows_place(pg_url):
    """Migration 003 numbers existing lab rows in the order they came and moves the watermark over."""
    with scratch_database(pg_url, "migrate_v2") as probe:
        with psycopg2.connect(probe) as conn, conn.cursor() as cur:
            migrate_by_hand(cur, up_to=2)
            for i, day in enumerate((3, 1, 2)):  # inserted out of time order
                cur.execute(
                    "INSERT INTO water.water_potability (sample_id, ph, potability, added_at, added_by) "
                    "VALUES (%s, 7.0, %s, %s, 'v2')",
                    (f"old-{i}", i % 2, f"2026-01-0{day}T00:00Z"),
                )
            cur.execute(
                "INSERT INTO water.flow_state (name, watermark) VALUES ('retrain', '2026-01-02T00:00Z')"
            )
        newer = [f"{v:03d}_{name}" for v, name, _ in migrator.migration_files() if v > 2]
        assert migrator.migrate(url=probe) == newer
        mart = WaterMart(url=probe)
        assert mart.sample_count() == 3
        # the flow had seen the rows of days 1 and 2: only day 3's row is new to it
        assert mart.samples_added_since(mart.watermark("retrain"))[0] == 1


def test_a_filled_version_1_database_migrates_with_every_row_kept_and_rollups_backfilled(pg_url):
    """Migrations 004/005 move a live log into daily partitions and build the rollups from it."""
    import uuid
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    answers = [
        (
            str(uuid.uuid4()),
            now - timedelta(hours=7 * i),
            f"s{i % 3}",
            "v1",
            6.0 + i % 4,
            (i % 10) / 10,
            i % 10 >= 5,
        )
        for i in range(60)
    ]
    with scratch_database(pg_url, "migrate_v1") as probe:
        with psycopg2.connect(probe) as conn, conn.cursor() as cur:
            migrate_by_hand(cur, up_to=1)
            cur.executemany(
                "INSERT INTO water.water_inferences (inference_id, received_at, sensor_id, model_version, "
                "ph, probability, potable, threshold) VALUES (%s, %s, %s, %s, %s, %s, %s, 0.5)",
                answers,
            )
            cur.execute(
                "INSERT INTO water.water_potability (sample_id, sensor_id, ph, potability, collected_at, "
                "added_by) VALUES ('lab-1', 's1', 7.0, 1, %s, 'v1')",
                (answers[1][1] + timedelta(minutes=5),),
            )
        assert migrator.migrate(url=probe) == [
            f"{v:03d}_{n}" for v, n, _ in migrator.migration_files() if v > 1
        ]
        with psycopg2.connect(probe) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT inference_id::text, count(*) OVER (PARTITION BY inference_id) FROM water.water_inferences"
            )
            stored = cur.fetchall()
            assert sorted(r[0] for r in stored) == sorted(a[0] for a in answers)
            assert all(r[1] == 1 for r in stored)  # ids unique
            cur.execute("SELECT count(*) FROM water.water_inferences_default")
            assert cur.fetchone()[0] == 0  # every stored day got its partition
            cur.execute("SELECT sum(answers), sum(potable), count(*) FROM water.inference_hourly")
            assert cur.fetchone() == (60, 30, 60)  # one answer per hour
            cur.execute("SELECT sample_id, inference_id::text FROM water.lab_matches")
            assert cur.fetchall() == [("lab-1", answers[1][0])]
            cur.execute("SELECT to_regclass('water.water_inferences_v1')")
            assert cur.fetchone()[0] is None
        assert migrator.migrate(url=probe) == []
