"""Turning what a user hands the CLI (image files, folders, globs, .npy, IDX) into MNIST-form 28x28 images.

Only the standard library, numpy and Pillow: a CLI that predicts with ONNX Runtime must start without torch.
"""

import fnmatch
import glob
import io
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_core.errors import DataError
from mnist_core.data.idx import IMAGE_MAGIC, IMAGE_SIDE, LABEL_MAGIC, parse_idx, read_bytes

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
)
# What Pillow may decode: it otherwise picks any format it knows from the content, e.g. EPS, which it renders by
# running Ghostscript on the file.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# Checked from the header before decoding; below Pillow's own limit (~89 M) so a CLI never decodes gigapixels.
MAX_PIXELS: int = 40_000_000
# An IDX file of images, decompressed: about 680,000 digits; a gzip bomb is refused before it fills the memory.
MAX_IDX_BYTES = 512 * 1024 * 1024
# Bumped whenever what an image becomes changes (2: transparency behind light ink, float and 16-bit grey ranges,
# Fashion-MNIST's own form): prepared caches of the user's images are keyed by it.
IMAGE_FORM_VERSION = 2
MIN_SIDE = 8  # smaller than this cannot show a recognisable digit
DIGIT_BOX = 20  # MNIST fits each digit's longer side into 20 px, then centres its mass in 28x28
MIN_CONTRAST = 32  # grey levels between paper and ink below which we call the image blank
SPECK_MASS = 1e-4  # share of the ink's mass a row or column may hold and still be left out of the digit's box
NOISE_SIGMAS = 6.0  # background noise above paper level kept out of the ink, in robust standard deviations


@dataclass(frozen=True)
class LoadedInput:
    """One input of a batch; a failure is a row, not an exception, so one bad file never costs the others."""

    name: str
    image: np.ndarray | None
    error: str | None


def _paper_behind(rgba: Image.Image) -> str:
    """The colour to composite a transparent background on.

    When the visible pixels hold both a canvas and ink (a drawing with transparent rounded corners or margins),
    the transparent part takes the canvas's colour: the visible pixels' median grey. When they are of one tone,
    they are the ink on a transparent canvas: the paper contrasts with it, white behind dark ink, black behind
    light (a digit drawn in white must not vanish into white paper)."""
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64)
    if alpha.min() == 255 or alpha.sum() == 0:
        return "white"  # opaque (nothing to composite) or wholly transparent (blank either way)
    gray = np.asarray(ImageOps.grayscale(rgba.convert("RGB")), dtype=np.float64)
    visible = gray[alpha > 127]
    if visible.size and np.percentile(visible, 99) - np.percentile(visible, 1) > MIN_CONTRAST:
        return "white" if np.median(visible) > 127 else "black"
    return "black" if np.average(gray, weights=alpha) > 127 else "white"


def _grayscale(image: Image.Image | np.ndarray) -> np.ndarray:
    """Float grey levels 0-255; transparency composited on paper that contrasts with the ink (a PNG's transparent
    area is no ink)."""
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] in (3, 4) and image.dtype == np.uint8:
            return _grayscale(Image.fromarray(image))
        if image.ndim != 2 or not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
            raise DataError(f"array of shape {image.shape} and dtype {image.dtype} is not a grey or RGB(A) image")
        gray = image.astype(np.float32)
        if not np.isfinite(gray).all() or gray.min() < 0 or gray.max() > 255:
            raise DataError(f"array values must be finite and within 0-255 (or 0-1), not {gray.min()}-{gray.max()}")
        return gray * 255 if image.dtype != np.uint8 and gray.max() <= 1 else gray
    if image.mode.startswith("I"):  # 16/32-bit integer grey: 16-bit samples scaled to 8 bits
        # A file that holds 8-bit values in 16-bit samples (max <= 255) is read as 8-bit: divided by 257 it would be
        # a black page.
        gray = np.asarray(image, dtype=np.float32)
        return np.clip(gray / 257, 0, 255) if gray.max() > 255 else np.clip(gray, 0, None)
    if image.mode == "F":  # float grey (TIFF): in 0-1, as most software writes it, or in 0-255
        gray = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(gray * 255 if gray.max() <= 1 else gray, 0, 255)
    try:
        rgba = image.convert("RGBA")
    except ValueError as error:
        raise DataError(f"cannot convert image mode {image.mode} to grey ({error})") from error
    paper = Image.new("RGBA", rgba.size, _paper_behind(rgba))
    return np.asarray(ImageOps.grayscale(Image.alpha_composite(paper, rgba)), dtype=np.float32)


