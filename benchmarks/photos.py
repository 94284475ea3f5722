"""Photos of handwriting: accuracy per kind of photo with the preparation before and after, and its speed.

    python benchmarks/photos.py --model RUN_DIR/model.onnx [--count 500] [--before b4766ee] [--out FILE.json]

Each kind (benchmarks/synthetic_photos.py PHOTO_KINDS: squared paper and blue ink with light falloff, ruled paper and
black ink, red ink, thin pencil, thick marker, a small digit off-centre on a big photo, turned + blurred + hard JPEG)
is made from the first --count MNIST *test* digits (seeded), so no training image leaks into the measure. Both
preparations read the same JPEG bytes: the one at --before (loaded from `git show`) and the working tree's.
Probabilities use the model card's temperature when there is one, and a photo its not-a-digit rule refuses counts as
wrong. A benchmark, not a test: nothing fails on a figure.
"""

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path, PurePath
from types import ModuleType

import numpy as np
from machine import cpu_model
from PIL import Image
from synthetic_photos import PHOTO_KINDS, kind_photo_jpeg

from mnist_core.data import images
from mnist_core.data.idx import IMAGE_MAGIC, LABEL_MAGIC, parse_idx, read_bytes
from mnist_core.errors import DataError
from mnist_core.evaluation.novelty import refuse
from mnist_core.export.runtimes import load_predictor
from mnist_core.records import read_card

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def module_at(revision: str) -> ModuleType:
    """mnist_core/data/images.py as it was at `revision`, loaded beside the current one."""
    source = subprocess.run(["git", "show", f"{revision}:mnist_core/data/images.py"], cwd=PROJECT_ROOT,
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader(f"images_at_{revision}", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"images.py@{revision}", "exec"), module.__dict__)  # noqa: S102 - our own file at a commit
    return module


def prepared(module: ModuleType, content: bytes) -> np.ndarray | None:
    """The 28x28 the model sees, or None when the preparation refuses the photo (blank, two digits...): read as
    `mnist predict` and /predict read it (`load_image`: a big JPEG decoded reduced), where the revision has it."""
    if hasattr(module, "load_image"):
        return module.load_image(PurePath("photo.jpg"), content).image
    try:
        return module.to_mnist_form(Image.open(io.BytesIO(content)))
    except DataError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model.onnx (its run folder's card gives T)")
    parser.add_argument("--mirror", default=os.environ.get("MNIST_MIRROR", "/work/shared/data/mnist"))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--before", default="b4766ee", help="the commit whose preparation is 'before'")
    parser.add_argument("--size", help="WxH: every photo resized to this before it is saved as JPEG (a phone's or a "
                        "scanner's resolution: 1000x1000, 4032x3024); default: each kind's own size")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    mirror = Path(args.mirror)
    digits = parse_idx(read_bytes(mirror / "t10k-images-idx3-ubyte.gz"), "test images", IMAGE_MAGIC)[: args.count]
    labels = parse_idx(read_bytes(mirror / "t10k-labels-idx1-ubyte.gz"), "test labels", LABEL_MAGIC)[: args.count]
    predictor = load_predictor(args.model, False)
    card = read_card(args.model.parent) if (args.model.parent / "model_card.json").is_file() else None
    temperature = card.temperature if card else 1.0
    rule = card.not_a_digit if card else None  # a real digit answered "not a digit" counts as wrong
    before = module_at(args.before)
    results: dict[str, dict] = {}
    for number, kind in enumerate(PHOTO_KINDS):
        rngs = np.random.default_rng(1000 + number).spawn(len(digits))
        size = tuple(int(side) for side in args.size.lower().split("x")) if args.size else None
        photos = [kind_photo_jpeg(digit, kind, rng, size) for digit, rng in zip(digits, rngs, strict=True)]
        row: dict = {"count": len(photos), "size": list(Image.open(io.BytesIO(photos[0])).size)}
        for name, module in (("before", before), ("after", images)):
            started = time.perf_counter()
            ready = [prepared(module, photo) for photo in photos]
            seconds = time.perf_counter() - started
            read = [i for i, image in enumerate(ready) if image is not None]
            correct = not_digit = 0
            if read:
                logits = predictor.logits(np.stack([ready[i] for i in read]))
                refused = refuse(logits, rule)[1]
                correct = int(((logits.argmax(axis=1) == labels[read]) & ~refused).sum())
                not_digit = int(refused.sum())
            row[name] = {"accuracy": correct / len(photos), "refused": 1 - len(read) / len(photos),
                         "not_a_digit": not_digit / len(photos),
                         "ms_per_photo": 1000 * seconds / len(photos)}  # fmt: skip
        results[kind] = row
        sides = [f"{name} {row[name]['accuracy']:6.1%} (refused {row[name]['refused']:4.1%}, not a digit "
                 f"{row[name]['not_a_digit']:4.1%}, {row[name]['ms_per_photo']:.0f} ms/photo)"
                 for name in ("before", "after")]  # fmt: skip
        print(f"{kind:18} {'  '.join(sides)}", flush=True)
    # Speed on a 1000 x 1000 JPEG: decoding and preparation.
    rng = np.random.default_rng(7)
    big = Image.open(io.BytesIO(kind_photo_jpeg(digits[0], "squared-blue", rng))).resize((1000, 1000))
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    # As `mnist predict` and /predict read it (load_image: a JPEG decoded reduced where that loses nothing), the two
    # preparations alternated.
    timings: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(20):
        for name, module in (("before", before), ("after", images)):
            started = time.perf_counter()
            module.load_image(PurePath("photo.jpg"), buffer.getvalue())
            timings[name].append(time.perf_counter() - started)
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    speed = {name: 1000 * float(np.median(times)) for name, times in timings.items()}
    summary = {"kinds": results, "ms_per_1000x1000_jpeg": speed, "temperature": temperature, "machine": machine,
               "python": sys.version}  # fmt: skip
    print(f"1000x1000 JPEG (decode + prepare, median of 20, alternated): before {speed['before']:.1f} ms, "
          f"after {speed['after']:.1f} ms ({machine})")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
