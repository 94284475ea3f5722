"""Phone photos of handwriting on real paper, made from MNIST digits: the kinds of photo benchmarks/photos.py measures
accuracy on and tests/data/test_photos.py checks the preparation with (tests/support/photos.py re-exports them).
Standard library, numpy and Pillow only: a benchmark run as a script imports it as `synthetic_photos`."""

import io
import math

import numpy as np
from PIL import Image, ImageFilter

# What people photograph: a digit in ballpoint, pencil or marker on plain, ruled or squared paper, lit from one side,
# turned a little, blurred, saved as JPEG. Drawn from MNIST *test* digits by the benchmark, so no training image
# leaks into what it measures.
PHOTO_KINDS = ("squared-blue", "ruled-black", "red-ink", "pencil", "marker", "small-offcentre", "rotated-blur-jpeg")
INKS = {"blue": (35, 55, 150), "black": (25, 25, 30), "red": (190, 30, 35), "pencil": (105, 105, 110)}


def _strokes(digit: np.ndarray, side: int, angle: float, weight: str) -> np.ndarray:
    """The digit's ink coverage 0-1 at `side` px, turned by `angle` degrees; 'thin' (pencil) or 'thick' (marker)
    strokes are made from MNIST's by thresholding higher or dilating."""
    big = Image.fromarray(digit).resize((side, side), Image.BICUBIC).rotate(angle, Image.BICUBIC)
    if weight == "thick":
        big = big.filter(ImageFilter.MaxFilter(2 * (side // 50) + 1))
    cover = np.asarray(big, dtype=np.float32) / 255
    if weight == "thin":
        cover = np.clip((cover - 0.55) / 0.2, 0, 1)
    return cover


def make_kind_photo(digit: np.ndarray, kind: str, rng: np.random.Generator) -> Image.Image:
    """A phone photo of `digit` (28x28 MNIST form) of one of PHOTO_KINDS, as an RGB image (before JPEG)."""
    small = kind == "small-offcentre"
    height, width = (int(rng.integers(700, 900)), int(rng.integers(900, 1100))) if small else (560, 640)
    side = int(rng.integers(90, 140)) if small else int(rng.integers(300, 420))
    angle = float(rng.uniform(-8, 8) if kind == "rotated-blur-jpeg" else rng.uniform(-3, 3))
    weight = {"pencil": "thin", "marker": "thick"}.get(kind, "normal")
    cover = _strokes(digit, side, angle, weight)
    if kind == "pencil":
        cover = cover * rng.uniform(0.6, 0.9)  # graphite is never as dark as ink
    top = int(rng.integers(0, height - side)) if small else (height - side) // 2 + int(rng.integers(-50, 51))
    left = int(rng.integers(0, width - side)) if small else (width - side) // 2 + int(rng.integers(-70, 71))
    alpha = np.zeros((height, width), dtype=np.float32)
    alpha[top : top + side, left : left + side] = cover
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    paper = np.array([rng.uniform(225, 250), rng.uniform(222, 248), rng.uniform(210, 240)], dtype=np.float32)
    rgb = np.broadcast_to(paper, (height, width, 3)).copy()
    turn = math.radians(angle)
    along, across = xs * math.cos(turn) + ys * math.sin(turn), ys * math.cos(turn) - xs * math.sin(turn)
    if kind == "squared-blue":  # a light blue grid every 5 mm
        step = rng.uniform(28, 40)
        grid = np.maximum(np.abs((across % step) - step / 2), np.abs((along % step) - step / 2)) > step / 2 - 1.2
        rgb[grid] = rgb[grid] * np.array([0.72, 0.82, 0.97], dtype=np.float32)
    if kind in ("ruled-black", "rotated-blur-jpeg"):  # ruled lines every 8 mm, a red margin
        step = rng.uniform(45, 60)
        rule = np.abs((across % step) - step / 2) > step / 2 - 1.5
        rgb[rule] = rgb[rule] * np.array([0.7, 0.75, 0.9], dtype=np.float32)
        margin = np.abs(along - width * 0.08) < 1.5
        rgb[margin] = rgb[margin] * np.array([0.95, 0.55, 0.55], dtype=np.float32)
    ink = {"squared-blue": "blue", "red-ink": "red", "pencil": "pencil", "small-offcentre": "blue"}.get(kind, "black")
    colour = np.array(INKS[ink], dtype=np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
    rgb = rgb * (1 - alpha[..., None]) + colour * alpha[..., None]
    # Light falling off towards one side (a window, the phone's own shadow): up to 45% darker at the far edge.
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (xs - width / 2) * math.cos(direction) + (ys - height / 2) * math.sin(direction)
    falloff = rng.uniform(0.15, 0.45) if kind in ("squared-blue", "rotated-blur-jpeg") else rng.uniform(0.0, 0.25)
    light = 1 - falloff * (ramp - ramp.min()) / (ramp.max() - ramp.min())
    rgb = rgb * light[..., None] + rng.normal(0, 2.5, rgb.shape).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
    blur = rng.uniform(1.2, 2.2) if kind == "rotated-blur-jpeg" else rng.uniform(0.3, 0.9)
    return image.filter(ImageFilter.GaussianBlur(blur))


def kind_photo_jpeg(
    digit: np.ndarray, kind: str, rng: np.random.Generator, size: tuple[int, int] | None = None
) -> bytes:
    """`make_kind_photo` saved as a phone would: JPEG, quality 50-65 when blurred and compressed, else 80-92;
    resized to `size` (bicubic) first when given."""
    quality = int(rng.integers(50, 66) if kind == "rotated-blur-jpeg" else rng.integers(80, 93))
    buffer = io.BytesIO()
    photo = make_kind_photo(digit, kind, rng)
    (photo.resize(size, Image.BICUBIC) if size else photo).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
