"""Real digits saved as images the way people make them, read back as `mnist predict` and `/predict` read them
(`load_image`: decode + preparation): how many are refused, why, and (with --model) how many are read right.

    python benchmarks/digit_refusals.py [--count 500 | --count 10000] [--before HEAD] [--model RUN/model.onnx]

MNIST *test* digits (a seeded sample of --count, all 10,000 with --count 10000) are written in every combination of:
framing `tight` (a square around the ink box: the digit's longer side fills the frame) or `margin` (MNIST's own
28x28 frame, the digit 20/28 of it); colours `dark` (dark on white, as drawn on paper or in an editor) or `light`
(white on black, MNIST's colours); 28, 112 or 300 px a side (enlarged with Pillow's default bicubic, as an editor
does); PNG, JPEG quality 95 or 75. IDX and .npy inputs skip the preparation, so they are not measured here.
With --before REV, the preparation at REV (loaded from `git show`) reads the same bytes in the same run.
A benchmark, not a test: nothing fails on a figure.
"""

import argparse
import collections
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path, PurePath
from types import ModuleType

import numpy as np
from photos import module_at
from PIL import Image

from mnist_core.data import images
from mnist_core.data.idx import IMAGE_MAGIC, LABEL_MAGIC, parse_idx, read_bytes

FRAMINGS = ("tight", "margin")
COLOURS = ("dark", "light")
SIDES = (28, 112, 300)
FORMATS = (("png", None), ("jpeg95", 95), ("jpeg75", 75))


def machine_name() -> str:
    """The CPU as `lscpu` names it (the figures depend on it), and the cores this process may use."""
    try:
        found = re.search(r"Model name:\s*(.+)", subprocess.run(["lscpu"], capture_output=True, text=True).stdout)
        model = found.group(1).strip() if found else "unknown CPU"
    except OSError:
        model = "unknown CPU (no lscpu)"
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def framed(digit: np.ndarray, framing: str) -> np.ndarray:
    """The 28x28 digit as a person would cut it out: its ink box centred in a square (nothing but the digit, its
    longer side touching two edges), or MNIST's whole frame with its margin."""
    if framing == "margin":
        return digit
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    box = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(box.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - box.shape[0]) // 2, (side - box.shape[1]) // 2
    square[top : top + box.shape[0], left : left + box.shape[1]] = box
    return square


def image_bytes(digit: np.ndarray, framing: str, colour: str, side: int, quality: int | None) -> bytes:
    """One digit written as a file: framed, coloured, enlarged to `side` px, saved as PNG or JPEG."""
    grey = framed(digit, framing)
    if colour == "dark":
        grey = 255 - grey
    picture = Image.fromarray(grey, "L")
    if picture.size != (side, side):
        picture = picture.resize((side, side), Image.BICUBIC)
    buffer = io.BytesIO()
    if quality is None:
        picture.save(buffer, "PNG")
    else:
        picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def reason(error: str) -> str:
    """The refusal's message without the file name, cut at its first colon or parenthesis detail."""
    message = error.split(": ", 1)[1] if ": " in error else error
    return message.split(": crop")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=os.environ.get("MNIST_MIRROR", "/work/shared/data/mnist"))
    parser.add_argument("--count", type=int, default=500, help="test digits, a seeded sample (10000: all of them)")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--before", help="also read every image with the preparation at this commit")
    parser.add_argument("--model", type=Path, help="a model.onnx or .pt2: accuracy of what is read")
    parser.add_argument("--kinds", default="", help="only kinds whose name contains this (e.g. tight-dark)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    mirror = Path(args.mirror)
    digits = parse_idx(read_bytes(mirror / "t10k-images-idx3-ubyte.gz"), "test images", IMAGE_MAGIC)
    labels = parse_idx(read_bytes(mirror / "t10k-labels-idx1-ubyte.gz"), "test labels", LABEL_MAGIC)
    count = min(args.count, len(digits))
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(digits), count, replace=False))
    predictor = None
    if args.model:
        from mnist_core.export.runtimes import load_predictor  # only with --model: onnxruntime or torch

        predictor = load_predictor(args.model, False)
    preparations: list[tuple[str, ModuleType]] = [("after", images)]
    if args.before:
        preparations.insert(0, (f"at {args.before}", module_at(args.before)))
    print(f"# {count} MNIST test digits (seed {args.seed}) as images, read by load_image; machine: {machine_name()}")
    print(f"# python {sys.version.split()[0]}, {' vs '.join(name for name, _ in preparations)}")
    header = f"{'kind':28} {'preparation':14} {'refused':>8} {'accuracy':>9} {'ms/image':>9}  refusals by message"
    print(header)
    results: dict[str, dict] = {}
    totals = {name: collections.Counter() for name, _ in preparations}
    for framing, colour, side, (form, quality) in itertools.product(FRAMINGS, COLOURS, SIDES, FORMATS):
        kind = f"{framing}-{colour}-{side}-{form}"
        if args.kinds not in kind:
            continue
        files = [image_bytes(digits[i], framing, colour, side, quality) for i in chosen]
        name = PurePath(f"digit.{'png' if quality is None else 'jpg'}")
        results[kind] = {}
        for label, module in preparations:
            started = time.perf_counter()
            loaded = [module.load_image(name, content) for content in files]
            milliseconds = 1000 * (time.perf_counter() - started) / len(files)
            why = collections.Counter(reason(item.error) for item in loaded if item.error)
            read = [i for i, item in enumerate(loaded) if item.image is not None]
            row: dict = {"images": len(files), "refused": len(files) - len(read), "why": dict(why),
                         "ms_per_image": milliseconds}  # fmt: skip
            accuracy = ""
            if predictor is not None and read:
                logits = predictor.logits(np.stack([loaded[i].image for i in read]))
                correct = int((logits.argmax(axis=1) == labels[chosen[read]]).sum())
                row["accuracy"] = correct / len(files)  # a refused digit counts as not read right
                accuracy = f"{row['accuracy']:9.2%}"
            results[kind][label] = row
            totals[label].update({"images": len(files), "refused": row["refused"], **why})
            reasons = "; ".join(f"{count} {message}" for message, count in why.most_common())
            print(f"{kind:28} {label:14} {row['refused']:8d} {accuracy:>9} {milliseconds:9.1f}  {reasons}", flush=True)
    for label, total in totals.items():
        print(f"total {label}: {total['refused']} of {total['images']} images refused")
    if args.out:
        summary = {"machine": machine_name(), "count": count, "seed": args.seed, "kinds": results,
                   "totals": {label: dict(total) for label, total in totals.items()}}  # fmt: skip
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
