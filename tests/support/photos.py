"""MNIST digits turned into what a person would photograph or scan, for tests of the path from a user's image file
to the model: dark ink on off-white paper, bigger, off-centre, tinted, noisy, saved as PNG or JPEG; and
the phone photos of handwriting that benchmarks/synthetic_photos.py makes."""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# The phone photos of handwriting (kinds of paper, ink and light) are shared with benchmarks/photos.py.
from benchmarks.synthetic_photos import PHOTO_KINDS, kind_photo_jpeg, make_kind_photo  # noqa: F401 - re-exported


def make_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An RGB picture of a 28x28 MNIST digit (white on black) as dark ink on light paper, 3-8x larger, placed
    off-centre on a bigger sheet, colour-tinted and noisy."""
    paper, ink = rng.uniform(200, 240), rng.uniform(10, 60)
    factor = int(rng.integers(3, 9))
    side = 28 * factor
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.BICUBIC), dtype=np.float32)
    margin = rng.integers(side // 8, side // 2, size=4)  # left, right, top, bottom: unequal, so the digit is off-centre
    sheet = np.zeros((side + margin[2] + margin[3], side + margin[0] + margin[1]), dtype=np.float32)
    sheet[margin[2] : margin[2] + side, margin[0] : margin[0] + side] = big
    gray = paper - (paper - ink) * np.clip(sheet, 0, 255) / 255
    tint = rng.uniform(0.8, 1.0, size=3)  # warm or cool light, a coloured pen
    rgb = gray[..., None] * tint.astype(np.float32) + 3 * rng.standard_normal((*gray.shape, 3), dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def write_photos(images: np.ndarray, folder: Path, seed: int) -> list[Path]:
    """One photo per digit, alternating PNG and JPEG (quality 90); names sort in the order of `images`."""
    images = np.asarray(images, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo-{i:05d}.{'png' if i % 2 == 0 else 'jpg'}" for i in range(len(images))]
    rngs = np.random.default_rng(seed).spawn(len(images))  # one stream per photo: the same files in any thread order

    def write(i: int) -> None:
        make_photo(images[i], rngs[i]).save(paths[i], quality=90, compress_level=1)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow and numpy release the GIL
        list(pool.map(write, range(len(images))))
    return paths
