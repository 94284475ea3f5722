"""Images that are not digits, made on this machine from what the installed packages ship: what outlier exposure
trains against, and held-out sets of other kinds that measure whether "not a digit" generalises.

Every image is drawn as a person would make it (dark marks on a light 112 px canvas, or a photo crop) and then goes
through the very preparation a served image goes through (`images.to_mnist_form`: crop, 20 px box, centre of mass),
so the model is trained and measured on what it will actually see. What the preparation refuses as blank is left out
of a set (and counted by the benchmark: such an input is never answered as a digit either).

Training kinds (`TRAIN_KINDS`) and held-out kinds (`HELD_OUT_KINDS`) share no generator and no source:
- train: strokes (Bezier curves and polylines), glyphs (OpenCV's Hershey fonts), shapes (irregular polygons,
  hatching), textures (smoothed noise, blobs, crops of matplotlib's terrain elevation maps);
- held out: letters and symbols (TrueType fonts that matplotlib ships: DejaVu, STIX, Computer Modern, and shapes
  drawn as polygons), scribbles (a pen's random walk with momentum), photo crops (matplotlib's sample photographs).

Letters and symbols that are a digit's shape in many hands (O o D Q I l i j | Z z S s B b G g q T t ( ) / 7-like
ones) are in no set: a model that refused them would refuse real 0, 1, 2, 5, 6, 8, 9 and 7 too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open

from mnist_core.data.idx import IMAGE_SIDE
from mnist_core.data.images import IMAGE_FORM_VERSION, to_mnist_form
from mnist_core.errors import DataError
from mnist_core.files import atomic_save_tensors

if TYPE_CHECKING:  # torch is imported where tensors are made: a cache check needs none of it
    import torch

CANVAS = 112
# Bump when a generator changes: cached outlier sets made by an older one are rebuilt.
GENERATOR_VERSION = 3
DIGIT_LIKE = set("OoDQIlij|ZzSsBbGgqTt()/\\[]{}!1")
LETTERS = "".join(c for c in "ABCEFHJKLMNPRUVWXYacdefhkmnpruvwxy" if c not in DIGIT_LIKE)
SYMBOLS = "+×÷=#%&@*?<>~$€£§¶∞√∑πΩ♥★→←↑↓△□◇☺✓✗≈≠±µ¥©®"
TRAIN_GLYPHS = "".join(c for c in "ACEFHKLMNPRUVWXYaceghkmnpruvwxy#%&@*+=?<>$" if c not in DIGIT_LIKE)
HERSHEY = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
)


def mpl_data() -> Path:
    """matplotlib's data folder (fonts, sample photographs), imported only when outliers are drawn: a run that
    reads them from the cache, as an Unchanged one does, never pays matplotlib's import (~0.1 s)."""
    import matplotlib

    return Path(matplotlib.get_data_path())


TTF_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
)
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
TERRAIN = ("topobathy.npz", "jacksboro_fault_dem.npz")

Draw = Callable[[np.random.Generator], np.ndarray]  # one image as a person makes it (uint8, dark on light or photo)


def _paper() -> np.ndarray:
    return np.full((CANVAS, CANVAS), 255, dtype=np.uint8)


def _pen(rng: np.random.Generator) -> tuple[int, int]:
    """(ink level, thickness in px at 112 px): from a fine pen to a marker."""
    return int(rng.integers(0, 90)), int(rng.integers(3, 13))


def _bezier(rng: np.random.Generator, points: int = 40) -> np.ndarray:
    controls = rng.uniform(8, CANVAS - 8, size=(4, 2))
    t = np.linspace(0, 1, points)[:, None]
    curve = (
        (1 - t) ** 3 * controls[0]
        + 3 * (1 - t) ** 2 * t * controls[1]
        + 3 * (1 - t) * t**2 * controls[2]
        + t**3 * controls[3]
    )
    return curve.astype(np.int32)


def strokes(rng: np.random.Generator) -> np.ndarray:
    """1-4 strokes, each a Bezier curve or a polyline of 2-5 segments."""
    image = _paper()
    ink, width = _pen(rng)
    for _ in range(int(rng.integers(1, 5))):
        if rng.random() < 0.5:
            path = _bezier(rng)
        else:
            path = rng.uniform(8, CANVAS - 8, size=(int(rng.integers(3, 7)), 2)).astype(np.int32)
        cv2.polylines(image, [path], False, ink, width, cv2.LINE_AA)
    return image


