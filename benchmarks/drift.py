"""The drift monitor's targets, measured: shifted inputs flagged within 500 predictions, and a clean stream of MNIST
test digits raising no alarm in at least 19 of 20 windows.

    python benchmarks/drift.py --run RUN_FOLDER [--mirror MNIST_DIR] [--fashion FASHION_DIR] [--photos 500]

RUN_FOLDER: a trained run (its `model.onnx` and a model card with the monitor's reference: any run exported since
the monitor exists). Each stream is answered as `mnist serve` answers it and logs it (the ONNX model on ONNX Runtime,
the card's temperature and not-a-digit rule: evaluation/monitoring.answers), then tested exactly as the
`mnist-monitor` flow tests a window (evaluation/monitoring.drift_tests, the default MonitorSettings):

- clean: the 10,000 MNIST test digits (never trained or validated on), shuffled, as 20 disjoint windows of 500 (the
  target); 1,000 windows of 500 drawn at random (a finer false-alarm rate); and the 20 windows in the file's order,
  which is not a clean stream: the test set's first 5,000 digits and its last 5,000 come from different writers
  (NIST's SD-1 and SD-3, LeCun et al.), a real shift of the population the monitor sees;
- shifted, as sent to the v2 route (a uint8 tensor: no preparation): the test digits inverted (black ink on white),
  Fashion-MNIST's test images (Debian's `dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist);
- shifted, as sent to /predict: phone photos of test digits (benchmarks/synthetic_photos.py) prepared by the server's
  own preparation (data/images.load_image), one kind of photo at a time;
- onset: windows of 500 whose latest K predictions are shifted and the rest clean (a shift that starts while the
  monitor watches): the share of 50 such windows flagged, per K, and per test.

A benchmark, not a test: nothing fails on a figure.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_model
from synthetic_photos import kind_photo_jpeg

from mnist_core.data import images
from mnist_core.data.idx import read_images
from mnist_core.evaluation.monitoring import TESTS, MonitorSettings, Window, answers, drift_tests
from mnist_core.export.runtimes import load_predictor
from mnist_core.layout import ONNX_FILE
from mnist_core.records import read_card

ONSETS = (25, 50, 100, 150, 200, 300, 500)


def machine() -> str:
    return f"{cpu_model()}, Python {platform.python_version()}"


def take(window: Window, index: np.ndarray) -> Window:
    return Window(window.classes[index], window.confidences[index], window.scores[index])


def join(first: Window, second: Window) -> Window:
    return Window(
        *(np.concatenate([getattr(first, f), getattr(second, f)]) for f in ("classes", "confidences", "scores"))
    )


def alarms(reference, window: Window, settings: MonitorSettings) -> list[str]:  # noqa: ANN001 - MonitoringReference
    return [test.name for test in drift_tests(reference, window, settings) if test.drifted]


def photos(digits: np.ndarray, kind: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` photos of test digits of one kind, prepared as /predict prepares them (those it refuses as blank are
    left out: the server answers them 422 and logs nothing)."""
    prepared = []
    for digit in digits[rng.choice(len(digits), count, replace=False)]:
        loaded = images.load_image(Path("photo.jpg"), kind_photo_jpeg(digit, kind, rng))
        if loaded.image is not None:
            prepared.append(loaded.image)
    return np.stack(prepared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder (model.onnx and its model card)")
    parser.add_argument("--mirror", type=Path, default=Path("../shared/data/mnist"), help="MNIST's IDX .gz files")
    parser.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--photos", type=int, default=500, help="photos per kind (0: none)")
    parser.add_argument("--kinds", nargs="*", default=["pencil", "rotated-blur-jpeg", "squared-blue"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    settings = MonitorSettings()
    card = read_card(args.run)
    reference = card.monitoring
    if reference is None:
        sys.exit(f"{args.run}: its model card has no monitoring reference (exported before the monitor existed)")
    predictor = load_predictor(args.run / ONNX_FILE, onnx_threads=1)

    def served(batch: np.ndarray) -> Window:
        return answers(predictor.logits(batch), card.temperature, card.not_a_digit)

    mnist_test = read_images(args.mirror / "t10k-images-idx3-ubyte.gz")
    clean = served(mnist_test)
    n = settings.window
    order = rng.permutation(len(clean))
    windows = range(len(clean) // n)
    disjoint = [alarms(reference, take(clean, order[i * n : (i + 1) * n]), settings) for i in windows]
    in_order = [alarms(reference, take(clean, np.arange(i * n, (i + 1) * n)), settings) for i in windows]
    drawn = [alarms(reference, take(clean, rng.choice(len(clean), n, replace=False)), settings) for _ in range(1000)]
    per_test = {test: sum(test in found for found in drawn) / len(drawn) for test in TESTS}
    figures: dict = {
        "machine": machine(),
        "run": card.run_id,
        "settings": settings.model_dump(),
        "reference": {
            "size": reference.size,
            "not_a_digit_rate": reference.not_a_digit_rate,
            "mean_confidence": reference.mean_confidence,
        },  # fmt: skip
        "clean": {
            "disjoint_windows": len(disjoint),
            "disjoint_alarms": sum(bool(found) for found in disjoint),
            "disjoint_alarm_tests": [found for found in disjoint if found],
            "file_order_windows_with_alarm": sum(bool(found) for found in in_order),
            "file_order_alarm_tests": [",".join(found) for found in in_order],
            "random_windows": len(drawn),
            "random_false_alarm_rate": sum(bool(found) for found in drawn) / len(drawn),
            "random_false_alarm_rate_per_test": per_test,
            "not_a_digit_rate": float(np.mean(clean.classes == 10)),
            "mean_confidence": float(clean.confidences.mean()),
        },
        "shifted": {},
    }
    shifted = {"inverted (v2)": served(255 - mnist_test)}
    fashion = args.fashion / "t10k-images-idx3-ubyte.gz"
    if fashion.is_file():
        shifted["fashion-mnist (v2)"] = served(read_images(fashion))
    else:
        print(f"no {fashion}: Fashion-MNIST left out (apt-get install dataset-fashion-mnist)", file=sys.stderr)
    for kind in args.kinds if args.photos else []:
        shifted[f"photos {kind} (/predict)"] = served(photos(mnist_test, kind, args.photos, rng))
    for name, stream in shifted.items():
        whole = take(stream, rng.choice(len(stream), min(n, len(stream)), replace=False))
        tests = {test.name: {"statistic": round(test.statistic, 4), "p": float(f"{test.p_value:.3g}")}
                 for test in drift_tests(reference, whole, settings)}  # fmt: skip
        onset = {}
        for k in ONSETS:
            flagged = 0
            for _ in range(50):
                mixed = join(take(clean, rng.choice(len(clean), n - k, replace=False)),
                             take(stream, rng.choice(len(stream), k, replace=len(stream) < k)))  # fmt: skip
                flagged += bool(alarms(reference, mixed, settings))
            onset[k] = flagged / 50
        first = next((k for k in ONSETS if onset[k] >= 0.95), None)
        figures["shifted"][name] = {
            "count": len(stream),
            "not_a_digit_rate": float(np.mean(stream.classes == 10)),
            "mean_confidence": float(stream.confidences.mean()),
            "window_of_500_all_shifted": tests,
            "flagged_share_by_shifted_in_window": onset,
            "flagged_95pct_from": first,
        }
    figures["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
