"""Saying "not a digit": how often each held-out kind of non-digit is refused, and how many real digits are.

    python benchmarks/not_a_digit.py [--seeds 0 1 2] [--count 1000] [--out FILE.json]

Trains side by side, with the pipeline's own code (`train_model`, the default recipe): the baseline (no outlier
exposure) and the default run (outlier exposure on the generated training kinds of data/not_digits.py). For each,
the threshold is fitted on the validation split to refuse `refusal_rate` of its digits (the pipeline's rule), then:
the share of the MNIST test digits refused, and per held-out kind (letters, symbols/shapes, scribbles, photo crops:
generators and sources no training image comes from) the share answered "not a digit" and the AUROC of the score
against the test digits. Scores: the maximum softmax probability (Hendrycks & Gimpel 2017, the baseline) and the
negative free energy (Liu et al. 2020, what the pipeline uses). Drawings the preparation itself refuses as blank are
counted apart: they never get a digit answer either. A benchmark, not a test: nothing fails on a figure.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model

from mnist_core.config import RunParams
from mnist_core.data import not_digits
from mnist_core.data.download import download_dataset
from mnist_core.data.not_digits import load_outliers, prepare_outliers
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.evaluation.calibration import fit_temperature, log_softmax
from mnist_core.evaluation.novelty import fit_threshold, outlier_scores
from mnist_core.training.loop import train_model


def machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(an outlier scores above an inlier), ties counting half: the Mann-Whitney U statistic over n_in * n_out."""
    scores = np.concatenate([inliers, outliers])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties averaged
    rank_sum = average_rank[len(inliers) :].sum()
    return float((rank_sum - len(outliers) * (len(outliers) + 1) / 2) / (len(inliers) * len(outliers)))


def max_softmax_score(logits: np.ndarray, temperature: float) -> np.ndarray:
    return -np.exp(log_softmax(logits, temperature)).max(axis=1)  # higher: less like a digit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default="/work/shared/data/mnist")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "mnist-bench-data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--count", type=int, default=1000, help="images per held-out kind")
    parser.add_argument("--hidden-sizes", type=int, nargs="+", help="another architecture (default: the recipe's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    defaults = RunParams()
    downloaded = download_dataset("mnist", args.data_dir, [args.mirror])
    data = load_prepared(prepare_dataset(downloaded, args.data_dir, defaults.val_size, 0).path)
    started = time.perf_counter()
    pool = load_outliers(prepare_outliers(args.data_dir, "mnist", defaults.outlier_images))
    print(f"# {machine()}; training outliers: {len(pool)} ({time.perf_counter() - started:.1f} s, cached after)")
    held_out, blank = {}, {}
    for number, (kind, draw) in enumerate(not_digits.HELD_OUT_KINDS.items()):
        held_out[kind], refused = not_digits.make(draw, args.count, seed=10_000 + number)
        blank[kind] = refused / (refused + args.count)
    print("refused as blank by the preparation (never a digit answer): "
          + ", ".join(f"{kind} {share:.1%}" for kind, share in blank.items()))  # fmt: skip
    labels = data["test_labels"].numpy()
    results = []
    for seed in args.seeds:
        for name, exposure in (("baseline", 0.0), ("outlier exposure", defaults.outlier_exposure)):
            architecture = {"hidden_sizes": args.hidden_sizes} if args.hidden_sizes else {}
            params = RunParams(seed=seed, outlier_exposure=exposure, **architecture)
            run_data = {**data, "outlier_images": pool} if exposure else data
            trained = train_model(run_data, params, torch.device("cpu"))
            model = trained.model
            with torch.no_grad():
                val = model(data["val_images"]).double().numpy()
                test = model(data["test_images"]).double().numpy()
                others = {kind: model(torch.from_numpy(images)).double().numpy() for kind, images in held_out.items()}
            temperature = fit_temperature(val, data["val_labels"].numpy())
            accuracy = float((test.argmax(axis=1) == labels).mean())
            for score_name, score in (
                ("max softmax", lambda logits, t=temperature: max_softmax_score(logits, t)),
                ("energy", outlier_scores),
            ):
                threshold = float(np.quantile(score(val), 1 - params.refusal_rate))
                if score is outlier_scores:
                    assert abs(threshold - fit_threshold(val, params.refusal_rate)[0]) < 1e-9  # the pipeline's rule
                row = {
                    "seed": seed, "model": name, "score": score_name, "test_accuracy": accuracy,
                    "train_seconds": trained.train_seconds,
                    "test_digits_refused": float((score(test) > threshold).mean()),
                    "kinds": {kind: {"refused": float((score(logits) > threshold).mean()),
                                     "auroc": auroc(score(test), score(logits))} for kind, logits in others.items()},
                }  # fmt: skip
                results.append(row)
                kinds = "  ".join(f"{kind} {v['refused']:6.1%} ({v['auroc']:.3f})" for kind, v in row["kinds"].items())
                print(f"seed {seed} {name:16} {score_name:11}  acc {accuracy:.2%}  train {trained.train_seconds:4.1f} s"
                      f"  digits refused {row['test_digits_refused']:.2%}  |  {kinds}", flush=True)  # fmt: skip
    if args.out:
        summary = {"machine": machine(), "python": sys.version, "count": args.count, "blank": blank, "rows": results,
                   "hidden_sizes": args.hidden_sizes or defaults.hidden_sizes}  # fmt: skip
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
