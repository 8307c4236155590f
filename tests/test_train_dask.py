"""Grid search fans out to a real Dask cluster when DASK_SCHEDULER_ADDRESS is set."""

import pytest

from potability.config import Settings, load_params
from potability.features import write_csv_atomic
from potability.pipeline.stages.train import train
from potability.synth import generate
from tests.support.project import REPO

pytestmark = pytest.mark.slow


def test_grid_search_runs_on_a_local_dask_cluster(pg_url, tmp_path, monkeypatch):
    from distributed import LocalCluster

    params = load_params(REPO / "params.yaml")["train"]
    params = {
        **params,
        "cv_folds": 3,
        "cv_repeats": 1,
        "vote": {"members": 0},
        "models": {"dt": {"max_depth": [1, 6], "min_samples_leaf": [5]}},
    }
    train_csv = tmp_path / "train.csv"
    write_csv_atomic(generate(600, seed=8), train_csv)
    from distributed.diagnostics.plugin import SchedulerPlugin

    class CountFinished(SchedulerPlugin):
        finished = 0

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory":
                CountFinished.finished += 1

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
    ) as cluster:
        cluster.scheduler.add_plugin(CountFinished())
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        monkeypatch.setenv("POTABILITY_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
        infos = train(train_csv, tmp_path / "candidates", params, Settings(root=tmp_path))
    # 2 grid points x 3 folds, plus the final fit: all computed by the cluster
    assert CountFinished.finished >= 7, "the Dask scheduler finished no grid-search tasks"
    info = infos["dt"]
    # both grid points were scored out of fold, and the choice is the better of the two
    graded = {g["max_depth"]: g["oof_precision"] for g in info["grid_results"]}
    assert set(graded) == {1, 6}
    assert info["best_params"]["max_depth"] == max(graded, key=graded.get)
    assert info["metrics"]["oof_precision"] == graded[info["best_params"]["max_depth"]]
    assert (tmp_path / "candidates" / "dt" / "model.skops").exists()
