"""Milliseconds to read one photo as `mnist predict` and `mnist serve` do (`load_image`: decode + preparation), per
size, with the preparation at --before (loaded from `git show`) and the working tree's, in one run:

    python benchmarks/photo_sizes.py [--before HEAD] [--repeat 21]

The photo is a squared-paper kind (benchmarks/synthetic_photos.py) resized to 1000x1000 and to a 12-megapixel phone
camera's 4032x3024, saved as JPEG (quality 90); the median of --repeat reads is printed. A benchmark: nothing fails.
"""

import argparse
import io
import os
import time
from pathlib import Path, PurePath

import numpy as np
from photos import module_at
from PIL import Image
from synthetic_photos import kind_photo_jpeg

from mnist_core.data import images
from mnist_core.data.idx import IMAGE_MAGIC, parse_idx, read_bytes

SIZES = ((1000, 1000), (4032, 3024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=os.environ.get("MNIST_MIRROR", "/work/shared/data/mnist"))
    parser.add_argument("--before", default="HEAD", help="the commit whose images.py is 'before'")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    digit = parse_idx(read_bytes(Path(args.mirror) / "t10k-images-idx3-ubyte.gz"), "test images", IMAGE_MAGIC)[0]
    photo = Image.open(io.BytesIO(kind_photo_jpeg(digit, "squared-blue", np.random.default_rng(7))))
    for size in SIZES:
        buffer = io.BytesIO()
        photo.resize(size).save(buffer, "JPEG", quality=90)
        for name, module in (("before", module_at(args.before)), ("after", images)):
            timings = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                loaded = module.load_image(PurePath("photo.jpg"), buffer.getvalue())
                timings.append(time.perf_counter() - started)
            outcome = "read" if loaded.image is not None else f"refused: {loaded.error}"
            print(f"{size[0]}x{size[1]} JPEG  {name:6} {1000 * np.median(timings):6.1f} ms ({outcome})", flush=True)


if __name__ == "__main__":
    main()
