"""A trained detector as an MLflow pyfunc model: image bytes in, the probability of "fake" out.

The model answers a pandas DataFrame with one column ``INPUT_COLUMN`` (``image``) holding the bytes
of an image file each (JPEG, PNG, WebP, ... : whatever ``bnn.data.load_rgb`` reads); over HTTP
(``mlflow models serve``) those bytes are sent base64-encoded in a JSON ``dataframe_split`` or
``dataframe_records`` body, which MLflow's scoring server decodes because the signature types the
column as ``binary``. In-process a base64 ``str`` is accepted too. It answers a DataFrame with
``OUTPUT_PROBABILITY`` (``fake_probability``, float in [0, 1]) and ``OUTPUT_LABEL`` (``is_fake``:
probability >= the model's threshold, 0.5 as ``python -m bnn detect`` labels and ``test_accuracy``
counts), one row per input row in order. Paths are deliberately not accepted: a served model that
opened paths named by its HTTP clients would read the server's files for anyone. An unreadable image
fails the whole request with one line naming its row (HTTP 400).

Each image goes through exactly what ``detect`` runs: ``load_rgb`` (the one image decoder; the bytes
are written to a temporary file first), the evaluation transform at the detector's resolution, then
the detector. Two engines, chosen by what the model's folder (artifact ``DETECTOR_ARTIFACT``) holds:

* ``torch``: ``best.pt``, read by ``bnn.checkpoint.load_detector`` (``torch.load(weights_only=True)``
  with ``bnn.safe_load``'s allow-list, never a pickle that runs code), in its inference form
  (``bnn.inference.for_inference``; CUDA when available, as ``detect --device auto``);
* ``openvino``: the export of ``bnn.export`` (``model.xml``/``.bin``, 1-bit ``BinaryConvolution``),
  run by ``OpenVINODetector`` on the CPU; batches are padded to one size as in ``detect``.

``SETTINGS_FILE`` in the folder names the engine and the threshold. The pyfunc is logged as MLflow
"models from code": the logged model holds ``MODEL_CODE`` (three readable lines that import this
module), not a pickle, so loading it runs this installed package's code only. It therefore needs
the ``bnn`` package installed where it is served (``mlflow models serve --env-manager local`` in
the project's environment). MLflow is imported only inside ``pyfunc_model`` (``studies.record``
switches MLflow's telemetry off before MLflow is first imported in a study process).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bnn.checkpoint import load_detector, saved_val_threshold
from bnn.data import UnreadableImage, build_transform, load_rgb
from bnn.export import OpenVINODetector, export_openvino
from bnn.inference import for_inference

__all__ = [
    "DETECTOR_ARTIFACT",
    "ENGINES",
    "INPUT_COLUMN",
    "MODEL_CODE",
    "OUTPUT_LABEL",
    "OUTPUT_PROBABILITY",
    "ServedDetector",
    "example_image",
    "prepare_folder",
    "pyfunc_model",
]

INPUT_COLUMN = "image"
OUTPUT_PROBABILITY = "fake_probability"
OUTPUT_LABEL = "is_fake"
ENGINES = ("torch", "openvino")
DETECTOR_ARTIFACT = "detector"  # the pyfunc's one artifact: a folder (see the module docstring)
SETTINGS_FILE = "serving.json"
CHECKPOINT_FILE = "best.pt"
DEFAULT_THRESHOLD = 0.5  # the label of `detect` and the threshold of test_accuracy
BATCH_SIZE = 32
# The logged model's code (MLflow models from code): MLflow runs it to build the pyfunc.
MODEL_CODE = "from mlflow.models import set_model\n\nfrom bnn.serving import pyfunc_model\n\nset_model(pyfunc_model())\n"


def prepare_folder(checkpoint: str | os.PathLike, out: str | os.PathLike, engine: str = "torch") -> Path:
    """Writes the model folder of ``engine`` for a ``best.pt`` into ``out`` (created).

    ``torch``: a copy of the checkpoint; ``openvino``: its export at the training resolution. Both
    get ``SETTINGS_FILE`` (engine, threshold, the resolution and, when stored, the validation EER
    threshold for reference).

    Raises:
        ValueError: An unknown engine, or the checkpoint as ``bnn.checkpoint.load_detector``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    detector, config = load_detector(checkpoint, device="cpu")  # checks the file before it is copied
    if engine == "torch":
        shutil.copyfile(checkpoint, out / CHECKPOINT_FILE)
    else:
        export_openvino(detector, out, (config.resolution, config.resolution))
    settings = {"engine": engine, "threshold": DEFAULT_THRESHOLD, "resolution": config.resolution,
                "backbone": config.backbone, "features": config.features,
                "val_eer_threshold": saved_val_threshold(checkpoint)}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    return out


