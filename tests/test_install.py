"""The server needs only `potability[serve]`: answering sensors never imports training code.

pyproject's `serve` extra leaves out scikit-learn, SciPy, DVC, Prefect, Dask,
pgserver, pyarrow and matplotlib (the page's charts are written as SVG by hand; bench/install.py measures what that saves). This holds
only while the server's code paths need none of them. The test makes them
uninstalled for a fresh interpreter (any import of them fails, as on a
server-only host; libraries that merely try them, as pandas tries pyarrow, go
on without) and has it start the app, load the champion, answer a sample and
render the quality page and the metrics.
"""

import json
import sys

from tests.support.project import REPO, project_env, run

TRAINING_MODULES = (
    "sklearn",
    "scipy",
    "dvc",
    "prefect",
    "dask",
    "distributed",
    "skl2onnx",
    "skops",
    "pgserver",
    "pyarrow",
    "onnx",
    "matplotlib",
)

SERVER_SESSION = """
import importlib.abc, json, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in sys.argv[1:]:
            raise ModuleNotFoundError(f"No module named {name!r} (not in potability[serve])")

sys.meta_path.insert(0, NotInstalled())
from potability.serve import create_app, shutdown
from potability.mart import WaterMart

app = create_app()
token = WaterMart().create_token("install-probe", "sensor")
client = app.test_client()
sample = {"ph": 7.1, "Hardness": 204.9, "Solids": 20791, "Chloramines": 7.3, "Sulfate": 368.5,
          "Conductivity": 564.3, "Organic_carbon": 10.4, "Trihalomethanes": 86.9, "Turbidity": 2.96}
statuses = [client.get("/readyz").status_code,
            client.post("/v1/predict", json=sample, headers={"Authorization": f"Bearer {token}"}).status_code,
            client.get("/").status_code, client.get("/metrics").status_code]
shutdown(app)
print(json.dumps(statuses))
"""


def test_serving_imports_no_training_code(clean_db, champion, tmp_path):
    env = {
        **project_env(REPO, clean_db),
        "POTABILITY_REGISTERED_MODEL": champion.name,
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "POTABILITY_MODEL_CACHE": str(tmp_path / "cache"),
        "POTABILITY_SPOOL_DIR": str(tmp_path / "spool"),
    }
    out = run([sys.executable, "-c", SERVER_SESSION, *TRAINING_MODULES], REPO, env).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [200, 200, 200, 200]
