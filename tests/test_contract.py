"""The OpenAPI document is the contract: schemathesis drives the real gunicorn server from it.

Every check schemathesis has, fixed seeds, the coverage and fuzzing phases,
and the project's own ``schemathesis.toml`` (what the document cannot say, and
why), against a server with its deployed settings (a real gunicorn). The
fast tier (`make test`) draws 60 examples per operation at each of several
seeds; the slow tier (`make test-slow`) generates at least 1,000 cases per
operation. Reproduce by hand
against a running server, from the project root:

    st run http://127.0.0.1:8000/openapi.json --checks all --phases examples,coverage,fuzzing \\
        --seed 12 --max-examples 1000 -H "Authorization: Bearer $ADMIN_TOKEN"
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.project import REPO
from tests.support.server import Server

SEED = 12  # the thousand-case run's
# the fast tier's: a review from outside found cases seed 12 never drew (1,001 samples; a read_at
# far ahead), so more than one
SEEDS = (12, 3, 2026)
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
CONFIG = REPO / "schemathesis.toml"  # the one copy of the rules, with their reasons


@pytest.fixture(scope="module")
def contract_server(pg_url, champion, tmp_path_factory):
    from potability.mart import WaterMart

    tmp = tmp_path_factory.mktemp("contract")
    admin = WaterMart(url=pg_url).create_token("contract-admin", "admin")
    # read_at's window as deployed (schemathesis.toml says why its 400 is allowed); thousands of
    # cases from one address: the page's per-client limit would answer most with 429
    server = Server(
        tmp,
        pg_url,
        champion,
        POTABILITY_LOG_FLUSH_SECONDS="0.05",
        POTABILITY_PAGE_RATE_BURST="1000000",
        POTABILITY_PAGE_RATE_PER_SECOND="1000000",
    )
    yield server, admin, tmp
    server.stop()


def schemathesis(
    server: Server, token: str, tmp: Path, max_examples: int, seed: int = SEED
) -> dict:
    """Run `st run` with every check; return the cases per operation (after checking the report).

    One worker: with two, the fuzzing phase of predict and samples sometimes ended after a
    handful of cases (480 + 7 of 1,480 for predict, coverage + fuzzing, at the same seed; seen in
    CI and on a loaded machine, never alone), so a passing run proved less than it said.
    """
    tmp = tmp / f"run-{max_examples}-{seed}"  # each run in a fresh directory: nothing carried over
    tmp.mkdir()
    report = tmp / f"report-{max_examples}.json"
    st = str(Path(sys.executable).with_name("st"))
    command = [
        st,
        "--config-file",
        str(CONFIG),
        "run",
        server.base + "/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        str(seed),
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
    refusals = predict_400s(report.with_suffix(".ndjson"))
    assert {field for field, _ in refusals} <= {"read_at"}, refusals
    return cases_per_operation(report.with_suffix(".ndjson"), seed)


def predict_400s(ndjson: Path) -> list[tuple[str | None, str]]:
    """The field and message of every 400 /v1/predict gave a schema-valid (positive) body.

    schemathesis.toml allows those for read_at's window only.
    """
    found = []
    for line in ndjson.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished or finished["recorder"]["label"] != "POST /v1/predict":
            continue
        recorder = finished["recorder"]
        for case_id, interaction in recorder.get("interactions", {}).items():
            response = interaction.get("response") or {}
            meta = recorder["cases"][case_id]["value"]["meta"]
            if response.get("status_code") != 400 or meta["generation"]["mode"] != "positive":
                continue
            content = base64.b64decode((response.get("content") or {}).get("$base64", ""))
            error = json.loads(content or b"{}").get("error", {})
            found.append((error.get("field"), error.get("message", "")))
    return found


def cases_per_operation(ndjson: Path, seed: int) -> dict[str, int]:
    """How many distinct cases schemathesis sent to each operation, over all phases."""
    cases: dict[str, set[str]] = {}
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished:
            recorder = finished["recorder"]
            cases.setdefault(recorder["label"], set()).update(recorder.get("cases", {}))
    counts = {label: len(ids) for label, ids in sorted(cases.items())}
    print(f"schemathesis cases per operation (seed {seed}): {counts}")
    return counts


@pytest.mark.parametrize("seed", SEEDS)
def test_contract_fast(contract_server, seed):
    server, admin, tmp = contract_server
    counts = schemathesis(server, admin, tmp, max_examples=60, seed=seed)
    assert counts["POST /v1/predict"] >= 300 and counts["POST /v1/samples"] >= 300, counts


@pytest.mark.slow
def test_contract_thousand_cases_per_operation(contract_server):
    server, admin, tmp = contract_server
    counts = schemathesis(server, admin, tmp, max_examples=1000)
    # operations with inputs: the coverage phase's cases plus up to 1,000 fuzzed (1,480 and 1,568
    # at seed 12)
    assert counts["POST /v1/samples"] >= 1000, counts
    assert counts["POST /v1/predict"] >= 1000, counts


def test_the_projects_schemathesis_config_says_why_for_each_rule():
    """One config, at the root (a developer's `st run` reads it too); each rule with its reason."""
    text = CONFIG.read_text(encoding="utf-8")
    rules = [line for line in text.splitlines() if line.startswith("[")]
    assert rules == [
        "[checks.positive_data_acceptance]",
        "[checks.negative_data_rejection]",
        "[[operations]]",
    ]
    for rule in rules:  # a comment block right above each
        assert text.split(rule)[0].rstrip().splitlines()[-1].startswith("#"), rule


def test_run_strips_every_variable_that_turns_hypothesis_to_ci_mode():
    from hypothesis import _settings

    assert set(_settings._CI_VARS) <= set(CI_MARKERS)
