"""The sensors' client and `potability predict` against the real server (gunicorn, Postgres), restarts included."""

from __future__ import annotations

import csv
import sys
import threading
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from potability.sensor.client import PotabilityClient, Refused
from potability.sensor.readings import reading_inference_id
from potability.sensor.readings_csv import ANSWER_COLUMNS
from tests.support.project import HEADER_HINT, REPO, run
from tests.support.server import SAMPLE, Server, free_port

pytestmark = pytest.mark.slow

# a client that outlasts a restart (gunicorn boots and loads the model in a few seconds) quickly
PATIENT = {"retries": 40, "backoff": 0.1, "max_backoff": 1.0, "timeout": 5.0}


@pytest.fixture(scope="module")
def server(pg_url, champion, tmp_path_factory):
    """One running server for the tests that do not stop it; each test brings its own token."""
    server = Server(tmp_path_factory.mktemp("client"), pg_url, champion, workers=1)
    yield server
    server.stop()


def stored(url: str, sensor_id: str) -> list[tuple[str, datetime]]:
    """The sensor's logged answers as (inference_id, received_at), once the log has written them."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT inference_id::text, received_at FROM water.water_inferences WHERE sensor_id = %s",
            (sensor_id,),
        )
        return cur.fetchall()


def wait_stored(url: str, sensor_id: str, count: int, timeout: float = 30.0) -> list:
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    while len(rows := stored(url, sensor_id)) < count and datetime.now(UTC) < deadline:
        threading.Event().wait(0.2)
    return rows


def measured(i: int) -> dict[str, float]:
    """The stream's reading number ``i``: a resend carries the same measurements (else a 409)."""
    return {**SAMPLE, "ph": 5 + (i % 40) / 10}


def test_the_client_survives_a_server_restart_mid_stream_with_nothing_lost_or_doubled(
    mart, champion, tmp_path
):
    token = mart.create_token("stream-sensor", "sensor")
    server = Server(tmp_path, mart.url, champion)
    client = PotabilityClient(server.base, token, batch_size=5, **PATIENT)
    total, answers, failures = 300, [], []
    restart_at = threading.Event()

    def sensor():  # a sensor sending five readings at a time, as fast as it is answered
        try:
            for start in range(0, total, 5):
                batch = [client.reading(measured(i)) for i in range(start, start + 5)]
                answers.extend(client.predict(batch))
                if len(answers) >= total // 3:
                    restart_at.set()
        except Exception as exc:  # the assertion below shows it
            failures.append(exc)
            restart_at.set()

    stream = threading.Thread(target=sensor)
    stream.start()
    assert restart_at.wait(60)
    server.stop()  # SIGTERM: what an operator's restart or a deploy does
    sent_while_down = len(answers)
    server = Server(tmp_path, mart.url, champion, port=server.port)
    try:
        stream.join(120)
        assert not failures, failures
        # the restart was felt mid-stream
        assert sent_while_down < total and client.stats.retries > 0
        assert len(answers) == total and len({a.reading_id for a in answers}) == total
        expected = {reading_inference_id("stream-sensor", a.reading_id) for a in answers}
        assert {a.inference_id for a in answers} == expected
        # the sensor lost its answers and sends a third of the stream again: stored once
        again = client.predict(
            [
                client.reading(measured(i), a.read_at, a.reading_id)
                for i, a in enumerate(answers[:100])
            ]
        )
        assert [a.inference_id for a in again] == [a.inference_id for a in answers[:100]]
        rows = wait_stored(mart.url, "stream-sensor", total)
        assert len(rows) == total and {i for i, _ in rows} == expected
        read_at = {a.inference_id: datetime.fromisoformat(a.read_at) for a in answers}
        assert all(received == read_at[i] for i, received in rows)
    finally:
        client.close()
        server.stop()


def test_the_outbox_delivers_readings_queued_while_the_server_was_down(mart, champion, tmp_path):
    token = mart.create_token("offline-sensor", "sensor")
    port, outbox = free_port(), tmp_path / "outbox"
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with PotabilityClient(
        f"http://127.0.0.1:{port}", token, outbox=outbox, retries=1, backoff=0.01
    ) as c:
        readings = [c.reading(SAMPLE, an_hour_ago + timedelta(minutes=2 * i)) for i in range(30)]
        assert c.enqueue(readings) == 30 and c.enqueue(readings[:5]) == 0
        delivery = c.flush()  # nobody there
        assert delivery.answers == [] and delivery.pending == 30 and "no answer" in delivery.error
    server = Server(tmp_path, mart.url, champion, workers=1, port=port)
    try:
        # the sensor's process restarted too: the outbox on disk is all it has
        with PotabilityClient(server.base, token, outbox=outbox, **PATIENT) as c:
            delivery = c.flush()
        assert delivery.error is None and delivery.pending == 0 and delivery.rejected == []
        assert [a.reading_id for a in delivery.answers] == [r.reading_id for r in readings]
        rows = wait_stored(mart.url, "offline-sensor", 30)
        assert sorted(received for _, received in rows) == [
            datetime.fromisoformat(r.read_at) for r in readings
        ]
    finally:
        server.stop()


def test_retries_stop_at_a_400_which_names_the_field_and_the_reading(server, mart, tmp_path):
    token = mart.create_token("skewed-sensor", "sensor")
    ahead = datetime.now(UTC) + timedelta(hours=2)  # a sensor clock far ahead of the server's
    with PotabilityClient(server.base, token, batch_size=10, retries=5, backoff=2.0) as client:
        good, bad = client.reading(SAMPLE), client.reading(SAMPLE, ahead)
        with pytest.raises(Refused) as refused:
            client.predict([good, bad])
        assert refused.value.status == 400 and refused.value.field == "read_at"
        assert refused.value.reading == bad and "read_at" in str(refused.value)
        assert (client.stats.requests, client.stats.retries) == (1, 0)  # no second try, no wait


