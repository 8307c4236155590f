"""The registered champion as an MLflow pyfunc: the served ONNX file answering like the server.

MLflow logs this file as *code* ("models from code"), so loading the champion
never unpickles anything. It imports nothing from this project: whoever loads
``models:/water-potability@champion`` (``mlflow models serve``, a notebook)
needs only numpy, pandas and onnxruntime. ``predict`` takes a frame with the
nine features by the data set's names (missing column or NaN = missing) and
returns ``probability`` and ``potable`` at the promoted threshold, with the same
float32 input and the same ONNX Runtime settings as ``potability.artifacts.OnnxModel``.

Before anything is read, every file the model was logged with is checked
against its ``manifest.json`` (the sha256 of each, as ``potability.artifacts``
writes it): a threshold changed in ``meta.json`` would turn every answer
"potable" without touching the ONNX file, so a changed, missing or unlisted
file, or no manifest at all, refuses the load with the file named. The
registry's ``manifest_sha256`` tag is beyond the pyfunc's reach (it sees only
its files): a manifest rewritten to match is refused by our servers and by
``potability deploy``, not here.
"""

from __future__ import annotations

import hashlib
import json
import os

import mlflow
import numpy as np
import pandas as pd

MANIFEST = "manifest.json"
READ = ("model", "meta", "history")  # the artifacts the model is logged with, each in the manifest


class RefusedArtifact(Exception):
    """A file of the logged model does not match its manifest (or there is none): not loaded."""


def check_manifest(files: dict[str, str]) -> None:
    """Refuse unless each logged artifact's sha256 is the one ``manifest.json`` lists for its name."""
    manifest = files.get("manifest")
    if manifest is None or not os.path.exists(manifest):
        raise RefusedArtifact(
            f"{manifest or MANIFEST}: missing; a model logged without a manifest is not "
            "loaded (deploy the model again)"
        )
    try:
        with open(manifest, "rb") as fh:
            listed = json.load(fh)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RefusedArtifact(f"{manifest}: not a manifest ({exc!r})") from None
    if not isinstance(listed, dict):
        raise RefusedArtifact(f"{manifest}: not a manifest (its files are not by name)")
    for key in READ:
        if key not in files:
            raise RefusedArtifact(f"{manifest}: the model was logged without its {key!r} file")
        path = files[key]
        name = os.path.basename(path)
        if name not in listed:
            raise RefusedArtifact(f"{path}: not listed in {MANIFEST}")
        try:
            with open(path, "rb") as fh:
                actual = hashlib.sha256(fh.read()).hexdigest()
        except FileNotFoundError:
            raise RefusedArtifact(f"{path}: missing (listed in {MANIFEST})") from None
        if actual != listed[name]:
            raise RefusedArtifact(
                f"{path}: sha256 {actual[:12]}… differs from {MANIFEST}'s "
                f"{str(listed[name])[:12]}… (changed after the model was promoted)"
            )


class PotabilityModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import onnxruntime as ort

        check_manifest(context.artifacts)
        with open(context.artifacts["meta"], encoding="utf-8") as fh:
            self.meta = json.load(fh)
        self.features = list(self.meta["features"])
        self.threshold = float(self.meta["threshold"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            context.artifacts["model"], options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = next((o for o in outputs if "prob" in o), outputs[-1])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input).reindex(columns=self.features)
        X = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        result = self.session.run([self.output_name], {self.input_name: X})[0]
        probability = np.asarray(result, dtype=np.float64)[:, 1]
        return pd.DataFrame({"probability": probability, "potable": probability >= self.threshold})


mlflow.models.set_model(PotabilityModel())
