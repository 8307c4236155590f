"""Every served model rebuilds from git + DVC: retrain commits, lineage, `potability reproduce` (issue 20).

A workspace with a bare git remote and a DVC remote folder, as a utility has
them; the flow retrains twice on new lab rows and deploys; the lab rows then
change in Postgres; both deployed versions still rebuild identically, because
their data comes from the DVC remote at their recorded commit, not from today's
table.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from potability import db, tracking, vcs
from tests.support.project import copy_project, project_env, run, seed_rows

pytestmark = pytest.mark.slow

ENV_KEYS = (
    "PATH",
    "POTABILITY_ROOT",
    "DATABASE_URL",
    "POTABILITY_REGISTERED_MODEL",
    "POTABILITY_DVC_REMOTE",
)


def git(args: list[str], cwd, env=None) -> str:
    return run(
        ["git", "-c", "user.email=r@example.org", "-c", "user.name=researcher", *args],
        cwd,
        env or os.environ.copy(),
    ).stdout.strip()


@pytest.fixture(scope="module")
def shop(tmp_path_factory, pg_url, harness):
    """A project pushed to a bare remote, a DVC remote folder, and two retrains that each deployed."""
    from potability.retrain.flow import retrain

    with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE water.water_potability, water.water_inferences, water.flow_state")
    top = tmp_path_factory.mktemp("lineage")
    remote = top / "remote.git"
    git(["init", "--quiet", "--bare", str(remote)], top)
    root = copy_project(top / "repo")
    branch = git(["rev-parse", "--abbrev-ref", "HEAD"], root)
    git(["remote", "add", "origin", str(remote)], root)
    git(["push", "--quiet", "origin", branch], root)
    git(["symbolic-ref", "HEAD", f"refs/heads/{branch}"], remote)
    env = {**project_env(root, pg_url), "POTABILITY_DVC_REMOTE": str(top / "dvc-remote")}
    env.pop("POTABILITY_SERVER_URL", None)
    saved = dict(os.environ)
    os.environ.update({k: env[k] for k in ENV_KEYS})
    try:
        seed_rows(pg_url, 1200, seed=61)
        first = retrain()
        # the researchers change their branch: the next retrain runs their new params
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["promote"]["confidence"] = 0.0  # promote any eligible challenger: a second deploy
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git(["commit", "--quiet", "-am", "promote any eligible challenger"], root)
        git(["push", "--quiet", "origin", branch], root)
        seed_rows(pg_url, 200, seed=62)
        second = retrain()
        yield {
            "root": root,
            "env": env,
            "remote": remote,
            "runs": [first, second],
            "branch": branch,
        }
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_each_retrain_is_a_commit_on_the_remote_retrain_branch(shop):
    first, second = shop["runs"]
    assert first["deployed"] and second["deployed"], (first["summary"], second["summary"])
    remote = shop["remote"]
    on_branch = git(["rev-list", "retrain"], remote).split()
    assert on_branch[0] == second["commit"] and first["commit"] in on_branch
    log = git(["log", "-1", "--format=%an <%ae>%n%B", second["commit"]], remote)
    assert log.startswith("potability retrain <retrain@potability.invalid>")
    assert "retrain on 200 new lab row(s)" in log and second["decision"]["reason"] in log
    lock = vcs.read_lock(git(["show", f"{second['commit']}:dvc.lock"], remote))
    assert "champion" in lock and lock["promote"]["deps"]  # the champion is a recorded input
    # the researchers' branch and checkout are untouched
    assert git(["status", "--porcelain"], shop["root"]) == ""
    assert git(["rev-list", "--count", shop["branch"]], remote) == "2"
    # the new code reached the second retrain: a merge of the researchers' tip
    assert len(git(["log", "-1", "--format=%P", second["commit"]], remote).split()) == 2


def test_lineage_names_the_commit_data_and_runs(shop):
    env, root = shop["env"], shop["root"]
    for result in shop["runs"]:
        version = result["deployed"]["version"]
        shown = json.loads(
            run(["potability", "lineage", "--version", version, "--json"], root, env).stdout
        )
        lock = vcs.read_lock(git(["show", f"{result['commit']}:dvc.lock"], shop["remote"]))
        assert shown["commit"] == result["commit"]
        assert shown["data_md5"] == vcs.out_md5(lock, "data/raw/samples.csv")
        assert shown["model_md5"] == vcs.out_md5(lock, "models/promoted")
        assert [d["deployed_by"] for d in shown["deployments"]] == ["retrain-potability"]
    text = run(["potability", "lineage"], root, env).stdout
    assert shop["runs"][1]["commit"] in text and "[served now]" in text


def test_both_deployed_versions_rebuild_identically_after_the_lab_rows_changed(
    shop, pg_url, tmp_path
):
    env, root = shop["env"], shop["root"]
    with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE water.water_potability SET ph = ph + 1 WHERE ph IS NOT NULL")
        cur.execute(
            "DELETE FROM water.water_potability WHERE sample_id IN (SELECT sample_id FROM water.water_potability LIMIT 100)"
        )
    served = tracking.version_for_alias(env["POTABILITY_REGISTERED_MODEL"], "champion").version
    for i, result in enumerate(shop["runs"]):
        version = result["deployed"]["version"]
        rebuilt = run(
            ["potability", "reproduce", "--version", version, "--workdir", str(tmp_path / f"v{i}")],
            root,
            env,
            check=False,
            timeout=900,
        )
        assert rebuilt.returncode == 0 and rebuilt.stdout.strip().endswith("identical"), (
            rebuilt.stdout + rebuilt.stderr[-3000:]
        )
    assert (
        tracking.version_for_alias(env["POTABILITY_REGISTERED_MODEL"], "champion").version == served
    )


def test_reproduce_names_what_is_missing(shop, tmp_path):
    env, root = shop["env"], shop["root"]
    unknown = run(["potability", "reproduce", "--version", "99"], root, env, check=False)
    assert unknown.returncode == 2 and "no version '99'" in unknown.stderr
    version = shop["runs"][0]["deployed"]["version"]
    no_data = {**env, "POTABILITY_DVC_REMOTE": str(tmp_path / "empty-remote")}
    (tmp_path / "empty-remote").mkdir()
    missing = run(
        ["potability", "reproduce", "--version", version, "--workdir", str(tmp_path / "a")],
        root,
        no_data,
        check=False,
    )
    assert missing.returncode == 2 and "lacks data of commit" in missing.stderr, missing.stderr
    elsewhere = {
        **env,
        "POTABILITY_GIT_URL": str(root),
    }  # the researchers' repo has no retrain commits
    gone = run(
        ["potability", "reproduce", "--version", version, "--workdir", str(tmp_path / "b")],
        root,
        elsewhere,
        check=False,
    )
    assert (
        gone.returncode == 2
        and f"commit {shop['runs'][0]['commit']}" in gone.stderr
        and "is not in" in gone.stderr
    )
