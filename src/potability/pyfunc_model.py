"""The registered champion as an MLflow pyfunc: the served ONNX file answering like the server.

MLflow logs this file as *code* ("models from code"), so loading the champion
never unpickles anything. It imports nothing from this project: whoever loads
``models:/water-potability@champion`` (``mlflow models serve``, a notebook)
needs only numpy, pandas and onnxruntime. ``predict`` takes a frame with the
nine features by the data set's names (missing column or NaN = missing) and
returns ``probability`` and ``potable`` at the promoted threshold, with the same
float32 input and the same ONNX Runtime settings as ``potability.artifacts.OnnxModel``.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd


class PotabilityModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import onnxruntime as ort

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
