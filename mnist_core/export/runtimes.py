"""The model files of a run folder, what each one takes and gives, and loading any of them for inference.

Every format takes the same input: uint8 images N x 28 x 28 in MNIST form (white ink on black, 0-255) and gives
float32 logits N x 10; normalization is inside the model. This module imports torch only to load `.safetensors`
or `.pt2` files, so predicting with an `.onnx` model runs on ONNX Runtime alone.
"""

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mnist_core.data.idx import IMAGE_SIDE, NUM_CLASSES
from mnist_core.errors import DataError
from mnist_core.layout import EXPORTED_PROGRAM_FILE, ONNX_FILE, WEIGHTS_FILE
from mnist_core.records import ModelFile, TensorSpec, read_card
from mnist_core.stamps import file_sha256

if TYPE_CHECKING:  # only to load .pt2 and .safetensors files: ONNX predictions never import torch
    import torch

RuntimeName = Literal["onnx", "torch-export", "pytorch"]
RUNTIME_NAMES: dict[RuntimeName, str] = {"onnx": "an ONNX", "torch-export": "a torch.export", "pytorch": "a PyTorch"}
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
    name="logits",
    dtype="float32",
    shape=["batch", NUM_CLASSES],
    values="unnormalized; softmax(logits / T), T the model card's temperature, gives calibrated probabilities",
)
WEIGHTS_IMAGES = IMAGES.model_copy(
    update={
        "dtype": "uint8 or float32",
        "values": "uint8 0-255 or float 0-1, MNIST form; also accepts batch x 784 and batch x 1 x 28 x 28",
    }
)
FORMATS: dict[str, tuple[str, str, TensorSpec]] = {
    WEIGHTS_FILE: ("safetensors", "mnist_core.training.model.load_weights, then model(images)", WEIGHTS_IMAGES),
    ONNX_FILE: ("onnx", "onnxruntime.InferenceSession(path).run(None, {'images': images})", IMAGES),
    EXPORTED_PROGRAM_FILE: ("torch.export", "torch.export.load(path).module()(images)", IMAGES),
}


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


def load_predictor(path: Path, trust_pt2: bool = False, onnx_threads: int | None = None) -> Predictor:
    """Load a model file for inference; DataError naming the file if it is missing, not a model, or not the file
    its run's model card describes. The bytes are read once: the SHA-256 reported is that of what was loaded.

    A `.pt2` file is loaded only with `trust_pt2`: `torch.export.load` unpickles parts of the archive, so loading
    one runs whatever code it holds, and nothing beside the file (a model card in the same folder can be written
    by the same hand) can vouch for it. ONNX and safetensors files load without running code.

    `onnx_threads`: ONNX Runtime's threads for one call, without spinning between calls (a server answering small
    requests concurrently: idle threads spinning on a shared machine steal the cores the requests need); None:
    the runtime's default, all cores (a batch of thousands of images)."""
    path = Path(path)
    runtime = runtime_of(path)
    if runtime == "torch-export" and not trust_pt2:
        raise DataError(
            f"{path}: refused: loading a .pt2 file runs code from it (torch.export.load unpickles). Use model.onnx "
            "or model.safetensors from the same run folder, or pass --trust-pt2 for a file you made yourself"
        )
    try:
        content = path.read_bytes()
    except FileNotFoundError as error:
        raise DataError(f"{path}: model file not found") from error
    except IsADirectoryError as error:
        raise DataError(f"{path}: is a folder, not a model file") from error
    sha256 = hashlib.sha256(content).hexdigest()
    _check_against_card(path, sha256)
    loaders = {"onnx": partial(_onnx, threads=onnx_threads), "torch-export": _exported_program, "pytorch": _weights}
    try:
        run = loaders[runtime](content)
    except DataError as error:
        raise DataError(f"{path}: {error}") from error
    except Exception as error:  # each runtime raises its own types for a file that is not its format
        problem = f"{type(error).__name__}: {error}"
        raise DataError(f"{path}: not {RUNTIME_NAMES[runtime]} model this project can use ({problem})") from error
    return Predictor(path=path, runtime=runtime, sha256=sha256, _run=run)


def _check_against_card(path: Path, sha256: str) -> None:
    """A model file in a run folder must be the one its model card describes: a run id printed beside another
    file's predictions would be a lie."""
    try:
        recorded = read_card(path.parent).model_files[path.name].sha256
    except (OSError, ValueError, KeyError):
        return  # a model file outside a run folder (or from before the card listed its files)
    if recorded != sha256:
        raise DataError(
            f"{path}: its SHA-256 is {sha256[:16]}…, but the run's model card records {recorded[:16]}…: the file was "
            "changed after the run exported it; refusing to predict with it in that run's name"
        )


Runner = Callable[[np.ndarray], np.ndarray]


def _onnx(content: bytes, threads: int | None = None) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the runtime's warnings are not the user's business
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or list(inputs[0].shape[1:]) != IMAGES.shape[1:]:
        found = [(item.name, item.type, item.shape) for item in inputs]
        raise DataError(f"the model's input is {found}, expected one uint8 tensor of shape N x 28 x 28")
    if list(outputs[0].shape[1:]) != [NUM_CLASSES]:
        raise DataError(f"the model gives shape {outputs[0].shape}, expected N x {NUM_CLASSES}")
    name = inputs[0].name
    return lambda images: session.run(None, {name: images})[0]


def _torch_runner(module: "torch.nn.Module") -> Runner:
    import torch

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(images)).float().numpy()

    return run


def _exported_program(content: bytes) -> Runner:
    import torch

    # A file that is no archive makes torch log its own traceback (a dozen lines) before it fails: ours is one line.
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)
    try:
        program = torch.export.load(io.BytesIO(content))
    finally:
        export_log.setLevel(level)
    return _torch_runner(program.module())


def _weights(content: bytes) -> Runner:
    from mnist_core.training.model import weights_from_bytes

    return _torch_runner(weights_from_bytes(content).eval())
