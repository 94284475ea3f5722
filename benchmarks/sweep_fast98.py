"""Small hyper-parameter sweep for the fast98 preset: selects on validation accuracy, reports test only after.

python benchmarks/sweep_fast98.py --mirror /work/shared/data/mnist --out benchmarks/results/sweep.json
"""

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
from speed import project_data

from mnist_core.config import RunParams
from mnist_core.data.idx import CLASS_NAMES
from mnist_core.evaluation.evaluate import evaluate_model
from mnist_core.training.loop import train_model


def run_one(params: RunParams, data: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    result = train_model(data, params, device)
    best = result.history[result.best_epoch - 1]
    return {
        "params": params.model_dump(mode="json", include={"epochs", "batch_size", "lr", "weight_decay",
                                                          "label_smoothing", "momentum", "seed"}),
        "best_val_accuracy": best.val_accuracy,
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        # Recorded for the confirmation step only; the selection below never reads it.
        "test_accuracy": evaluate_model(result.model, data["test_images"], data["test_labels"],
                                        CLASS_NAMES["mnist"]).accuracy,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--label-smoothing", type=float, nargs="+", default=[0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    # The split depends on the seed only (dataset and val_size are the preset's): one load per seed, not per point.
    data_by_seed: dict[int, dict[str, torch.Tensor]] = {}
    rows = []
    for epochs, batch, lr, smoothing, seed in itertools.product(
        args.epochs, args.batch_size, args.lr, args.label_smoothing, args.seeds
    ):
        params = RunParams(preset="fast98", epochs=epochs, batch_size=batch, lr=lr, label_smoothing=smoothing,
                           seed=seed, device=args.device)  # fmt: skip
        if seed not in data_by_seed:
            data_by_seed[seed] = project_data(args.data_dir, args.mirror, params, device)
        started = time.perf_counter()
        row = run_one(params, data_by_seed[seed], device)
        row["wall_seconds"] = time.perf_counter() - started
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
