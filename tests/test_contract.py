"""The OpenAPI document is the contract: schemathesis drives the real gunicorn server from it.

Every check schemathesis has, a fixed seed, the coverage and fuzzing phases.
Both tiers start a real gunicorn, so both are `slow`: `make test` runs them,
`make test-fast` does not. The fast tier draws 60 examples per operation; the
slow tier generates at least 1,000 cases per operation. Reproduce by hand against a running server:

    st run http://127.0.0.1:8000/openapi.json --checks all --phases examples,coverage,fuzzing \\
        --seed 12 --max-examples 1000 -H "Authorization: Bearer $ADMIN_TOKEN"
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.project import REPO
from tests.support.server import Server

SEED = 12
# Hypothesis switches to derandomized generation when it sees one of these (its `is_in_ci`); the
# run strips them, so `make test` draws in CI what it draws by hand.
CI_MARKERS = (
    "CI",
    "__TOX_ENVIRONMENT_VARIABLE_ORIGINAL_CI",
    "TF_BUILD",
    "bamboo.buildKey",
    "BUILDKITE",
    "CIRCLECI",
    "CIRRUS_CI",
    "CODEBUILD_BUILD_ID",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "HEROKU_TEST_RUN_ID",
    "TEAMCITY_VERSION",
)
# A lab sample_id sent again with other values is a conflict (409), whatever the generator meant;
# a document-breaking body gets one of the statuses the document lists for it (404: a panel name
# outside the enum).
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["200", "201", "409"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "409", "413", "415", "422"]
"""


@pytest.fixture(scope="module")
def contract_server(pg_url, champion, tmp_path_factory):
    from potability.mart import WaterMart

    tmp = tmp_path_factory.mktemp("contract")
    admin = WaterMart(url=pg_url).create_token("contract-admin", "admin")
    # a generated read_at may lie centuries ahead: the skew check (a 400 the document names, not
    # a schema rule) is tested in test_readings.py, so here any date-time the schema allows is fine;
    # thousands of cases from one address: the page's per-client limit would answer most with 429
    server = Server(
        tmp,
        pg_url,
        champion,
        POTABILITY_LOG_FLUSH_SECONDS="0.05",
        POTABILITY_READING_MAX_SKEW_SECONDS="1e12",
        POTABILITY_PAGE_RATE_BURST="1000000",
        POTABILITY_PAGE_RATE_PER_SECOND="1000000",
    )
    yield server, admin, tmp
    server.stop()


def schemathesis(server: Server, token: str, tmp: Path, max_examples: int) -> dict:
    """Run `st run` with every check; return the JSON report (cases per operation, failures).

    One worker: with two, the fuzzing phase of predict and samples sometimes ended after a
    handful of cases (480 + 7 of 1,480 for predict, coverage + fuzzing, at the same seed; seen in
    CI and on a loaded machine, never alone), so a passing run proved less than it said.
    """
    tmp = tmp / f"run-{max_examples}"  # each run in a fresh directory: nothing carried over
    tmp.mkdir()
    config = tmp / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp / f"report-{max_examples}.json"
    st = str(Path(sys.executable).with_name("st"))
    command = [
        st,
        "--config-file",
        str(config),
        "run",
        server.base + "/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        str(SEED),
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--generation-allow-x00",
        "true",
        "-H",
        f"Authorization: Bearer {token}",
        "--suppress-health-check",
        "all",
        "--report",
        "json,ndjson",
        "--report-json-path",
        str(report),
        "--report-ndjson-path",
        str(report.with_suffix(".ndjson")),
        "--no-color",
    ]
    env = {name: value for name, value in os.environ.items() if name not in CI_MARKERS}
    result = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["failures"] == [] and summary["errors"] == [], summary
    assert summary["operations"]["tested"] == summary["operations"]["total"] == 10
    return cases_per_operation(report.with_suffix(".ndjson"))


def cases_per_operation(ndjson: Path) -> dict[str, int]:
    """How many distinct cases schemathesis sent to each operation, over all phases."""
    cases: dict[str, set[str]] = {}
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished:
            recorder = finished["recorder"]
            cases.setdefault(recorder["label"], set()).update(recorder.get("cases", {}))
    counts = {label: len(ids) for label, ids in sorted(cases.items())}
    print(f"schemathesis cases per operation (seed {SEED}): {counts}")
    return counts


@pytest.mark.slow  # a real gunicorn, as in every test that starts one: `make test` runs it, `make test-fast` not
def test_contract_fast(contract_server):
    server, admin, tmp = contract_server
    counts = schemathesis(server, admin, tmp, max_examples=60)
    assert counts["POST /v1/predict"] >= 300 and counts["POST /v1/samples"] >= 300, counts


@pytest.mark.slow
def test_contract_thousand_cases_per_operation(contract_server):
    server, admin, tmp = contract_server
    counts = schemathesis(server, admin, tmp, max_examples=1000)
    # operations with inputs: the coverage phase's cases plus up to 1,000 fuzzed (1,480 and 1,568
    # at seed 12)
    assert counts["POST /v1/samples"] >= 1000, counts
    assert counts["POST /v1/predict"] >= 1000, counts


def test_repository_has_no_config_for_schemathesis_to_pick_up():
    """The run's settings live in this file, not in a config a developer's `st run` would read."""
    assert not (REPO / "schemathesis.toml").exists()


def test_run_strips_every_variable_that_turns_hypothesis_to_ci_mode():
    from hypothesis import _settings

    assert set(_settings._CI_VARS) <= set(CI_MARKERS)