def glyphs(rng: np.random.Generator) -> np.ndarray:
    """One or two characters in a Hershey font, turned and sheared a little."""
    image = _paper()
    ink, width = _pen(rng)
    text = "".join(rng.choice(list(TRAIN_GLYPHS), size=int(rng.integers(1, 3))))
    font = int(rng.choice(HERSHEY))
    scale = rng.uniform(2.0, 3.5) / len(text)
    (text_width, text_height), _ = cv2.getTextSize(text, font, scale, max(1, width // 2))
    origin = (max(0, (CANVAS - text_width) // 2), (CANVAS + text_height) // 2)
    cv2.putText(image, text, origin, font, scale, ink, max(1, width // 2), cv2.LINE_AA)
    return _turned(image, rng)


def shapes(rng: np.random.Generator) -> np.ndarray:
    """Irregular polygons, outlined or filled, or hatching (3-6 parallel lines). Not lone lines or open arcs: those
    are strokes of 1, 7, 2 or 5, and trained against they cost real digits (measured: -0.3 points of accuracy)."""
    image = _paper()
    ink, width = _pen(rng)
    if rng.random() < 0.7:
        corners = rng.uniform(10, CANVAS - 10, size=(int(rng.integers(3, 8)), 2)).astype(np.int32)
        hull = cv2.convexHull(corners) if rng.random() < 0.6 else corners
        if rng.random() < 0.3:
            cv2.fillPoly(image, [hull], ink, cv2.LINE_AA)
        else:
            cv2.polylines(image, [hull], True, ink, width, cv2.LINE_AA)
        return image
    angle, gap = rng.uniform(0, math.pi), int(rng.integers(8, 20))
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    for offset in range(-int(rng.integers(1, 4)), int(rng.integers(2, 4))):
        middle = 56 + normal * offset * gap
        start, end = (middle - direction * 40).astype(int), (middle + direction * 40).astype(int)
        cv2.line(image, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), ink, width, cv2.LINE_AA)
    return image


def _terrain(rng: np.random.Generator) -> np.ndarray:
    name = str(rng.choice(list(TERRAIN)))
    with np.load(mpl_data() / "sample_data" / name) as archive:
        field = np.asarray(archive[archive.files[0]], dtype=np.float64)
    size = int(rng.integers(24, min(field.shape)))
    top, left = int(rng.integers(0, field.shape[0] - size + 1)), int(rng.integers(0, field.shape[1] - size + 1))
    crop = field[top : top + size, left : left + size]
    return cv2.resize(crop, (CANVAS, CANVAS), interpolation=cv2.INTER_LINEAR)


def textures(rng: np.random.Generator) -> np.ndarray:
    """Smoothed noise, blobs, or terrain; shown as a grey photo or as dark marks on paper (thresholded)."""
    choice = rng.random()
    if choice < 0.4:
        field = cv2.GaussianBlur(rng.normal(size=(CANVAS, CANVAS)), (0, 0), float(rng.uniform(1.5, 10)))
    elif choice < 0.7:
        field = np.zeros((CANVAS, CANVAS))
        for _ in range(int(rng.integers(2, 9))):
            centre = tuple(int(v) for v in rng.integers(10, CANVAS - 10, 2))
            axes = tuple(int(v) for v in rng.integers(4, 30, 2))
            cv2.ellipse(field, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.3, 1)), -1)
    else:
        field = _terrain(rng)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
    if rng.random() < 0.5:
        return (255 - 255 * field).astype(np.uint8)  # grey levels, as a photo
    level = float(rng.uniform(0.5, 0.85))
    return np.where(field > level, int(rng.integers(0, 90)), 255).astype(np.uint8)


def _turned(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle, shear = float(rng.uniform(-15, 15)), float(rng.uniform(-0.2, 0.2))
    matrix = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), angle, 1.0)
    matrix[0, 1] += shear
    return cv2.warpAffine(image, matrix, (CANVAS, CANVAS), borderValue=255)


def _ttf_text(rng: np.random.Generator, characters: str) -> np.ndarray:
    font_file = mpl_data() / "fonts" / "ttf" / str(rng.choice(list(TTF_FONTS)))
    font = ImageFont.truetype(str(font_file), int(rng.integers(50, 90)))
    text = str(rng.choice(list(characters)))
    canvas = Image.new("L", (CANVAS, CANVAS), 255)
    draw = ImageDraw.Draw(canvas)
    box = draw.textbbox((0, 0), text, font=font)
    origin = ((CANVAS - (box[2] - box[0])) / 2 - box[0], (CANVAS - (box[3] - box[1])) / 2 - box[1])
    draw.text(origin, text, fill=int(rng.integers(0, 90)), font=font)
    return _turned(np.asarray(canvas), rng)


def letters(rng: np.random.Generator) -> np.ndarray:
    """A letter in a TrueType font (held out: no letter of these fonts is trained on)."""
    return _ttf_text(rng, LETTERS)


def symbols(rng: np.random.Generator) -> np.ndarray:
    """A symbol in a TrueType font, or a polygon: triangle, square, star, arrow, cross."""
    if rng.random() < 0.5:
        return _ttf_text(rng, SYMBOLS)
    image = _paper()
    ink, width = _pen(rng)
    corners = int(rng.choice([3, 4, 5, 6]))
    star = rng.random() < 0.4
    count = corners * (2 if star else 1)
    angles = np.linspace(0, 2 * math.pi, count, endpoint=False) + rng.uniform(0, math.pi)
    radii = np.where(np.arange(count) % 2 == 1, 0.45, 1.0) if star else np.ones(count)
    radius = rng.uniform(25, 48)
    points = np.stack([56 + radius * radii * np.cos(angles), 56 + radius * radii * np.sin(angles)], 1)
    cv2.polylines(image, [points.astype(np.int32)], True, ink, width, cv2.LINE_AA)
    if rng.random() < 0.3:
        cv2.line(image, (20, 56), (92, 56), ink, width, cv2.LINE_AA)
    return image


def scribbles(rng: np.random.Generator) -> np.ndarray:
    """A pen's random walk with momentum: one continuous tangled line."""
    image = _paper()
    ink, width = _pen(rng)
    position = rng.uniform(30, 82, 2)
    heading, turn = rng.uniform(0, 2 * math.pi), 0.0
    path = [position.copy()]
    for _ in range(int(rng.integers(40, 120))):
        turn = 0.8 * turn + rng.normal(0, 0.35)
        heading += turn
        position = np.clip(position + 4 * np.array([math.cos(heading), math.sin(heading)]), 6, CANVAS - 6)
        path.append(position.copy())
    cv2.polylines(image, [np.array(path, dtype=np.int32)], False, ink, width, cv2.LINE_AA)
    return image


def photo_crops(rng: np.random.Generator) -> np.ndarray:
    """A crop of one of matplotlib's sample photographs, in colour as a user would send it."""
    name = str(rng.choice(list(PHOTOS)))
    photo = np.asarray(Image.open(mpl_data() / "sample_data" / name).convert("RGB"))
    size = int(rng.integers(32, min(photo.shape[:2])))
    top = int(rng.integers(0, photo.shape[0] - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    return cv2.resize(photo[top : top + size, left : left + size], (CANVAS, CANVAS), interpolation=cv2.INTER_AREA)


TRAIN_KINDS: dict[str, Draw] = {"strokes": strokes, "glyphs": glyphs, "shapes": shapes, "textures": textures}
HELD_OUT_KINDS: dict[str, Draw] = {
    "letters": letters,
    "symbols": symbols,
    "scribbles": scribbles,
    "photo crops": photo_crops,
}


def make(draw: Draw, count: int, seed: int, dataset: str = "mnist") -> tuple[np.ndarray, int]:
    """`count` prepared 28x28 images of one kind (seeded), and how many drawings the preparation refused as blank
    (drawn again: the set has `count` images)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    made = refused = 0
    while made < count:
        try:
            out[made] = to_mnist_form(draw(rng), dataset)
            made += 1
        except DataError:
            refused += 1
            if refused > 10 * count + 100:
                raise DataError(f"{draw.__name__}: the preparation refuses almost every drawing") from None
    return out, refused


def training_outliers(count: int, seed: int, dataset: str = "mnist") -> np.ndarray:
    """`count` outliers for outlier exposure, the training kinds in equal parts, shuffled."""
    parts = [
        make(draw, count // len(TRAIN_KINDS) + (index < count % len(TRAIN_KINDS)), seed * 31 + index, dataset)[0]
        for index, draw in enumerate(TRAIN_KINDS.values())
    ]
    images = np.concatenate(parts)
    return images[np.random.default_rng(seed).permutation(len(images))]


def outliers_path(cache_root: Path, dataset: str, count: int) -> Path:
    # The preparation's version too: the outliers are prepared as served images are, and change when it does.
    name = f"outliers-{dataset}-g{GENERATOR_VERSION}-form{IMAGE_FORM_VERSION}-n{count}.safetensors"
    return Path(cache_root).expanduser().resolve() / "prepared" / name


def prepare_outliers(cache_root: Path, dataset: str, count: int) -> Path:
    """The file of `count` training outliers for `dataset` under the data cache, made once (a few seconds per
    thousand) and reused by every run and seed; its content depends only on the generators and `count`."""
    path = outliers_path(cache_root, dataset, count)
    if _readable(path, count):
        return path
    import torch

    images = torch.from_numpy(training_outliers(count, seed=0, dataset=dataset))
    atomic_save_tensors({"images": images}, path, {"generator_version": str(GENERATOR_VERSION)}, what="outliers")
    return path


def _readable(path: Path, count: int) -> bool:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return handle.get_slice("images").get_shape() == [count, IMAGE_SIDE, IMAGE_SIDE]
    except Exception:  # noqa: BLE001 - a missing or damaged cache file is made again
        return False


def load_outliers(path: Path, device: torch.device | str = "cpu") -> torch.Tensor:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")["images"].to(device)
    except Exception as error:
        raise DataError(f"{path}: cannot read the outlier images ({error}); delete it to make it again") from error
