"""Settings: typed, read from the environment and `.env`, refused at start with the variable's name."""

import re
import sys

import pytest

from potability.config import Settings, SettingsError, settings_table
from tests.support.project import REPO, run

TABLE = re.compile(r"<!-- settings-table:[^\n]*-->\n(.*?)<!-- end settings-table -->", re.S)


def test_docs_table_is_the_model():
    """docs/settings.md lists every knob; it is generated from the class, so the two cannot drift."""
    found = TABLE.search((REPO / "docs" / "settings.md").read_text(encoding="utf-8"))
    assert found, "docs/settings.md has no settings table between its markers"
    assert found.group(1) == settings_table(), (
        "docs/settings.md's table differs from Settings: "
        "paste `python -m potability.config` into it"
    )
    for variable in (
        "DATABASE_URL",
        "MLFLOW_TRACKING_URI",
        "DASK_SCHEDULER_ADDRESS",
        "POTABILITY_MAX_BATCH",
        "POTABILITY_ADMIN_TOKEN",
    ):
        assert f"| `{variable}` |" in found.group(1)


@pytest.fixture
def bare_env(monkeypatch):
    """No potability variable from the test session's environment."""
    import os

    for name in list(os.environ):
        if name.startswith("POTABILITY_") or name in {"DATABASE_URL", "MLFLOW_TRACKING_URI"}:
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_and_paths_under_the_root(tmp_path, bare_env):
    settings = Settings(root=tmp_path)
    assert settings.max_batch == 1000 and settings.page_requires_token is False
    assert settings.database_url is None and settings.retrain_cron == "0 3 * * *"
    assert settings.spool_dir == tmp_path / ".spool"
    assert settings.params_path == tmp_path / "params.yaml"
    bare_env.setenv("POTABILITY_SPOOL_DIR", "var/spool")
    bare_env.setenv("POTABILITY_MAX_BATCH", "")  # empty means unset
    bare_env.setenv("POTABILITY_PAGE_REQUIRES_TOKEN", "yes")
    settings = Settings(root=tmp_path)
    assert settings.spool_dir == tmp_path / "var" / "spool"
    assert settings.max_batch == 1000 and settings.page_requires_token is True


def test_dotenv_in_the_root_is_read_and_the_environment_wins(tmp_path, bare_env):
    (tmp_path / ".env").write_text(
        "POTABILITY_MAX_BATCH=50\nPOTABILITY_SERVER_URL=http://10.1.2.3:8000\n"
        "DATABASE_URL=postgresql://u:p@db:5432/water\nSOME_OTHER_TOOL=x\n"
    )
    bare_env.setenv("POTABILITY_MAX_BATCH", "70")
    settings = Settings(root=tmp_path)
    assert settings.max_batch == 70
    assert settings.server_url == "http://10.1.2.3:8000"
    assert settings.database_url == "postgresql://u:p@db:5432/water"
    bare_env.setenv("POTABILITY_ROOT", str(tmp_path))
    assert Settings().max_batch == 70 and Settings().root == tmp_path


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("POTABILITY_MAX_BATCH", "-5", "greater than 0"),
        ("POTABILITY_MAX_BATCH", "many", "valid integer"),
        ("POTABILITY_LOG_FLUSH_SECONDS", "0", "greater than 0"),
        ("POTABILITY_TOKEN_STALE_SECONDS", "-1", "greater than or equal to 0"),
        ("POTABILITY_PAGE_REQUIRES_TOKEN", "perhaps", "valid boolean"),
        ("POTABILITY_SERVER_URL", "localhost:8000", "http://"),
        ("MLFLOW_TRACKING_URI", "mlflow-db", "URL like"),
        ("DASK_SCHEDULER_ADDRESS", "scheduler", "host:port"),
        ("POTABILITY_RETRAIN_CRON", "daily", "5 fields"),
        ("POTABILITY_REGISTERED_MODEL", "  ", "blank"),
    ],
)
def test_bad_values_are_refused_with_the_variable(tmp_path, bare_env, variable, value, words):
    bare_env.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable) as refused:
        Settings(root=tmp_path)
    assert words in str(refused.value)


def test_a_secret_is_named_but_never_echoed(tmp_path, bare_env):
    bare_env.setenv("DATABASE_URL", "mysql://ann:hunter2@db/water")
    with pytest.raises(SettingsError, match="DATABASE_URL") as refused:
        Settings(root=tmp_path)
    assert "hunter2" not in str(refused.value)