def example_image(size: int = 16) -> bytes:
    """A small PNG (a colour gradient) for the logged model's input example."""
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                       np.full((size, size), 128, np.uint8)], axis=-1)  # (H, W, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _image_bytes(value: Any, row: int) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"row {row}: column '{INPUT_COLUMN}' is a string but not base64 image bytes "
                             "(paths are not accepted)") from None
    raise ValueError(f"row {row}: column '{INPUT_COLUMN}' holds a {type(value).__name__}, not image bytes")


class ServedDetector:
    """The detector of a model folder (``prepare_folder``) with its preprocessing.

    Args:
        folder: The folder.
        device: For the torch engine (``auto``: CUDA when available); OpenVINO runs on the CPU.
    """

    def __init__(self, folder: str | os.PathLike, device: str = "auto") -> None:
        folder = Path(folder)
        self.settings = json.loads((folder / SETTINGS_FILE).read_text())
        self.engine = self.settings["engine"]
        self.threshold = float(self.settings["threshold"])
        if self.engine == "openvino":
            self.model = OpenVINODetector(folder)
            self.device = torch.device("cpu")
            resolution = self.model.input_size[0]
        else:
            model, config = load_detector(folder / CHECKPOINT_FILE, device)
            self.model = for_inference(model)
            self.device = next(self.model.parameters()).device
            resolution = config.resolution
        self.transform = build_transform(resolution, train=False)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``INPUT_COLUMN`` rows -> ``OUTPUT_PROBABILITY``, ``OUTPUT_LABEL`` (see the module docstring).

        Raises:
            ValueError: No ``INPUT_COLUMN``, a value that is not image bytes, or an unreadable image
                (the message names the row).
        """
        if INPUT_COLUMN not in frame.columns:
            raise ValueError(f"the input needs a column '{INPUT_COLUMN}' of image bytes (base64 in JSON); "
                             f"got columns {list(frame.columns)}")
        values = [_image_bytes(v, i) for i, v in enumerate(frame[INPUT_COLUMN].tolist())]
        probabilities: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            for start in range(0, len(values), BATCH_SIZE):
                images = []
                for row, data in enumerate(values[start:start + BATCH_SIZE], start):
                    path = Path(tmp) / f"row-{row}"
                    path.write_bytes(data)
                    try:
                        images.append(self.transform(load_rgb(path)))
                    except UnreadableImage as err:
                        raise ValueError(f"row {row}: unreadable image: {err.reason}") from None
                    path.unlink()
                pad = min(BATCH_SIZE, len(values)) if self.engine == "openvino" else 0  # one compilation
                batch = torch.stack(images + images[-1:] * (pad - len(images)))
                with torch.no_grad():
                    probabilities += self.model.predict_proba(batch.to(self.device)).tolist()[: len(images)]
        probability = np.asarray(probabilities, dtype=np.float64)
        return pd.DataFrame({OUTPUT_PROBABILITY: probability, OUTPUT_LABEL: probability >= self.threshold})


def pyfunc_model():
    """The ``mlflow.pyfunc.PythonModel`` that ``MODEL_CODE`` hands to MLflow: ``load_context`` builds
    a ``ServedDetector`` from the artifact ``DETECTOR_ARTIFACT``; ``predict`` answers a bad input
    with an ``MlflowException`` of INVALID_PARAMETER_VALUE (HTTP 400 from the scoring server)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import PythonModel

    class DetectorPyfunc(PythonModel):
        def load_context(self, context):
            self.detector = ServedDetector(context.artifacts[DETECTOR_ARTIFACT])

        # A DataFrame hint: MLflow infers no schema from it (the logged signature validates) and
        # does not warn about a missing hint.
        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            try:
                return self.detector.predict(frame)
            except ValueError as err:
                raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None

    return DetectorPyfunc()
