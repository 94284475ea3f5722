"""Learning from corrections: a simulated user whose digits the champion reads wrong, 50 corrections, one retrain.

    python benchmarks/corrections.py --mirror /work/shared/data/mnist [--corrections 50] [--held-out 300]

The user writes the continental way: a 1 with a long flag (an upstroke from the bottom left: the default champion
reads 86 % of them as 7, 4 or 9) and a 7 with a hook and a bar across (read right); drawn by this file's generator
with pen jitter and slant, on paper, prepared as a served image is. Steps, each with the pipeline's own code and
commands:
1. the default run (`flows/mnist.py`) becomes champion; its reading of the user's held-out digits is the baseline;
2. the user sends `--corrections` of their digits as feedback (the registry's feedback table and artifact store,
   what POST /feedback writes): those the champion read wrong first, then right ones confirmed;
3. one retrain with corrections (`flows/mnist.py --corrections`, what the trigger starts);
4. the champion's reading of the user's held-out digits and its MNIST test accuracy, before and after.
A benchmark, not a test: nothing fails on a figure.
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mnist_core.data.idx import read_images, read_labels
from mnist_core.data.images import to_mnist_form
from mnist_core.evaluation.evaluate import score_answers
from mnist_core.records import read_card
from mnist_core.registry.artifacts import recorded_run_folder
from mnist_core.registry.feedback import FeedbackEntry, FeedbackStore
from mnist_core.registry.store import read_champion
from mnist_core.stamps import utc_iso

ROOT = Path(__file__).resolve().parents[1]
STYLES = {1: "continental 1 (long flag)", 7: "crossed 7, hooked"}


def _jitter(points: np.ndarray, rng: np.random.Generator, amount: float = 5.0) -> np.ndarray:
    return points + rng.normal(0, amount, points.shape)


def draw(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One digit in the user's hand on a 112 px sheet of paper (dark ink)."""
    image = np.full((112, 112), 255, np.uint8)
    width, ink = int(rng.integers(5, 10)), int(rng.integers(0, 70))
    slant = rng.uniform(-0.15, 0.25)

    def line(*xy: float) -> None:
        points = _jitter(np.array(xy, dtype=float).reshape(-1, 2), rng)
        points[:, 0] += slant * (56 - points[:, 1])  # the writer's slant
        cv2.polylines(image, [points.astype(np.int32)], False, ink, width, cv2.LINE_AA)

    if digit == 1:  # a long flag from low on the left up to the top, then the stem down
        line(28, 50 + rng.uniform(-5, 10), 60, 14, 60, 98)
    else:  # a hook down at the top bar's left end, the bar, the stem, and a bar across the middle
        line(26, 34, 26, 18, 84, 18, 50, 98)
        line(38, 58, 76, 58)
    return image


def user_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(sorted(STYLES), size=count)
    return np.stack([to_mnist_form(draw(int(label), rng)) for label in labels]), labels.astype(np.int64)


def run_flow(output: Path, data: Path, mirror: str, *extra: str) -> float:
    started = time.perf_counter()
    command = [sys.executable, str(ROOT / "flows" / "mnist.py"), "--output-dir", str(output), "--data-dir", str(data),
               "--mirror", mirror, *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default="/work/shared/data/mnist")
    parser.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="mnist-corrections-")))
    parser.add_argument("--corrections", type=int, default=50)
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--flood", action="store_true", help="instead: one client's wrong labels (MNIST test 1s "
                        "sent as 7) - is the retrained model promoted?")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    output, data = args.work / "runs", args.work / "data"
    first = run_flow(output, data, args.mirror)
    champion = read_champion(output, "mnist")
    assert champion is not None
    before_dir = recorded_run_folder(champion, output)
    held_images, held_labels = user_digits(args.held_out, seed=1)
    pool_images, pool_labels = user_digits(4 * args.corrections, seed=2)
    before = score_answers(before_dir, held_images, held_labels)
    # The user corrects what the champion read wrong, and confirms some it read right, up to --corrections.
    read = [score_answers(before_dir, pool_images[i : i + 1], pool_labels[i : i + 1]) for i in range(len(pool_labels))]
    wrong = [i for i, right in enumerate(read) if right < 1]
    right = [i for i in range(len(pool_labels)) if i not in set(wrong)]
    chosen = (wrong + right)[: args.corrections]
    store = FeedbackStore(output)
    if args.flood:  # a flood from one client: real 1s (MNIST's test set, so not trained on) labelled 7
        ones = read_images(Path(args.mirror) / "t10k-images-idx3-ubyte.gz")[
            read_labels(Path(args.mirror) / "t10k-labels-idx1-ubyte.gz") == 1
        ]
        pool_images, pool_labels = ones[-args.corrections :], np.full(args.corrections, 7)
        chosen = list(range(args.corrections))
    for index in chosen:
        store.add(FeedbackEntry(dataset="mnist", label=int(pool_labels[index]), at=utc_iso(),
                                image=pool_images[index].tobytes()))  # fmt: skip
    second = run_flow(output, data, args.mirror, "--corrections")
    after_champion = read_champion(output, "mnist")
    assert after_champion is not None
    # The retrained model, promoted or not: find it as the newest run folder.
    retrained = max((p for p in output.iterdir() if (p / "model_card.json").is_file()), key=lambda p: p.name)
    after = score_answers(retrained, held_images, held_labels)
    per_style = {STYLES[k]: (score_answers(before_dir, held_images[held_labels == k], held_labels[held_labels == k]),
                             score_answers(retrained, held_images[held_labels == k], held_labels[held_labels == k]))
                 for k in STYLES}  # fmt: skip
    test_before = read_card(before_dir).metrics.test_accuracy
    test_after = read_card(retrained).metrics.test_accuracy
    promoted = after_champion.run_id != champion.run_id
    print(f"corrections sent: {len(chosen)} ({min(len(wrong), len(chosen))} of them for digits read wrong)")
    print(f"user's held-out digits read right: {before:.1%} before -> {after:.1%} after one retrain")
    for style, (a, b) in per_style.items():
        print(f"  {style:28} {a:6.1%} -> {b:6.1%}")
    print(
        f"MNIST test accuracy: {test_before:.2%} -> {test_after:.2%} ({100 * (test_after - test_before):+.2f} points)"
    )
    print(f"retrained run promoted: {promoted}; runs took {first:.0f} s and {second:.0f} s (wall, this machine)")
    if args.out:
        args.out.write_text(json.dumps({"before": before, "after": after, "per_style": per_style,
                                        "test_before": test_before, "test_after": test_after, "promoted": promoted,
                                        "corrections": len(chosen), "wrong_corrected": min(len(wrong), len(chosen)),
                                        "held_out": args.held_out}, indent=2) + "\n")  # fmt: skip
    assert math.isfinite(after)


if __name__ == "__main__":
    main()
