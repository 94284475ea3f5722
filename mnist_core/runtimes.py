"""The model files of a run folder, what each one takes and gives, and loading any of them for inference.

Every format takes the same input: uint8 images N x 28 x 28 in MNIST form (white ink on black, 0-255) and gives
float32 logits N x 10; normalization is inside the model. This module imports torch only to load `.safetensors`
or `.pt2` files, so predicting with an `.onnx` model runs on ONNX Runtime alone.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mnist_core.errors import DataError
from mnist_core.idx import IMAGE_SIDE, NUM_CLASSES
from mnist_core.records import ModelFile, TensorSpec

if TYPE_CHECKING:  # only to load .pt2 and .safetensors files: ONNX predictions never import torch
    import torch

RuntimeName = Literal["onnx", "torch-export", "pytorch"]
CARD_FILE = "model_card.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
EXPORTED_PROGRAM_FILE = "model.pt2"
RUNTIME_FILES: dict[RuntimeName, str] = {
    "onnx": ONNX_FILE,
    "torch-export": EXPORTED_PROGRAM_FILE,
    "pytorch": WEIGHTS_FILE,
}

IMAGES = TensorSpec(
    name="images",
    dtype="uint8",
    shape=["batch", IMAGE_SIDE, IMAGE_SIDE],
    values="0-255, MNIST form: white ink on black, the digit scaled to 20 px and centred by mass",
)
LOGITS = TensorSpec(
    name="logits", dtype="float32", shape=["batch", NUM_CLASSES], values="unnormalized; softmax gives probabilities"
)
WEIGHTS_IMAGES = IMAGES.model_copy(
    update={
        "dtype": "uint8 or float32",
        "values": "uint8 0-255 or float 0-1, MNIST form; also accepts batch x 784 and batch x 1 x 28 x 28",
    }
)
FORMATS: dict[str, tuple[str, str, TensorSpec]] = {
    WEIGHTS_FILE: ("safetensors", "mnist_core.model.load_weights, then model(images)", WEIGHTS_IMAGES),
    ONNX_FILE: ("onnx", "onnxruntime.InferenceSession(path).run(None, {'images': images})", IMAGES),
    EXPORTED_PROGRAM_FILE: ("torch.export", "torch.export.load(path).module()(images)", IMAGES),
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_model_files(run_dir: Path) -> dict[str, ModelFile]:
    """The model card's entry for each model file in `run_dir`: format, how to load it, contract, SHA-256."""
    return {
        name: ModelFile(format=kind, load_with=how, sha256=file_sha256(run_dir / name), input=images, output=LOGITS)
        for name, (kind, how, images) in FORMATS.items()
        if (run_dir / name).is_file()
    }


@dataclass(frozen=True)
class Predictor:
    """A loaded model: `logits(images)` maps uint8 N x 28 x 28 to float32 N x 10 with whichever runtime loaded it."""

    path: Path
    runtime: RuntimeName
    sha256: str
    _run: Callable[[np.ndarray], np.ndarray]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(np.ascontiguousarray(images, dtype=np.uint8))


def runtime_of(path: Path) -> RuntimeName:
    for runtime, name in RUNTIME_FILES.items():
        if Path(path).suffix == Path(name).suffix:
            return runtime
    raise DataError(f"{path}: not a model file (expected .onnx, .pt2 or .safetensors)")


def load_predictor(path: Path) -> Predictor:
    """Load a model file for inference; DataError naming the file if it is missing or not a model."""
    path = Path(path)
    runtime = runtime_of(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    loaders = {"onnx": _onnx, "torch-export": _exported_program, "pytorch": _weights}
    try:
        run = loaders[runtime](path)
    except (DataError, PermissionError):
        raise
    except Exception as error:  # each runtime raises its own types for a file that is not its format
        problem = f"{type(error).__name__}: {error}"
        raise DataError(f"{path}: not a {runtime} model this project can use ({problem})") from error
    return Predictor(path=path, runtime=runtime, sha256=file_sha256(path), _run=run)


Runner = Callable[[np.ndarray], np.ndarray]


def _onnx(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the runtime's warnings are not the user's business
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or list(inputs[0].shape[1:]) != IMAGES.shape[1:]:
        found = [(item.name, item.type, item.shape) for item in inputs]
        raise DataError(f"{path}: the model's input is {found}, expected one uint8 tensor of shape N x 28 x 28")
    if list(outputs[0].shape[1:]) != [NUM_CLASSES]:
        raise DataError(f"{path}: the model gives shape {outputs[0].shape}, expected N x {NUM_CLASSES}")
    name = inputs[0].name
    return lambda images: session.run(None, {name: images})[0]


def _torch_runner(module: "torch.nn.Module") -> Runner:
    import torch

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(images)).float().numpy()

    return run


def _exported_program(path: Path) -> Runner:
    # torch.export.load unpickles parts of the archive (torch.load(weights_only=False), pickle.loads): loading a
    # .pt2 runs whatever it holds. Only a file its run's model card vouches for (same SHA-256) is loaded.
    card = path.parent / CARD_FILE
    try:
        vouched = json.loads(card.read_text(encoding="utf-8"))["model_files"][path.name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        vouched = None
    if vouched is None or vouched != file_sha256(path):
        raise DataError(
            f"{path}: refused: a .pt2 file can run code when loaded, and no model card of this project ({card}) "
            "vouches for this one's SHA-256; use model.onnx or model.safetensors, which load without running code"
        )
    import torch

    return _torch_runner(torch.export.load(str(path)).module())


def _weights(path: Path) -> Runner:
    from mnist_core.model import load_weights

    return _torch_runner(load_weights(path).eval())
