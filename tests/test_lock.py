"""The committed dvc.lock is in step with dvc.yaml: every stage present, code md5s and params current.

A lock that lists removed stages, or code md5s of files since changed, makes
`dvc status` lie on a fresh clone and a rebuild from the commit ambiguous.
Regenerate it as `make run` does (a fresh clone's first `dvc repro`) and commit.
"""

from __future__ import annotations

import hashlib

import yaml

from tests.support.project import REPO

LOCK = yaml.safe_load((REPO / "dvc.lock").read_text(encoding="utf-8"))["stages"]
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def test_the_lock_has_exactly_the_stages_of_dvc_yaml():
    assert sorted(LOCK) == sorted(PIPELINE)


def test_every_code_dependency_md5_in_the_lock_is_the_file_as_committed():
    stale = [
        f"{stage}: {dep['path']}"
        for stage, locked in LOCK.items()
        for dep in locked.get("deps", [])
        if dep["path"].endswith(".py")
        and hashlib.md5((REPO / dep["path"]).read_bytes()).hexdigest() != dep["md5"]  # noqa: S324 (DVC's own hash)
    ]
    assert not stale, f"dvc.lock is stale for {stale}: regenerate it (docs/pipeline.md)"


def test_every_locked_param_is_the_value_in_params_yaml():
    def value(dotted: str):
        node = PARAMS
        for part in dotted.split("."):
            node = node[part]
        return node

    def plain(node):
        """DVC writes 1.0e-5 as 1e-05, which PyYAML reads back as a string."""
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items()}
        if isinstance(node, list):
            return [plain(v) for v in node]
        if isinstance(node, str):
            try:
                return float(node)
            except ValueError:
                return node
        return node

    stale = [
        f"{stage}: {name}"
        for stage, locked in LOCK.items()
        for name, locked_value in locked.get("params", {}).get("params.yaml", {}).items()
        if plain(value(name)) != plain(locked_value)
    ]
    assert not stale, f"dvc.lock records other params for {stale}: regenerate it"


def test_the_lock_records_each_stage_command_as_dvc_yaml_says():
    def flat(cmd: str) -> str:
        return " ".join(cmd.split())

    differ = [s for s in PIPELINE if flat(PIPELINE[s]["cmd"]) != flat(LOCK[s]["cmd"])]
    assert not differ, f"dvc.lock has other commands for {differ}: regenerate it"