def _extent(profile: np.ndarray) -> tuple[int, int]:
    """Start and end of the ink along one axis, leaving out the last 0.01% of its mass at either side: a fleck of dust
    or a noise pixel far from the digit must not stretch the box the digit is scaled to."""
    mass = np.cumsum(profile)
    start = int(np.searchsorted(mass, mass[-1] * SPECK_MASS, side="right"))
    return start, max(start + 1, int(np.searchsorted(mass, mass[-1] * (1 - SPECK_MASS))) + 1)


def _offset(profile: np.ndarray) -> int:
    """Where to paste so the centre of mass lands on pixel 14, where MNIST's own digits have it on average."""
    centre = np.average(np.arange(len(profile)), weights=profile)
    return int(np.clip(round(IMAGE_SIDE / 2 - centre), 0, IMAGE_SIDE - len(profile)))


def to_mnist_form(image: Image.Image | np.ndarray, dataset: str = "mnist") -> np.ndarray:
    """Bring a digit as a person makes it (dark ink on light paper, any size, anywhere, colour, JPEG noise) into the
    form MNIST itself was made in, so the model sees what it was trained on: white ink on black, longer side 20 px,
    centre of mass at the centre of 28x28.

    A Fashion-MNIST item is brought to the form Zalando made that dataset in instead: trimmed to the item, its
    longer side scaled to the full 28 px, centred as a box, light on dark, its shading kept (not saturated like
    ink): an image already in that form comes out as it went in."""
    fashion = dataset == "fashion-mnist"
    gray = _grayscale(image)
    height, width = gray.shape
    if min(height, width) < MIN_SIDE:
        raise DataError(f"{width}x{height} px is too small to hold a digit (need at least {MIN_SIDE} px a side)")
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    if fashion:  # an item in Fashion-MNIST's form fills the frame and may cover most of its border, not its corners
        ring = np.concatenate([gray[:2, :2], gray[:2, -2:], gray[-2:, :2], gray[-2:, -2:]], axis=None)
    if np.median(ring) > 127:  # the border is paper: light paper means dark ink, MNIST wants the opposite
        gray, ring = 255 - gray, 255 - ring
    paper = float(np.median(ring))
    # Robust standard deviation of the paper, plus half a level: 8-bit samples make the median deviation a whole level.
    noise = 1.4826 * float(np.median(np.abs(ring - paper))) + 0.5
    ink = np.clip(gray - (paper + NOISE_SIGMAS * noise), 0, None)
    if float(gray.max()) - paper < MIN_CONTRAST or not ink.any():
        raise DataError("no ink found: the image is blank")
    (top, bottom), (left, right) = _extent(ink.sum(axis=1)), _extent(ink.sum(axis=0))
    if fashion:
        ink = np.clip(gray - paper, 0, None)  # the item's own shading, only the paper's level taken off
    else:
        ink *= 255 / np.percentile(ink[ink > 0], 95)  # stroke cores saturate as in MNIST
    crop = ink[top:bottom, left:right]
    scale = (IMAGE_SIDE if fashion else DIGIT_BOX) / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    digit = np.clip(np.asarray(Image.fromarray(np.ascontiguousarray(crop), "F").resize(size, Image.LANCZOS)), 0, 255)
    if fashion:  # the box centred
        top, left = (IMAGE_SIDE - digit.shape[0]) // 2, (IMAGE_SIDE - digit.shape[1]) // 2
    else:
        top, left = _offset(digit.sum(axis=1)), _offset(digit.sum(axis=0))
    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.rint(out).astype(np.uint8)


