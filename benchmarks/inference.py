"""Inference benchmark: the same trained model through each runtime, measured side by side in one run.

    python benchmarks/inference.py --mirror /work/shared/data/mnist [--rounds 5] [--out results/inference-cpu.json]

1. Throughput: the 10,000 test images (uint8, already MNIST form) in one call per runtime: PyTorch (eager, the
   safetensors weights), ONNX Runtime (model.onnx), torch.export (model.pt2). Median over --rounds after a warm-up.
2. Latency at batch 1: median and p99 over 2,000 single images per runtime.
3. Cold start: wall time of `mnist predict` on 10 PNG files in a fresh process, with each model file (median of
   --rounds), i.e. what a user waits for, imports included.
The model is trained here (the default recipe, 1 epoch: the timings do not depend on its accuracy).
A benchmark, not a test: nothing fails on a timing.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnist_core.config import RunParams
from mnist_core.data.download import download_dataset
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.export.run_folder import save_portable
from mnist_core.export.runtimes import RUNTIME_FILES, load_predictor
from mnist_core.training.loop import train_model
from mnist_core.training.model import save_weights

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def trained_model_files(mirror: str, work: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    downloaded = download_dataset("mnist", work / "data", [mirror])
    params = RunParams(epochs=1)
    data = load_prepared(prepare_dataset(downloaded, work / "data", params.val_size, params.seed).path)
    model = train_model(data, params, torch.device("cpu")).model.cpu().eval()
    folder = work / "model"
    folder.mkdir()
    save_weights(model, folder / RUNTIME_FILES["pytorch"])
    save_portable(model, folder)
    return folder, data["test_images"].numpy(), data["test_labels"].numpy()


def throughput(folder: Path, images: np.ndarray, labels: np.ndarray, rounds: int) -> dict[str, dict[str, float]]:
    results = {}
    for runtime, name in RUNTIME_FILES.items():
        predictor = load_predictor(folder / name, trust_pt2=True)  # our own file, made above
        predictor.logits(images)  # warm-up: first-call allocation and graph optimization
        seconds = []
        for _ in range(rounds):
            started = time.perf_counter()
            logits = predictor.logits(images)
            seconds.append(time.perf_counter() - started)
        single = []
        for image in images[:2000]:
            started = time.perf_counter()
            predictor.logits(image[None])
            single.append(time.perf_counter() - started)
        results[runtime] = {
            "test_set_ms": 1000 * statistics.median(seconds),
            "images_per_s": len(images) / statistics.median(seconds),
            "batch1_median_us": 1e6 * statistics.median(single),
            "batch1_p99_us": 1e6 * float(np.percentile(single, 99)),
            "accuracy": float((logits.argmax(1) == labels).mean()),
        }
    return results


def cold_start(folder: Path, images: np.ndarray, work: Path, rounds: int) -> dict[str, float]:
    pngs = work / "pngs"
    pngs.mkdir()
    for index, image in enumerate(images[:10]):
        Image.fromarray(255 - image).resize((140, 140)).save(pngs / f"{index}.png")
    results = {}
    for runtime, name in RUNTIME_FILES.items():
        command = [sys.executable, "-m", "mnist_core", "predict", str(pngs), "--model", str(folder / name),
                   "--trust-pt2"]  # fmt: skip
        walls = []
        for _ in range(rounds):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=PROJECT_ROOT)
            walls.append(time.perf_counter() - started)
        results[runtime] = statistics.median(walls)
    return results


def markdown(result: dict) -> str:
    lines = ["| runtime | 10,000 images (ms) | images/s | batch 1 median (µs) | batch 1 p99 (µs) | `mnist predict` "
             "on 10 PNGs, cold (s) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for runtime, row in result["throughput"].items():
        lines.append(
            f"| {runtime} | {row['test_set_ms']:.1f} | {row['images_per_s']:,.0f} | {row['batch1_median_us']:.0f} "
            f"| {row['batch1_p99_us']:.0f} | {result['cold_start_s'][runtime]:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True, help="MNIST mirror (folder or URL)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the results as JSON here (and a .md table beside it)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as training does on a CPU; ONNX Runtime picks its own threads
    with tempfile.TemporaryDirectory(prefix="mnist-inference-") as temp:
        work = Path(temp)
        folder, images, labels = trained_model_files(args.mirror, work)
        result = {
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "throughput": throughput(folder, images, labels, args.rounds),
            "cold_start_s": cold_start(folder, images, work, args.rounds),
        }
    table = markdown(result)
    print(json.dumps(result, indent=2))
    print(table)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
