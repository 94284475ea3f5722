"""Real models for the `mnist serve` tests, made in seconds: a small MLP trained on part of real MNIST, exported to
ONNX once, and run folders and champions made from it through the registry's own `record_run`."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from launch.server import free_port
from mnist_core.export.run_folder import save_portable
from mnist_core.export.runtimes import describe_model_files
from mnist_core.layout import CARD_FILE, ONNX_FILE
from mnist_core.records import Exported
from mnist_core.registry.store import RegistryStore, read_champion
from mnist_core.training.model import MLP
from tests.records import make_card, record_run


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
    """model.onnx (and model.pt2) in `folder`, the exporter's own way."""
    folder.mkdir(parents=True, exist_ok=True)
    save_portable(model, folder)
    return folder / ONNX_FILE


def make_run(output_root: Path, run_id: str, onnx: Path, accuracy: float = 0.97) -> Exported:
    """A run folder holding a copy of `onnx` and a model card recording its SHA-256 (as export writes it)."""
    run_dir = output_root / run_id
    run_dir.mkdir(parents=True)
    shutil.copyfile(onnx, run_dir / ONNX_FILE)
    card = make_card(run_id, accuracy).model_copy(update={"model_files": describe_model_files(run_dir)})
    (run_dir / CARD_FILE).write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return Exported(run_id=run_id, run_dir=run_dir, model=run_dir / "model.safetensors", report=run_dir / "report.md",
                    model_card=run_dir / CARD_FILE, card=card)  # fmt: skip


def promote(output_root: Path, run: Exported) -> None:
    """Make `run` the champion as a forced promotion does (the registry's interface, not its files)."""
    promotion = record_run(output_root, run, margin=0.0, force=True, champion_accuracy=lambda _: 0.0)
    assert promotion.promoted, promotion


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


def wait_until(check, timeout: float = 10.0, every: float = 0.05) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(every)


def variant(onnx: Path, folder: Path, note: str) -> Path:
    """The same model in a file with other bytes (its doc string): another SHA-256, the same answers."""
    import onnx as onnx_lib

    proto = onnx_lib.load(str(onnx))
    proto.doc_string = note
    folder.mkdir(parents=True, exist_ok=True)
    onnx_lib.save(proto, str(folder / ONNX_FILE))
    return folder / ONNX_FILE


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


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def start_server(root: Path, log: Path, *flags: str, token: str | None = None) -> tuple[subprocess.Popen, str]:
    """`mnist serve` on a free loopback port as its own process, its output in `log`; returns once it is live.
    The caller stops it by PID (`stop_server`)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("MNIST_SERVE_TOKEN", None)
    if token:
        env["MNIST_SERVE_TOKEN"] = token
    command = [sys.executable, "-m", "launch.cli", "serve", "--port", str(port), "--output-dir", str(root), *flags]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout=30, every=0.1)
    return process, url


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()  # by PID: only the process the caller started
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