def _failed(name: str, problem: str) -> LoadedInput:
    return LoadedInput(name, None, f"{name}: {problem}")


def load_image(path: Path, content: bytes | None = None, dataset: str = "mnist") -> LoadedInput:
    """Decode under our own pixel limit; Pillow raises many types for damaged files, all of which mean 'bad file'.
    `content`: the file's bytes, already read (decoded instead of reading `path`, which names them). `dataset`:
    whose form the image is brought to (`to_mnist_form`)."""
    name = str(path)
    if content is not None and not content:
        return _failed(name, "empty file")
    try:
        # Our pixel limit, checked from the header, is below Pillow's own (which only warns first): a bomb is
        # refused before anything is decoded.
        with Image.open(path if content is None else io.BytesIO(content), formats=PILLOW_FORMATS) as img:
            if img.width * img.height > MAX_PIXELS:
                return _failed(name, f"{img.width}x{img.height} px is over the limit of {MAX_PIXELS} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)  # phone photos are stored sideways with a rotation tag
    except Image.DecompressionBombError as error:
        return _failed(name, f"refused as a decompression bomb ({error})")
    except UnidentifiedImageError:
        return _failed(name, "not an image file Pillow can read")
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        return _failed(name, f"corrupt or truncated image ({type(error).__name__}: {error})")
    try:
        return LoadedInput(name, to_mnist_form(img, dataset), None)
    except DataError as error:
        return _failed(name, str(error))


def _load_array(path: Path) -> list[LoadedInput]:
    """A .npy of digits already in MNIST form, used as is: N x 28 x 28 (or one 28 x 28), uint8 or float in [0, 1].
    Shape and dtype are checked from the header first, so a wrong file is named precisely and never unpickled."""
    name = str(path)
    try:
        with open(path, "rb") as file:
            version = npy_format.read_magic(file)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(file)
    except (OSError, ValueError, EOFError) as error:
        return [_failed(name, f"not a readable .npy file ({error})")]
    what = f"shape {shape} dtype {dtype}"
    if shape == (IMAGE_SIDE, IMAGE_SIDE):
        shape = (1, *shape)
    if len(shape) != 3 or shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or shape[0] == 0:
        return [_failed(name, f"{what}: expected N x 28 x 28 or 28 x 28 images")]
    if dtype not in (np.uint8, np.float32, np.float64):
        return [_failed(name, f"{what}: expected uint8, or float32/float64 within [0, 1]")]
    # The header may declare any shape: check it against the file before numpy allocates it.
    declared = math.prod(shape) * np.dtype(dtype).itemsize
    if declared > MAX_IDX_BYTES * np.dtype(dtype).itemsize or declared > os.path.getsize(path):
        return [_failed(name, f"{what}: the header declares {declared} bytes of data, the file has fewer")]
    try:
        array = np.load(path, allow_pickle=False).reshape(shape)
    except (OSError, ValueError, EOFError) as error:
        return [_failed(name, f"{what}: cannot read the data ({error})")]
    if dtype != np.uint8:
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            return [_failed(name, f"{what}: float values must be finite and within [0, 1]")]
        array = np.rint(array * 255).astype(np.uint8)
    return [LoadedInput(f"{name}[{i}]", image, None) for i, image in enumerate(array)]


def _load_idx(path: Path) -> list[LoadedInput]:
    name = str(path)
    try:
        if os.path.getsize(path) > MAX_IDX_BYTES:
            return [
                _failed(name, f"{os.path.getsize(path)} bytes is over the limit of {MAX_IDX_BYTES} for an IDX file")
            ]
        content = read_bytes(path, limit=MAX_IDX_BYTES)
        if content[:4] == LABEL_MAGIC.to_bytes(4, "big"):
            return [_failed(name, "is an IDX labels file: it holds labels, not images")]
        images = parse_idx(content, name, IMAGE_MAGIC)
    except DataError as error:
        return [LoadedInput(name, None, str(error))]
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        return [_failed(name, f"IDX images are {images.shape[1]}x{images.shape[2]}, expected 28x28")]
    if len(images) == 0:
        return [_failed(name, "the IDX file holds no images")]
    return [LoadedInput(f"{name}[{i}]", image, None) for i, image in enumerate(images)]


def _load_file(path: Path, dataset: str) -> list[LoadedInput]:
    """Dispatch on content, not name: an IDX file is often named without a suffix."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return [_failed(str(path), "not a regular file")]
        with open(path, "rb") as file:
            head = file.read(6)
    except OSError as error:
        return [_failed(str(path), f"cannot read ({error.strerror or error})")]
    if not head:
        return [_failed(str(path), "empty file")]
    if path.suffix.lower() == ".npy" or head.startswith(b"\x93NUMPY"):
        return _load_array(path)
    if head[:2] == b"\x1f\x8b" or head[:4] in (IMAGE_MAGIC.to_bytes(4, "big"), LABEL_MAGIC.to_bytes(4, "big")):
        return _load_idx(path)
    return [load_image(path, dataset=dataset)]


def _looks_like_input(path: Path) -> bool:
    """What a folder or a pattern contributes: images, arrays and IDX image files; not hidden files (macOS's
    `._x.png`), not IDX labels files (they sit beside the images in a dataset folder)."""
    name = path.name.lower()
    if name.startswith(".") or "labels" in name:
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES | {".npy", ".idx"} or "idx" in name or "ubyte" in name


def _matches(pattern: str) -> list[Path]:
    """Files a glob pattern matches. `**` is walked without following links to folders: a link back up the tree
    would otherwise repeat every file, or never end."""
    if "**" not in pattern:
        return [Path(p) for p in glob.glob(pattern) if os.path.isfile(p)]
    root = pattern.split("**", 1)[0] or "."
    found = []
    for folder, _, names in os.walk(root, followlinks=False):
        for name in names:
            candidate = os.path.join(folder, name)
            if fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(candidate, pattern.replace("**/", "")):
                found.append(Path(candidate))
    return found


def _expand(spec: str) -> tuple[list[Path], str | None]:
    """The files a spec names, or why it names none."""
    path = Path(spec)
    if os.path.isdir(path):
        try:
            entries = list(path.iterdir())
        except OSError as error:
            return [], f"cannot list folder ({error.strerror or error})"
        found = sorted(p for p in entries if p.is_file() and _looks_like_input(p))
        folders = " (its subfolders are not read: name them, or use a pattern such as DIR/**/*.png)"
        return found, None if found else f"no images in folder {spec}" + (
            folders if any(map(Path.is_dir, entries)) else ""
        )
    if os.path.lexists(path):
        return [path], None
    if any(char in spec for char in "*?["):
        found = sorted({p for p in _matches(spec) if _looks_like_input(p)})
        return found, None if found else f"no images match the pattern {spec}"
    return [], "no such file or folder"


def load_inputs(specs: Sequence[str | Path], dataset: str = "mnist") -> list[LoadedInput]:
    """Every input a user named, in order, each image or failure its own row: one bad file never loses the rest.
    Images are brought to `dataset`'s form; arrays and IDX files are taken as already in it."""
    loaded: list[LoadedInput] = []
    for spec in specs:
        files, problem = _expand(str(spec))
        if problem:
            loaded.append(_failed(str(spec), problem))
        for path in files:
            loaded.extend(_load_file(path, dataset))
    return loaded
