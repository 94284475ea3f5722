"""Comparing images in MNIST form, and image files made to order, for the tests of mnist_core/data/images.py and the
photos (tests/data/)."""

import io
import zlib

import numpy as np
from PIL import Image


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def best_shift_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation at the best of the nine one-pixel shifts: centring by mass may round either way."""
    return max(correlation(np.roll(a, (dy, dx), (0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (with a valid CRC) and whose data is a tiny image."""
    image = Image.new("L", (8, 8), 255)
    content = save_bytes(image, "PNG")  # signature, IHDR length, b"IHDR", width, height, 5 bytes, CRC, ...
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + content[24:29]
    return content[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + content[33:]


def save_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
