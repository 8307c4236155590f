"""Owns model artifacts: candidates on disk, the ONNX export, and model directories.

A *model directory* (``model.onnx`` + ``meta.json`` + ``history.json``, and
``manifest.json``: the sha256 of each) is what the promote stage writes to
``models/promoted/``, what ``potability deploy`` registers in MLflow (the
manifest's own sha256 becomes the version's ``manifest_sha256`` tag), and what
each server caches locally. Every load checks the manifest: ``meta.json``'s
threshold decides "potable" as surely as the ONNX file does, and
``history.json`` is shown to the public. The server only ever
loads ONNX (never a pickle). Candidates between DVC stages are stored with
skops; a candidate is loaded only when every type its file names is one the
model zoo produces (``CANDIDATE_TYPES``), since whoever can write the DVC
cache or remote chooses those types, and trusting a type is running its code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from potability.schema import FEATURE_NAMES

MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
HISTORY_FILE = "history.json"
CHAMPION_FILE = "champion.json"  # the champion stage's record of which version it wrote
MANIFEST_FILE = "manifest.json"
# what a server or its page reads from a model directory: each is hashed in the manifest
SERVED_FILES = (MODEL_FILE, META_FILE, HISTORY_FILE)
CANDIDATE_FILE = "model.skops"
ONNX_INPUT = "input"


class ArtifactError(Exception):
    """A model artifact is missing, corrupt or does not match its meta.json."""


class UnsealedVersion(ArtifactError):
    """A registered version has no manifest tag (registered before manifests): nothing vouches for its files."""


# -- candidates (pipeline-internal) ------------------------------------------
# Every type a candidate of the zoo (pipeline/modeling.py: each kind and the soft vote) holds, as
# skops names it; tests/test_modeling.py saves and loads each kind, so a new estimator or a
# scikit-learn that moves a class fails there, not in `dvc repro`.
CANDIDATE_TYPES = frozenset(
    {
        "builtins.dict",
        "builtins.list",
        "builtins.str",
        "builtins.tuple",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.ndarray",
        "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.discriminant_analysis.QuadraticDiscriminantAnalysis",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._voting.VotingClassifier",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.naive_bayes.GaussianNB",
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.svm._classes.SVC",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.tree._tree.Tree",
    }
)


def save_candidate(model: Any, directory: Path) -> Path:
    import skops.io as sio

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CANDIDATE_FILE
    sio.dump(model, path)
    return path


def candidate_types(path: Path) -> set[str]:
    """Every type and function a skops file names (its schema), and those skops itself distrusts."""
    import skops.io as sio

    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a skops file ({exc})") from exc
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found | set(sio.get_untrusted_types(file=path))


def load_candidate(directory: Path) -> Any:
    """Load a candidate only if every type in its file is one the zoo produces (``CANDIDATE_TYPES``).

    skops would otherwise construct whatever the file names, which is as unsafe
    as unpickling a file from a shared DVC remote on a host with database
    credentials.

    Raises:
        ArtifactError: no candidate, not a skops file, or a type outside the list (named).
    """
    import skops.io as sio

    path = directory / CANDIDATE_FILE
    if not path.exists():
        raise ArtifactError(f"{path}: no candidate model; run the train stage first")
    foreign = sorted(candidate_types(path) - CANDIDATE_TYPES)
    if foreign:
        raise ArtifactError(
            f"{path}: refusing to load types the model zoo never produces: {', '.join(foreign)} "
            "(a candidate from elsewhere; retrain with `dvc repro`)"
        )
    return sio.load(path, trusted=sorted(CANDIDATE_TYPES))


# -- ONNX -----------------------------------------------------------------------
def onnx_options(model: Any) -> dict[int, dict[str, Any]]:
    """skl2onnx's options for ``model``: probabilities as a plain tensor; a k-NN's distances in one op.

    By default skl2onnx computes a k-NN's distances in a ``Scan`` loop, one step per training
    row: 3.4 ms of the vote's 3.5 ms for one answer here. ``optim: cdist`` makes them one
    ``CDist`` (ONNX Runtime's ``com.microsoft`` domain): 0.09 ms, the same probabilities.
    """
    from sklearn.neighbors import KNeighborsClassifier

    options: dict[int, dict[str, Any]] = {id(model.steps[-1][1]): {"zipmap": False}}
    for part in (model, *model.get_params(deep=True).values()):
        if isinstance(part, KNeighborsClassifier):
            options.setdefault(id(part), {})["optim"] = "cdist"
    return options


def to_onnx(model: Any, options: dict[int, dict[str, Any]] | None = None) -> bytes:
    """Export a fitted pipeline to ONNX: float32 input [N, 9], probabilities [N, 2].

    ``options`` are skl2onnx's per-estimator options, ``onnx_options(model)`` unless given
    (``bench/onnx_export.py`` passes skl2onnx's defaults to time them against ours).
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        # skl2onnx reads SVC.probA_/probB_, deprecated in scikit-learn 1.9; not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        onnx_model = convert_sklearn(
            model,
            initial_types=[(ONNX_INPUT, FloatTensorType([None, len(FEATURE_NAMES)]))],
            options=onnx_options(model) if options is None else options,
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    return onnx_model.SerializeToString()


class OnnxModel:
    """An ONNX Runtime session that answers potable probabilities."""

    def __init__(self, blob: bytes):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one request is tiny; workers give the parallelism
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"ONNX Runtime cannot load the model: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = next((o for o in outputs if "prob" in o), outputs[-1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of "potable" for each row (float64 out, NaN in = missing)."""
        result = self._session.run([self._output], {self._input: np.asarray(X, dtype=np.float32)})[
            0
        ]
        return np.asarray(result, dtype=np.float64)[:, 1]


def parity_gap(model: Any, onnx_blob: bytes, X: np.ndarray) -> float:
    """Largest |ONNX - sklearn| probability on ``X`` (both fed the same float32 values)."""
    X32 = np.asarray(X, dtype=np.float32)
    expected = model.predict_proba(X32.astype(np.float64))[:, 1]
    got = OnnxModel(onnx_blob).predict_proba(X32)
    return float(np.max(np.abs(expected - got))) if len(X32) else 0.0


# -- model directories ----------------------------------------------------------
def sha256_bytes(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class ServedModel:
    """A checked ONNX model with its meta.json: what a server answers with."""

    model: OnnxModel
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def manifest_of(files: dict[str, bytes]) -> dict[str, Any]:
    """The manifest of a model directory's files: the sha256 of each, by name."""
    return {"files": {name: sha256_bytes(blob) for name, blob in sorted(files.items())}}


def check_manifest(directory: Path) -> str:
    """Check every served file against ``manifest.json``; return the manifest's own sha256.

    Raises:
        ArtifactError: no manifest, a served file it does not list, or one whose hash differs.
    """
    path = directory / MANIFEST_FILE
    try:
        raw = path.read_bytes()
        listed = json.loads(raw)["files"]
    except FileNotFoundError:
        raise ArtifactError(
            f"{path}: missing; a model directory without a manifest is not served "
            "(rerun the promote stage, or deploy the version again)"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a manifest ({exc})") from exc
    unlisted = [name for name in SERVED_FILES if name not in listed]
    if unlisted:
        raise ArtifactError(f"{path}: no sha256 for {', '.join(unlisted)}")
    for name, expected in listed.items():
        try:
            actual = sha256_bytes((directory / name).read_bytes())
        except FileNotFoundError:
            raise ArtifactError(
                f"{directory / name}: missing (listed in {MANIFEST_FILE})"
            ) from None
        if actual != expected:
            raise ArtifactError(
                f"{directory / name}: sha256 {actual[:12]}… differs from {MANIFEST_FILE}'s "
                f"{str(expected)[:12]}… (changed after the model was promoted)"
            )
    return sha256_bytes(raw)


def load_model_dir(directory: Path) -> ServedModel:
    """Load and fully check a model directory; raise ArtifactError if anything is off.

    The manifest first (every served file unchanged), then ``meta.json``
    against the ONNX file, the features, the threshold and a probe. The
    returned meta carries ``manifest_sha256``, for the registry tag to be checked against.
    """
    meta_path, model_path = directory / META_FILE, directory / MODEL_FILE
    if not meta_path.exists() or not model_path.exists():
        missing = meta_path if not meta_path.exists() else model_path
        raise ArtifactError(f"{missing}: missing; no promoted model here (run `dvc repro`)")
    manifest_sha256 = check_manifest(directory)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        blob = model_path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"{exc.filename}: missing; no promoted model here (run `dvc repro`)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_path}: not valid JSON ({exc})") from exc
    for key in ("version", "threshold", "sha256", "features"):
        if key not in meta:
            raise ArtifactError(f"{meta_path}: missing key {key!r}")
    actual = sha256_bytes(blob)
    if actual != meta["sha256"]:
        raise ArtifactError(
            f"{model_path}: sha256 {actual[:12]}… does not match meta.json's {str(meta['sha256'])[:12]}…"
        )
    if list(meta["features"]) != list(FEATURE_NAMES):
        raise ArtifactError(
            f"{meta_path}: features {meta['features']} differ from {list(FEATURE_NAMES)}"
        )
    threshold = meta["threshold"]
    if not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise ArtifactError(f"{meta_path}: threshold {threshold!r} is not a probability")
    model = OnnxModel(blob)
    probe = np.full((2, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    probe[:, 0] = 7.0  # a neutral pH; everything else missing, as sensors may send
    out = model.predict_proba(probe)
    if out.shape != (2,) or not np.all(np.isfinite(out)):
        raise ArtifactError(f"{model_path}: the model answers {out!r} on a probe sample")
    return ServedModel(model, {**meta, "manifest_sha256": manifest_sha256})


def write_model_dir(
    directory: Path, onnx_blob: bytes, meta: dict[str, Any], extra: dict[str, Any]
) -> None:
    """Replace ``directory`` with a new model, meta, extra JSON files and their manifest, as one swap.

    Everything is written and fsynced in a sibling temp dir first; readers
    verify the manifest so a reader racing the swap sees the old or the new
    model, never a mix.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    meta = {
        k: v for k, v in meta.items() if k != "manifest_sha256"
    }  # a loaded meta's, not a file's
    files = {MODEL_FILE: onnx_blob, META_FILE: _json_bytes(meta)}
    files.update({name: _json_bytes(value) for name, value in extra.items()})
    files[MANIFEST_FILE] = _json_bytes(manifest_of(files))
    for name, blob in files.items():
        with open(staging / name, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    os.chmod(staging, 0o755)
    retired = directory.with_name(f".{directory.name}-retired")
    shutil.rmtree(retired, ignore_errors=True)
    if directory.exists():
        os.rename(directory, retired)
    os.rename(staging, directory)
    shutil.rmtree(retired, ignore_errors=True)


def read_history(directory: Path) -> list[dict[str, Any]]:
    """Every promotion decision recorded in a model directory (empty when there is none yet)."""
    path = directory / HISTORY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def package_candidate(
    candidate_dir: Path, X_test: np.ndarray, meta: dict[str, Any]
) -> tuple[bytes, dict[str, Any], float]:
    """Export a candidate to ONNX; return (onnx bytes, ``meta`` completed with version and sha256, parity gap).

    The gap is the largest |ONNX - scikit-learn| probability on ``X_test``:
    the served model must answer like the one that was evaluated.
    """
    from datetime import UTC, datetime

    model = load_candidate(candidate_dir)
    blob = to_onnx(model)
    sha = sha256_bytes(blob)
    version = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{meta['kind']}-{sha[:8]}"
    complete = {**meta, "version": version, "sha256": sha, "features": list(FEATURE_NAMES)}
    return blob, complete, parity_gap(model, blob, X_test)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one rename, from a temporary file of this writer's own.

    Several processes write one file at once: every gunicorn worker, the page renderer and the
    page listener record the champion they loaded in the model cache as the server starts. With
    one shared temporary name, one process's rename took the file from under another's and that
    worker failed to boot, taking the server down (seen at 10 M rows, ``bench/scale.py``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # as an ordinary file would be, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    write_bytes_atomic(path, _json_bytes(value))


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
