"""Real models for the `mnist serve` tests, made in seconds: a small MLP trained on part of real MNIST, exported to
ONNX once, and run folders and champions made from it through the registry's own `record_run`."""

import json
from pathlib import Path

import torch

# Run folders, promotions and the server process are shared with benchmarks/serve_load.py.
from benchmarks.made_up_runs import make_run, promote, variant  # noqa: F401 - re-exported
from benchmarks.serve_process import start_server, stop_server, wait_until  # noqa: F401 - re-exported
from mnist_core.export.run_folder import save_portable
from mnist_core.layout import ONNX_FILE
from mnist_core.registry.store import RegistryStore, read_champion
from mnist_core.training.model import MLP


def train_small_mlp(tensors: dict[str, torch.Tensor], samples: int = 30_000, epochs: int = 2) -> MLP:
    """~97 % on MNIST's test set in a few seconds of CPU: enough to read drawn digits."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on a shared 2-core machine: one thread is ~10x faster than contention
    model = MLP((128,))
    images, labels = tensors["train_images"][:samples], tensors["train_labels"][:samples].long()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(images), 128):
            batch = order[start : start + 128]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    torch.set_num_threads(threads)
    return model.eval()


def export_model(model: MLP, folder: Path) -> Path:
    """model.onnx in `folder`, the exporter's own way (model.pt2 is opt-in: RunParams.torch_export)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_portable(model, folder)
    return folder / ONNX_FILE


def rollback(output_root: Path, pointer_json: str) -> None:
    """`mnist registry rollback`: the champion the current one replaced is champion again; it must be the one
    `pointer_json` (a champion read earlier) names."""
    store = RegistryStore(output_root)
    with store.locked():
        pointer = store.rollback("mnist", "test")
    assert pointer.run_id == json.loads(pointer_json)["run_id"], (pointer.run_id, pointer_json)


def champion_json(output_root: Path) -> str:
    champion = read_champion(output_root, "mnist")
    assert champion is not None
    return champion.model_dump_json()


def digit_png(image, scale: int = 1) -> bytes:  # noqa: ANN001 - a 28x28 uint8 array or tensor
    """An MNIST digit as a person would photograph it: dark ink on white paper, as PNG bytes."""
    import io

    import numpy as np
    from PIL import Image

    picture = Image.fromarray(255 - np.asarray(image, dtype=np.uint8))
    if scale > 1:
        picture = picture.resize((28 * scale, 28 * scale), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
