import psycopg2
import psycopg2.errors
import pytest

from potability.errors import DatabaseUnavailable, DuplicateSampleError, ValidationError
from potability.mart import WaterMart, hash_token
from potability.schema import FEATURE_NAMES
from tests.support.database import lab_row


def test_samples_round_trip_sorted_with_missing_values(mart):
    report = mart.insert_samples([lab_row("b"), lab_row("a", 0, ph=None)], added_by="test")
    assert sorted(report.inserted) == ["a", "b"]
    frame = mart.samples()
    assert list(frame["sample_id"]) == ["a", "b"]
    assert list(frame.columns) == ["sample_id", *FEATURE_NAMES, "Potability"]
    assert frame.loc[0, "ph"] != frame.loc[0, "ph"]  # NaN: missing stays missing
    assert frame.loc[1, "Potability"] == 1


def test_insert_is_idempotent_and_conflicts_are_never_overwritten(mart):
    mart.insert_samples([lab_row("s1")], added_by="t")
    again = mart.insert_samples([lab_row("s1"), lab_row("s2")], added_by="t")
    assert again.inserted == ["s2"] and again.duplicates == ["s1"]
    changed = mart.insert_samples([lab_row("s1", 0)], added_by="t")
    assert changed.conflicts == ["s1"] and not changed.inserted
    with pytest.raises(DuplicateSampleError) as err:
        mart.insert_samples([lab_row("s1", ph=9.0)], added_by="t", strict=True)
    assert err.value.sample_ids == ["s1"] and "s1" in str(err.value)
    assert mart.samples().set_index("sample_id").loc["s1", "Potability"] == 1


def test_same_id_twice_in_one_batch_is_reported(mart):
    report = mart.insert_samples([lab_row("x"), lab_row("x"), lab_row("x", 0)], added_by="t")
    assert report.inserted == ["x"] and report.duplicates == ["x"] and report.conflicts == ["x"]


def test_missing_sample_id_is_a_validation_error(mart):
    with pytest.raises(ValidationError) as err:
        mart.insert_samples([lab_row("")], added_by="t")
    assert err.value.field == "sample_id" and err.value.row == 0


def test_added_since_and_watermark(mart):
    mart.insert_samples([lab_row("a"), lab_row("b")], added_by="t")
    count, newest = mart.samples_added_since(None)
    assert count == 2 and isinstance(newest, int)
    assert mart.samples_added_since(newest) == (0, None)
    mart.set_watermark("retrain", newest, "d", "l")
    assert mart.watermark("retrain") == newest
    mart.insert_samples([lab_row("c")], added_by="t")
    assert mart.samples_added_since(newest) == (1, newest + 1)


def test_a_lab_row_committed_late_is_never_behind_the_watermark(mart):
    """A transaction that inserts first and commits last: its row still counts as new."""
    import threading
    import time

    late = psycopg2.connect(mart.url)
    try:
        with late.cursor() as cur:
            cur.execute(
                "INSERT INTO water.water_potability (sample_id, potability, added_by) "
                "VALUES ('late', 1, 'slow-lab')"
            )
        early = threading.Thread(
            target=lambda: mart.insert_samples([lab_row("early")], added_by="t")
        )
        early.start()
        time.sleep(0.5)  # "early" is inserted (and would commit) while "late" is still open
        reader = WaterMart(url=mart.url)  # the flow, reading meanwhile
        count, watermark = reader.samples_added_since(None)
        late.commit()
        early.join(timeout=10)
    finally:
        late.close()
    assert not early.is_alive()
    assert count == 0 and watermark is None  # nothing was readable out of commit order
    assert reader.samples_added_since(watermark)[0] == 2
    seqs = mart._run(
        lambda cur: (
            cur.execute("SELECT sample_id FROM water.water_potability ORDER BY commit_seq")
            or cur.fetchall()
        )
    )
    assert [s for (s,) in seqs] == ["late", "early"]  # numbered in commit order
    reader.close()


def test_tokens_are_stored_hashed_and_revocable(mart, clean_db):
    import psycopg2

    token = mart.create_token("plant-1", "sensor")
    assert mart.lookup_token(token).role == "sensor"
    assert mart.lookup_token(token + "x") is None
    with psycopg2.connect(clean_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT token_sha256 FROM water.api_tokens")
        stored = [r[0] for r in cur.fetchall()]
    assert stored == [hash_token(token)] and token not in stored
    assert mart.revoke_tokens("plant-1") == 1
    assert mart.lookup_token(token) is None
    with pytest.raises(ValidationError, match="role"):
        mart.create_token("x", "root")


@pytest.mark.parametrize("error", [psycopg2.DatabaseError, psycopg2.OperationalError])
def test_any_error_on_a_broken_connection_drops_it_and_the_next_call_reconnects(mart, error):
    assert mart.sample_count() == 0
    pid = mart._conn.get_backend_pid()
    admin = psycopg2.connect(mart.url)
    with admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()

    def crashed(cur):
        # what psycopg2 raises when the server dies mid-COPY: a bare DatabaseError on a
        # connection it still calls open
        raise error("server closed the connection unexpectedly")

    with pytest.raises(DatabaseUnavailable, match="lost the connection"):
        mart._run(crashed)
    assert mart.sample_count() == 0 and mart._conn.get_backend_pid() != pid  # reconnected


def test_a_statement_error_keeps_a_healthy_connection(mart):
    mart.sample_count()
    pid = mart._conn.get_backend_pid()
    with pytest.raises(psycopg2.errors.DivisionByZero):
        mart._run(lambda cur: cur.execute("SELECT 1 / 0"))
    assert mart.sample_count() == 0 and mart._conn.get_backend_pid() == pid