def test_the_outbox_sets_a_refused_reading_aside_and_sends_the_rest(server, mart, tmp_path):
    token = mart.create_token("outbox-sensor", "sensor")
    ahead = datetime.now(UTC) + timedelta(hours=2)
    with PotabilityClient(server.base, token, outbox=tmp_path / "ob", batch_size=10) as client:
        readings = [client.reading(SAMPLE) for _ in range(4)]
        bad = client.reading(SAMPLE, ahead)
        client.enqueue([*readings[:2], bad, *readings[2:]])
        delivery = client.flush()
        assert [a.reading_id for a in delivery.answers] == [r.reading_id for r in readings]
        assert [r for r, _ in delivery.rejected] == [bad] and delivery.pending == 0
        assert [r for r, _ in client.outbox.rejected()] == [bad]  # kept on disk, with the reason
        assert "read_at" in client.outbox.rejected()[0][1]
    with PotabilityClient(
        server.base, "not-a-token", outbox=tmp_path / "ob2", batch_size=10
    ) as client:
        client.enqueue(readings)
        with pytest.raises(Refused) as refused:
            client.flush()
        assert refused.value.status == 401 and len(client.outbox) == 4  # nothing dropped


# a file without read_at or collected_at columns: its rows' time is given (never the file's mtime)
READ_AT = ("--read-at", (datetime.now(UTC) - timedelta(hours=1)).isoformat())


def potability_predict(*args: str, env: dict, check: bool = True):
    return run(
        [sys.executable, "-m", "potability.cli", "predict", *READ_AT, *args],
        cwd=REPO,
        env=env,
        check=check,
    )


def test_the_cli_writes_one_answer_per_input_row_and_a_rerun_doubles_nothing(
    server, mart, tmp_path, cli_env
):
    token_file = tmp_path / "token"
    token_file.write_text(mart.create_token("cli-sensor", "sensor") + "\n")
    data = tmp_path / "lab.csv"  # a lab file as it is: its verdicts are not sent
    data.write_text(
        HEADER_HINT
        + "7,200,20000,7,300,400,14,60,4,1\n" * 3
        + ",150,,6,,420,12,70,3,0\n"
        + "6.5,210,18000,8,310,390,13,65,4.5,\n" * 3
    )
    out = tmp_path / "answers.csv"
    args = [str(data), "--url", server.base, "--token-file", str(token_file), "--out", str(out)]
    potability_predict(*args, "--batch", "3", env=cli_env)
    answers = list(csv.DictReader(out.open()))
    assert [int(a["line"]) for a in answers] == list(range(2, 9))
    assert tuple(answers[0]) == ANSWER_COLUMNS
    assert {a["potable"] for a in answers} <= {"0", "1"}
    assert {a["model_version"] for a in answers} == {"test-rf-1"}
    assert len({a["inference_id"] for a in answers}) == 7
    potability_predict(*args, env=cli_env)  # the same file again: the same readings
    assert [a["inference_id"] for a in csv.DictReader(out.open())] == [
        a["inference_id"] for a in answers
    ]
    rows = wait_stored(mart.url, "cli-sensor", 7)
    assert sorted(i for i, _ in rows) == sorted(a["inference_id"] for a in answers)


def test_the_cli_names_each_bad_row_and_field_and_sends_nothing(server, mart, tmp_path, cli_env):
    token_file = tmp_path / "token"
    token_file.write_text(mart.create_token("cli-bad", "sensor"))
    data = tmp_path / "bad.csv"
    data.write_text(
        HEADER_HINT
        + "15,200,20000,7,300,400,14,60,4,1\n"
        + "7,200,20000,7,300,400,14,60,4,1\n"
        + "7,abc,20000,7,300,400,14,60,4,1\n"
        + "7,200\n"
    )
    result = potability_predict(
        str(data), "--url", server.base, "--token-file", str(token_file), env=cli_env, check=False
    )
    assert result.returncode == 2
    assert "line 2: ph:" in result.stderr and "line 4: Hardness:" in result.stderr
    assert "line 5: row: has 2 fields" in result.stderr and "nothing sent" in result.stderr
    assert stored(mart.url, "cli-bad") == []


def test_the_cli_outbox_keeps_a_file_for_the_next_run_when_the_server_is_away(
    server, mart, tmp_path, cli_env
):
    token_file = tmp_path / "token"
    token_file.write_text(mart.create_token("cli-outbox", "sensor"))
    data = tmp_path / "readings.csv"
    data.write_text(HEADER_HINT + "7,200,20000,7,300,400,14,60,4,1\n" * 4)
    args = ["--token-file", str(token_file), "--outbox", str(tmp_path / "outbox"), "--out"]
    nobody = f"http://127.0.0.1:{free_port()}"
    away = potability_predict(
        str(data),
        "--url",
        nobody,
        *args,
        str(tmp_path / "a1.csv"),
        env={**cli_env, "POTABILITY_CLIENT_RETRIES": "0"},
        check=False,
    )
    assert away.returncode == 1 and "4 waiting in the outbox" in away.stderr
    assert list(csv.DictReader((tmp_path / "a1.csv").open())) == []
    back = potability_predict(
        str(data), "--url", server.base, *args, str(tmp_path / "a2.csv"), env=cli_env
    )
    assert "4 answer(s) for 4 row(s)" in back.stderr
    answers = list(csv.DictReader((tmp_path / "a2.csv").open()))
    assert [int(a["line"]) for a in answers] == [2, 3, 4, 5]
    assert len(wait_stored(mart.url, "cli-outbox", 4)) == 4