def test_every_error_at_once(tmp_path, bare_env):
    """An operator fixes all bad values in one round, not one per restart."""
    bare_env.setenv("POTABILITY_MAX_BATCH", "0")
    bare_env.setenv("POTABILITY_THREADS", "two")
    with pytest.raises(SettingsError) as refused:
        Settings(root=tmp_path)
    assert "POTABILITY_MAX_BATCH" in str(refused.value) and "POTABILITY_THREADS" in str(
        refused.value
    )


def test_cli_and_server_refuse_to_start(tmp_path, pg_url, monkeypatch):
    """A bad value in `.env` stops a command (exit 2) and `potability serve` before any work."""
    import os

    env = {**os.environ, "POTABILITY_ROOT": str(tmp_path), "DATABASE_URL": pg_url}
    (tmp_path / ".env").write_text("POTABILITY_LOG_BATCH_ROWS=-3\n")
    for args in (["db", "migrate"], ["serve", "--port", "8599"]):
        result = run([sys.executable, "-m", "potability.cli", *args], tmp_path, env, check=False)
        assert result.returncode == 2, result.stderr
        assert "POTABILITY_LOG_BATCH_ROWS='-3': Input should be greater than 0" in result.stderr
        assert "Traceback" not in result.stderr
    from potability.serve import create_app

    monkeypatch.setenv("POTABILITY_ROOT", str(tmp_path))
    with pytest.raises(SettingsError, match="POTABILITY_LOG_BATCH_ROWS"):
        create_app()


# -- params.yaml: experiment numbers checked before any fit ---------------------------------
def _train_params() -> dict:
    from potability.config import load_params

    return load_params(REPO / "params.yaml")["train"]


def test_the_committed_train_params_pass():
    from potability.config import check_train_params
    from potability.pipeline.modeling import MODEL_KINDS

    check_train_params(_train_params(), MODEL_KINDS)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("confidence_level", 0.5),
        ("confidence_level", 1.0),
        ("confidence_level", 1.5),
        ("confidence_level", "high"),
        ("min_recall", 0.0),
        ("min_recall", 1.0),
        ("min_recall", -0.2),
        ("min_positives", 0),
        ("models", {}),
        ("models", {"gbm": {"n_estimators": [10]}}),
        ("models", {"rf": {"n_estimators": []}}),
    ],
)
def test_bad_train_params_are_refused_naming_the_parameter(key, value):
    from potability.config import ParamsError, check_train_params
    from potability.pipeline.modeling import MODEL_KINDS

    with pytest.raises(ParamsError, match=rf"train\.{key}"):
        check_train_params({**_train_params(), key: value}, MODEL_KINDS)


def test_the_train_stage_stops_at_once_on_a_bad_level(tmp_path):
    """Before reading a row or fitting anything: exit non-zero, the parameter named."""
    import os

    import yaml

    params = {"train": {**_train_params(), "confidence_level": 1.2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "potability.pipeline.stages.train",
        "--train",
        str(tmp_path / "none.csv"),
        "--out",
        str(tmp_path / "candidates"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    result = run(cmd, tmp_path, dict(os.environ), check=False, timeout=120)
    assert result.returncode != 0
    assert "train.confidence_level=1.2: must lie strictly between 0.5 and 1" in result.stderr
    assert not (tmp_path / "candidates").exists()


def test_a_grid_that_cannot_reach_the_floor_fails_training(tmp_path):
    from potability.config import ParamsError, Settings
    from potability.features import write_csv_atomic
    from potability.pipeline.stages.train import train
    from potability.synth import generate

    write_csv_atomic(generate(400, seed=3), tmp_path / "train.csv")
    params = {
        **_train_params(),
        "min_recall": 0.999,
        "confidence_level": 0.99,
        "models": {"nb": {}},
        "vote": {"members": 0},
        "n_jobs": 1,
    }
    unreachable = r"train\.models: no grid point .* train\.min_recall=0\.999"
    with pytest.raises(ParamsError, match=unreachable):
        train(tmp_path / "train.csv", tmp_path / "candidates", params, Settings(root=tmp_path))
    assert not (tmp_path / "candidates").exists()
