"""Turning what a user hands the CLI (image files, folders, globs, .npy, IDX) into MNIST-form 28x28 images.

Only the standard library, numpy, Pillow (decoding, colour, the resampling filters MNIST's form is made with) and
OpenCV (morphology, connected components, resizing of arrays, in C++): a CLI that predicts with ONNX Runtime must start
without torch.
"""

import fnmatch
import glob
import io
import math
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.lib import format as npy_format
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageChops, ImageOps, JpegImagePlugin, UnidentifiedImageError

from mnist_core.data.idx import IMAGE_MAGIC, IMAGE_SIDE, LABEL_MAGIC, parse_idx, read_bytes
from mnist_core.errors import DataError

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
# Fashion-MNIST's own form; 3: photos of ink on paper: local paper level, lines and stray marks taken out, strokes
# brought to MNIST's width; 4: a digit filling a clean image: a stroke along its edge is not the table, a bar
# across it not a ruling, ink over half of it not the paper; 5: a JPEG of 1,000 px or more decoded reduced to no less
# than 500 px): prepared caches of the user's images are keyed by it.
IMAGE_FORM_VERSION = 5
MIN_SIDE = 8  # smaller than this cannot show a recognisable digit
DIGIT_BOX = 20  # MNIST fits each digit's longer side into 20 px, then centres its mass in 28x28
MIN_CONTRAST = 32  # grey levels between paper and ink below which we call the image blank
SPECK_MASS = 1e-4  # share of the ink's mass a row or column may hold and still be left out of the digit's box
NOISE_SIGMAS = 6.0  # background noise above paper level kept out of the ink, in robust standard deviations
STROKE_SCALE = 4  # strokes are measured and evened out at 4x the digit box (80 px), where a width step is 1/4 px
STROKE_WIDTH = (7.0, 14.0)  # px at 80 px: MNIST's strokes (about 2-3 px at 20 px) lie in between


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


def _grayscale(image: Image.Image | np.ndarray, darkest: bool = False) -> np.ndarray:
    """Float grey levels 0-255; transparency composited on paper that contrasts with the ink (a PNG's transparent
    area is no ink). `darkest`: a colour image's darkest channel instead of its luma, where blue or red ink stands
    out from white paper (and from light blue grid lines) far more than in grey."""
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] in (3, 4) and image.dtype == np.uint8:
            return _grayscale(Image.fromarray(image), darkest)
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
        raw = np.asarray(image, dtype=np.float32)
        finite = raw[np.isfinite(raw)]
        # The range is the finite values' (an inf pixel once made a 0-1 picture read as 0-255: a blank page).
        unit = finite.size == 0 or float(finite.max()) <= 1
        return np.clip(np.nan_to_num(raw * 255 if unit else raw, nan=0.0, posinf=255.0, neginf=0.0), 0, 255)
    if image.mode in ("L", "RGB") and "transparency" not in image.info:  # opaque: nothing to composite
        if darkest and image.mode == "RGB":
            red, green, blue = image.split()  # Pillow's per-pixel minimum is many times numpy's over a colour axis
            return np.asarray(ImageChops.darker(ImageChops.darker(red, green), blue), dtype=np.float32)
        return np.asarray(image if image.mode == "L" else ImageOps.grayscale(image), dtype=np.float32)
    try:
        rgba = image.convert("RGBA")
    except ValueError as error:
        raise DataError(f"cannot convert image mode {image.mode} to grey ({error})") from error
    composited = Image.alpha_composite(Image.new("RGBA", rgba.size, _paper_behind(rgba)), rgba)
    if darkest:
        return np.asarray(composited.convert("RGB"), dtype=np.float32).min(axis=2)
    return np.asarray(ImageOps.grayscale(composited), dtype=np.float32)


def _extent(profile: np.ndarray) -> tuple[int, int]:
    """Start and end of the ink along one axis, leaving out the last 0.01% of its mass at either side: a fleck of dust
    or a noise pixel far from the digit must not stretch the box the digit is scaled to."""
    mass = np.cumsum(profile)
    start = int(np.searchsorted(mass, mass[-1] * SPECK_MASS, side="right"))
    return start, max(start + 1, int(np.searchsorted(mass, mass[-1] * (1 - SPECK_MASS))) + 1)


def _median(values: np.ndarray) -> np.floating:
    """np.median, by the same partition, without its argument handling (~2 us of its ~11): a served 28x28 image
    takes four, on its border (issue 31; equal to np.median's, tests/data/test_images.py)."""
    flat = np.ravel(values)
    half = len(flat) // 2
    if len(flat) == 0:
        return np.median(flat)
    if len(flat) % 2:
        return np.partition(flat, half)[half]
    low, high = np.partition(flat, (half - 1, half))[half - 1 : half + 1]
    return (low + high) / 2  # np.mean of the two, in their own dtype, as np.median takes it


def _percentile(values: np.ndarray, q: float) -> np.floating:
    """np.percentile's default (linear) method on a 1-D array, as numpy computes it, in ~2 us instead of ~26."""
    count = len(values)
    if count == 0:
        return np.percentile(values, q)
    virtual = (count - 1) * (q / 100)
    below = int(virtual)
    above = min(below + 1, count - 1)
    part = np.partition(values, (below, above))
    low, high, fraction = part[below], part[above], virtual - below
    step = high - low
    return high - step * (1 - fraction) if fraction >= 0.5 else low + step * fraction


def _offset(profile: np.ndarray) -> int:
    """Where to paste so the centre of mass lands on pixel 14, where MNIST's own digits have it on average."""
    # np.average's own operations (float64 products and sum), without its argument handling: the same centre.
    centre = np.multiply(np.arange(len(profile)), profile, dtype=np.float64).sum() / profile.sum(dtype=np.float64)
    return int(np.clip(round(IMAGE_SIDE / 2 - centre), 0, IMAGE_SIDE - len(profile)))


# ---------------------------------------------------------------- photos of handwriting on paper
# A phone photo of a digit is not a scan: its light falls off to one side, the paper may be ruled or squared, the
# ink may be blue or red, and the digit may be small and anywhere. The paper's level is estimated locally, lines that
# cross the whole page are taken out, and only the marks that make the digit are kept.
WORK_SIDE = 1024  # longer side the photo is reduced to first: a 12-megapixel photo costs what a 1-megapixel one does
# A JPEG is decoded at the smallest of libjpeg's 1/2, 1/4, 1/8 scales that keeps this longer side (issue 31): a
# 1000 px photo at 500 px costs a third of its full decode and preparation; benchmarks/photos.py --size measures
# what it does to the answers (docs/photos.md).
DECODE_SIDE = 500
# A digit found smaller than this (px, longer side) on a photo decoded reduced is read again from a finer decode
# (<= WORK_SIDE, as before DECODE_SIDE): below the 80 px box its strokes are evened in, the 1/8 decode of a phone
# photo lost small digits (17 of 20 read at 80 px tall in 4032x3024, against 20 of 20).
SMALL_DIGIT = 80
PAPER_BLOCKS = 24  # the paper's level is estimated in about this many blocks along the longer side
OFF_PAGE = 0.4  # blocks darker than this share of the brightest paper are not paper (light falls off less)
PAPER_CLOSING = 2  # blocks: ink up to about 2 * 2 + 1 blocks wide (a thick marker) is not mistaken for shade
GRID_CELLS = 192  # the connected marks are found on a grid of at most this many cells a side
LINE_SPAN = 0.6  # share of the page a straight mark must cross to be a ruled or squared paper's line
FULL_SPAN = 0.9  # a lone line crossing this share of the page is the paper's (a margin), not a stroke
LONE_LINE_WIDTH = 0.012  # a lone line is at most this share of the page thick: printed, not a pen's stroke
LINE_WIDTH = 0.015  # a ruling's lines are at most this share of the page thick (plus blur)
MIN_RULED_SIDE = 96  # px: a picture narrower than this is a crop of a digit, not of ruled paper
MIN_LINES = 3  # parallel lines that make a ruling: a digit's own stroke (the bar of a 7) is one line at most
SKEWS = np.deg2rad(np.arange(-6.0, 6.01, 0.5))  # how far a photo of ruled paper may be turned, in steps
PART_MASS = 0.12  # share of the digit's ink a nearby mark must hold to be part of it (a 5's detached bar)
OTHER_DIGIT = 0.35  # a separate mark holding this share of the ink and most of the digit's height is a second digit


def _square(radius: int) -> np.ndarray:
    """The (2r+1)^2 window of a max or min filter (OpenCV's dilation or erosion)."""
    return cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))


def _grown(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """A boolean grid with every marked cell grown by `radius` cells each way (a max filter)."""
    return cv2.dilate(mask.astype(np.uint8), _square(radius)).astype(bool)


def _paper_level(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's own brightness at each pixel: a bright percentile per block (the ink is a minority of most
    blocks), closed (max then min over blocks) so a block wholly inked by a marker takes its neighbours' level while
    a smooth fall-off of the light survives, then interpolated back to full size. Also where the photo shows no
    paper (the table beside the page, a deep shadow), with a block's margin: its edge against the page is no ink."""
    height, width = gray.shape
    block = max(4, math.ceil(max(height, width) / PAPER_BLOCKS))
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    padded = cv2.copyMakeBorder(gray, 0, rows * block - height, 0, cols * block - width, cv2.BORDER_REPLICATE)
    blocks = padded.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    level = np.partition(blocks, int(blocks.shape[2] * 0.9), axis=2)[:, :, int(blocks.shape[2] * 0.9)]
    # A picture narrower than a ruled page's crop is a digit cut out: no table beside it, and on its few blocks
    # every stroke lies along the edge.
    off_page = np.zeros(level.shape, dtype=bool)
    if min(height, width) >= MIN_RULED_SIDE:
        off_page = _grown(_beside_the_page(level < OFF_PAGE * np.percentile(level, 90)))
    # The edge repeated, as a block beyond the picture would see the same paper.
    level = cv2.morphologyEx(level, cv2.MORPH_CLOSE, _square(PAPER_CLOSING), borderType=cv2.BORDER_REPLICATE)
    # Block centres sit half a block in: resizing the grid to the padded size lines them up with the pixels.
    padded_size = (cols * block, rows * block)
    full = cv2.resize(level, padded_size, interpolation=cv2.INTER_LINEAR)[:height, :width]
    return np.maximum(full, 1.0), _enlarged(off_page, block)[:height, :width]


def _beside_the_page(dark: np.ndarray) -> np.ndarray:
    """Which of the dark blocks (`dark`, a boolean grid) are the table or a shadow beside the page: the closing in
    `_paper_level` would paint them as paper, and their edge against the page as ink.

    Such a region runs along a quarter or more of the picture's edge and reaches into the picture no deeper than it
    is thick: it is a band (or a corner) along the edge, ending at the page. A tightly cropped digit's stroke may
    also run along the edge (a 2's foot, a 7's bar, a 0 touching all four sides), but it goes on into the picture
    (the 2's diagonal, the 0's sides): far deeper from the edge than the stroke is thick. Taken for the table, it
    was cut out of the digit, which was then refused as blank or as two digits."""
    count, labels = cv2.connectedComponents(dark.astype(np.uint8))
    if count == 1:
        return dark  # nothing dark
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    along = np.bincount(border, minlength=count) >= max(dark.shape) / 4
    along[0] = False  # the blocks that are not dark
    if not along.any():
        return np.zeros_like(dark)
    # Thickness: blocks to the nearest non-dark block, the outside of the picture counting as dark (a band along
    # the edge is as thick as it is deep). Reach: blocks from the picture's nearest edge.
    padded = cv2.copyMakeBorder(dark.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=1)
    thickness = cv2.distanceTransform(padded, cv2.DIST_C, 3)[1:-1, 1:-1]
    rows, cols = np.indices(dark.shape)
    reach = np.minimum(np.minimum(rows, dark.shape[0] - 1 - rows), np.minimum(cols, dark.shape[1] - 1 - cols)) + 1
    thickest = np.zeros(count)
    np.maximum.at(thickest, labels.ravel(), thickness.ravel())
    deepest = np.zeros(count)
    np.maximum.at(deepest, labels.ravel(), reach.ravel())
    return np.isin(labels, np.flatnonzero(along & (deepest <= thickest + 1)))


def _enlarged(grid: np.ndarray, factor: int) -> np.ndarray:
    """A boolean grid with each cell made `factor` x `factor` pixels. INTER_NEAREST_EXACT takes pixel centres in
    fixed point: INTER_NEAREST's floor(x * (1 / factor)) falls a pixel short at some factors (49 * (1 / 49) < 1)."""
    size = (grid.shape[1] * factor, grid.shape[0] * factor)
    return cv2.resize(grid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)


# The turns' tangents as math.tan gives them (numpy's tan may differ in the last bit, and move a mark that lies
# half-way between two rows to the other one).
TANGENTS = np.array([math.tan(turn) for turn in SKEWS])


def _turned_rows(marked: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The turn (within 6 degrees) at which the marks of `marked` (uint8) line up best along its rows, as where each
    column lies on the turned rows (a mark at (y, x) is on turned row y + shift[x]) and the marks per turned row.
    None when the picture is too small or holds too few marks for a ruling.

    The marks are projected with a shear, not a rotation: at 6 degrees at most the two are alike, and a histogram of
    the marks' turned rows (np.bincount) costs a fraction of turning the whole picture once per turn."""
    height, width = marked.shape
    points = cv2.findNonZero(marked)  # (x, y) row by row, as np.nonzero orders them; None when there are none
    if points is None or len(points) < width * LINE_SPAN or min(height, width) < MIN_RULED_SIDE:
        return None
    xs, ys = np.ascontiguousarray(points.reshape(-1, 2).T)  # int32; (N, 1, 2) in OpenCV 4, (N, 2) in 5
    # Rows are numbered from `width` above the page, so that no turn makes one negative.
    shifts = (width - np.rint(np.arange(width) * TANGENTS[:, None])).astype(np.int32)
    # The turn at which the rows' profile is sharpest is the ruling's; a quarter of the marks find it as well.
    few_ys, few_xs = ys[::4].copy(), xs[::4].copy()
    turn = max(range(len(SKEWS)), key=lambda i: int(np.bincount(few_ys + shifts[i][few_xs]).max()))
    return shifts[turn], np.bincount(ys + shifts[turn][xs], minlength=height + 2 * width)


def _line_rows(counts: np.ndarray, height: int, width: int, lone: bool) -> np.ndarray | None:
    """The turned rows of the paper's lines, with their blurred edges: a ruling (at least three lines over 60 % of
    the page), or with `lone` one thin line over 90 % of it; None when there are none."""
    if lone:
        lines = counts > FULL_SPAN * width
        if not lines.any() or np.count_nonzero(lines) > max(3, LONE_LINE_WIDTH * width):
            return None  # none, or as thick as a pen's stroke
    else:
        # Runs of consecutive rows over the span (components of a one-row image): a printed line is thin, a stroke
        # along the page (a tightly cropped 1) or a blot is not.
        thickest = max(3, LINE_WIDTH * height)
        _, runs, stats, _ = cv2.connectedComponentsWithStats((counts > LINE_SPAN * width).astype(np.uint8)[None])
        thin = stats[:, cv2.CC_STAT_WIDTH] <= thickest
        thin[0] = False  # the rows between the runs
        lines = thin[runs[0]]
        # Only a sharp peak counts as a line of a ruling: the rows beside a printed line are paper, so it is thin at
        # half the span too. A thick stroke along the page (a digit's bar on a picture it fills) crosses the span
        # in several thin runs where its marks per row waver around it, but it is wide at half the span.
        _, wide, stats, _ = cv2.connectedComponentsWithStats((counts > LINE_SPAN / 2 * width).astype(np.uint8)[None])
        sharp = stats[:, cv2.CC_STAT_WIDTH] <= 2 * thickest
        if len(np.unique(wide[0][lines & sharp[wide[0]]])) < MIN_LINES:
            return None
    return _grown(lines[None], 1)[0]  # a line's blurred edges: a row either side


def _remove_lines(ink: np.ndarray, marked: np.ndarray) -> tuple[np.ndarray, float]:
    """Take out straight marks that cross most of the page (ruled or squared paper), turned by up to 6 degrees:
    the strength of each line is subtracted along it, so ink crossing a line keeps what it has above the line.
    On ruled paper, a lone thin line across all of the page the other way (its margin) goes too. Returns the ink
    and the strongest line's level (0 when none)."""
    # Lines along the rows, then along the columns (the page transposed): the same turned rows serve both passes.
    marked = marked.astype(np.uint8)
    turned = [_turned_rows(marked), _turned_rows(cv2.transpose(marked))]
    strongest = 0.0
    for lone in (False, True):  # rulings first: a margin is looked for only on a ruled page, never in a tight crop
        if lone and not strongest:
            break
        for transposed, found in enumerate(turned):
            if found is None:
                continue
            shifts, counts = found
            height = ink.shape[transposed]  # of the page as searched (transposed or not)
            lines = _line_rows(counts, height, len(shifts), lone)
            if lines is None:
                continue
            # The lines sheared back onto the page: column x of the searched page is turned rows shift[x] to
            # shift[x] + height - 1. Taken column by column, the mask comes out transposed (the page's own layout
            # when the page was searched transposed).
            on_line = sliding_window_view(lines, height)[shifts]
            on_line = on_line if transposed else cv2.transpose(on_line.view(np.uint8)).view(bool)
            values = ink[on_line]
            level = float(np.percentile(values, 75))
            ink[on_line] = np.clip(values - level, 0, None)
            strongest = max(strongest, level)
    return ink, strongest


def _digit_mask(strong: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The pixels near the marks that make the digit: the heaviest connected mark and the marks close to it;
    DataError when a second mark as big stands beside it (two digits) instead of being merged with it."""
    height, width = strong.shape
    cell = max(1, math.ceil(max(height, width) / GRID_CELLS))
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    weighed = np.where(strong, weight, 0)
    weighed = cv2.copyMakeBorder(weighed, 0, rows * cell - height, 0, cols * cell - width, cv2.BORDER_CONSTANT)
    mass = weighed.reshape(rows, cell, cols, cell).sum(axis=(1, 3))
    grid = _grown(mass > 0).astype(np.uint8)  # gaps of a cell or two in a stroke do not split it
    # Wu's algorithm numbers the marks in the order their first cells come row by row, as np.argmax's tie-break
    # below expects (OpenCV's default scans 2x2 blocks, and numbers in that order).
    count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(grid, 8, cv2.CV_32S, cv2.CCL_WU)
    masses = np.bincount(labels.ravel(), weights=mass.ravel(), minlength=count)[1:]
    stats = stats[1:]  # label 0: no mark
    tops, lefts = stats[:, cv2.CC_STAT_TOP], stats[:, cv2.CC_STAT_LEFT]
    boxes = np.column_stack([tops, tops + stats[:, cv2.CC_STAT_HEIGHT], lefts, lefts + stats[:, cv2.CC_STAT_WIDTH]])
    main = int(np.argmax(masses))
    top, bottom, left, right = boxes[main]
    size = max(bottom - top, right - left)
    keep = np.zeros(count, dtype=bool)  # per label, 0 included (never kept)
    keep[main + 1] = True
    for label in np.argsort(-masses):
        if label == main or masses[label] < PART_MASS * masses[main]:
            continue
        y0, y1, x0, x1 = boxes[label]
        gap = max(x0 - right, left - x1, 0)
        tall = (y1 - y0) >= 0.6 * (bottom - top)
        if masses[label] >= OTHER_DIGIT * masses[main] and tall and gap > 0.15 * (bottom - top):
            # No hint at --show-prepared: nothing was prepared to show, and HTTP clients have no such flag.
            raise DataError("two or more digits side by side: crop the picture to one digit")
        if max(y0 - bottom, top - y1, gap) <= 0.3 * size:  # a part of the digit: a 5's bar, a broken stroke
            keep[label + 1] = True
    return _enlarged(_grown(keep[labels]), cell)[:height, :width]


def _ink_on_paper(darkest: np.ndarray) -> np.ndarray:
    """The ink of a photo of dark marks on light paper, white on black, with the paper, its lines and stray marks
    taken out; DataError if no digit is found."""
    height, width = darkest.shape
    if max(height, width) > WORK_SIDE:
        scale = WORK_SIDE / max(height, width)
        size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
        # Pillow's box filter (whole pixels, by their centres), not OpenCV's INTER_AREA (fractions of pixels): the
        # thresholds below were set on what it gives.
        darkest = np.asarray(Image.fromarray(darkest, "F").resize(size, Image.BOX))
    paper, off_page = _paper_level(darkest)
    # Contrast relative to the local paper: ink in a shadow is as dark, relative to its paper, as ink in the light.
    ink = np.where(off_page, 0, np.clip(1 - darkest / paper, 0, 1) * 255)
    # The paper's statistics need no million pixels.
    sample = ink[:: 1 + ink.shape[0] // 300, :: 1 + ink.shape[1] // 300]
    # Share of the picture that is clearly ink: above the median, or above the paper's own level (0) when the
    # median itself is ink (a thick 0 or 2 that fills its frame).
    clear = 3 * MIN_CONTRAST
    inked = max(np.count_nonzero(sample > np.median(sample) + clear), np.count_nonzero(sample > clear)) / sample.size
    if inked > 0.3:
        # A tightly cropped thick digit: ink is not the minority, and the paper is the fainter part of the picture.
        # Its spread is measured on the fainter half of the paper (a truncated half, hence twice its deviation):
        # with the median itself, the floor would lie above the ink, and the digit be refused as blank.
        sample = sample[sample <= np.percentile(sample, 50 * (1 - inked))]
        spread = 2 * 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    else:
        spread = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    floor = float(np.median(sample)) + NOISE_SIGMAS * (spread + 0.5)
    ink, line_level = _remove_lines(ink, ink > floor)
    marked = ink > floor
    if np.count_nonzero(marked) < MIN_SIDE:
        raise DataError("no ink found: the image is blank")
    peak = float(np.percentile(ink[marked], 99))
    if peak < max(MIN_CONTRAST, 1.5 * line_level):
        raise DataError("no ink found: the image is blank" + (" (only the paper's lines)" if line_level else ""))
    strong = ink > max(floor, 0.4 * peak)
    digit = _digit_mask(strong, ink)
    return np.where(digit, np.clip(ink - floor, 0, None), 0).astype(np.float32)


def to_mnist_form(image: Image.Image | np.ndarray, dataset: str = "mnist") -> np.ndarray:
    """Bring a digit as a person makes it (dark ink on light paper, any size, anywhere, colour, JPEG noise) into the
    form MNIST itself was made in, so the model sees what it was trained on: white ink on black, longer side 20 px,
    centre of mass at the centre of 28x28.

    Dark marks on light paper (a photo or scan of handwriting, a drawing) go through `_ink_on_paper`, which copes
    with uneven light, ruled and squared paper, coloured ink and stray marks. Light marks on dark (a digit already
    in MNIST's colours) are read against the border's level, as MNIST's own digits are.

    A Fashion-MNIST item is brought to the form Zalando made that dataset in instead: trimmed to the item, its
    longer side scaled to the full 28 px, centred as a box, light on dark, its shading kept (not saturated like
    ink): an image already in that form comes out as it went in."""
    return _prepared(image, dataset)[0]


def _prepared(image: Image.Image | np.ndarray, dataset: str) -> tuple[np.ndarray, int | None]:
    """`to_mnist_form`, and for a photo of ink on paper the digit's longer side in the pixels it was found in."""
    fashion = dataset == "fashion-mnist"
    gray = _grayscale(image)
    height, width = gray.shape
    if min(height, width) < MIN_SIDE:
        raise DataError(f"{width}x{height} px is too small to hold a digit (need at least {MIN_SIDE} px a side)")
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    # Light paper: at the border, or over most of a photo (whose border may be partly the table; not a small
    # picture that a light item or digit fills).
    photo = min(height, width) >= MIN_RULED_SIDE and _median(gray[:: 1 + height // 200, :: 1 + width // 200]) > 127
    if not fashion and (_median(ring) > 127 or photo):
        ink = _ink_on_paper(_grayscale(image, darkest=True))
        (top, bottom), (left, right) = _extent(ink.sum(axis=1)), _extent(ink.sum(axis=0))
        return _framed(ink, photo=True), max(bottom - top, right - left)
    if fashion:  # an item in Fashion-MNIST's form fills the frame and may cover most of its border, not its corners
        ring = np.concatenate([gray[:2, :2], gray[:2, -2:], gray[-2:, :2], gray[-2:, -2:]], axis=None)
    if _median(ring) > 127:  # the border is paper: light paper means dark ink, MNIST wants the opposite
        gray, ring = 255 - gray, 255 - ring
    paper = float(_median(ring))
    # Robust standard deviation of the paper, plus half a level: 8-bit samples make the median deviation a whole level.
    noise = 1.4826 * float(_median(np.abs(ring - paper))) + 0.5
    ink = np.clip(gray - (paper + NOISE_SIGMAS * noise), 0, None)
    if float(gray.max()) - paper < MIN_CONTRAST or not ink.any():
        raise DataError("no ink found: the image is blank")
    if fashion:
        return _framed(np.clip(gray - paper, 0, None), fashion=True, box_of=ink), None  # the item's own shading
    return _framed(ink), None


def _framed(
    ink: np.ndarray, fashion: bool = False, photo: bool = False, box_of: np.ndarray | None = None
) -> np.ndarray:
    """Crop `ink` to the box of `box_of` (default: itself), scale and place it in 28x28 as MNIST (or Fashion-MNIST)
    did. `photo`: strokes are also brought to MNIST's width (a pencil's line or a marker's)."""
    marks = ink if box_of is None else box_of
    (top, bottom), (left, right) = _extent(marks.sum(axis=1)), _extent(marks.sum(axis=0))
    crop = ink[top:bottom, left:right]
    if not fashion:
        crop = crop * (255 / _percentile(ink[ink > 0], 95))  # stroke cores saturate as in MNIST
    crop = np.ascontiguousarray(crop, dtype=np.float32)
    if photo:
        crop = _mnist_strokes(crop)
    scale = (IMAGE_SIDE if fashion else DIGIT_BOX) / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    digit = np.clip(np.asarray(Image.fromarray(crop, "F").resize(size, Image.LANCZOS)), 0, 255)
    if fashion:  # the box centred
        top, left = (IMAGE_SIDE - digit.shape[0]) // 2, (IMAGE_SIDE - digit.shape[1]) // 2
    else:
        top, left = _offset(digit.sum(axis=1)), _offset(digit.sum(axis=0))
    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.rint(out).astype(np.uint8)


def _stroke_width(crop: np.ndarray) -> float:
    """Mean width of the strokes in pixels: twice the inked area over its edge (a stroke of width w and length L has
    area wL and 2L edge pixels)."""
    inked = (crop > 127).astype(np.uint8)
    # Inner pixels: inked with their four neighbours inked (an erosion by a cross); beyond the edge is no ink.
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    inner = cv2.erode(inked, cross, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    area = cv2.countNonZero(inked)
    return 2 * area / max(area - cv2.countNonZero(inner), 1)


def _mnist_strokes(crop: np.ndarray) -> np.ndarray:
    """The crop at 4x MNIST's digit box, its strokes thickened (a pencil's, a thin pen's on a big photo) or thinned
    (a marker's) to about MNIST's own width, which the model learnt: a hairline scaled down to 20 px would be a faint
    grey trace, a marker's stroke a blob."""
    scale = STROKE_SCALE * DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    image = Image.fromarray(crop, "F").resize(size, Image.BOX if scale < 1 else Image.BILINEAR)
    width = _stroke_width(np.asarray(image))
    if STROKE_WIDTH[0] <= width <= STROKE_WIDTH[1]:
        return np.asarray(image)
    size = 2 * round(abs(width - STROKE_WIDTH[0 if width < STROKE_WIDTH[0] else 1]) / 2) + 1
    if size == 1:
        return np.asarray(image)
    padded = cv2.copyMakeBorder(np.asarray(image), size, size, size, size, cv2.BORDER_CONSTANT)  # room to thicken
    # A max filter thickens, a min filter thins: dilation or erosion by a size x size square.
    evened = (cv2.dilate if width < STROKE_WIDTH[0] else cv2.erode)(padded, _square(size // 2))
    left, top, box_width, box_height = cv2.boundingRect((evened > 0).astype(np.uint8))  # what is left of the ink
    return evened[top : top + box_height, left : left + box_width] if box_width else np.asarray(image)


def _failed(name: str, problem: str) -> LoadedInput:
    return LoadedInput(name, None, f"{name}: {problem}")


def decode_reduced(image: Image.Image, side: int = DECODE_SIDE) -> int:
    """Before `image` is decoded: ask a JPEG's decoder for the smallest of its 1/2, 1/4 and 1/8 scales that keeps a
    longer side of at least `side` (and a shorter one of MIN_SIDE). libjpeg then skips most of the inverse DCT and
    colour conversion, and the memory: a 12-megapixel phone photo decodes to 504x378. From then on `image.size` is
    the size it decodes to, which pixel limits apply to. Returns the scale (1: other formats and small JPEGs are
    decoded as they are). A JPEG with a second picture in it (MPO: many phones' photos) is a JPEG too."""
    longer, shorter = max(image.size), min(image.size)
    scale = next((s for s in (8, 4, 2) if longer // s >= side and shorter // s >= MIN_SIDE), 1)
    if scale == 1 or not isinstance(image, JpegImagePlugin.JpegImageFile):
        return 1
    # Pillow picks the largest scale s with size // s >= the size asked for: asked for size // scale, that is scale.
    # Its draft mode is the file's own (the darkest colour channel needs RGB, not the luma that "L" would decode).
    image.draft(image.mode, (image.width // scale, image.height // scale))
    return scale


def over_limit(size: tuple[int, int], decoded: tuple[int, int], limit: int, whose: str = "the") -> str | None:
    """The one-line refusal of a picture of `size` that decodes to `decoded` (see `decode_reduced`) with more than
    `limit` pixels, or None when it is within the limit: the file's size, what it decodes to if less, the limit."""
    if decoded[0] * decoded[1] <= limit:
        return None
    reduced = f" (decoded reduced to {decoded[0]}x{decoded[1]})" if decoded != size else ""
    return f"{size[0]}x{size[1]} px{reduced} is over {whose} limit of {limit} pixels"


def load_image(path: Path, content: bytes | None = None, dataset: str = "mnist") -> LoadedInput:
    """Decode under our own pixel limit; Pillow raises many types for damaged files, all of which mean 'bad file'.
    `content`: the file's bytes, already read (decoded instead of reading `path`, which names them). `dataset`:
    whose form the image is brought to (`to_mnist_form`)."""
    name = str(path)
    if content is not None and not content:
        return _failed(name, "empty file")
    decoded = _decode(path, content, DECODE_SIDE)
    if isinstance(decoded, str):
        return _failed(name, decoded)
    img, scale = decoded
    try:
        image, digit_side = _prepared(img, dataset)
    except DataError as error:  # a digit a few pixels tall at this scale may be found at a finer one
        image, digit_side, problem = None, None, str(error)
    if scale > 1 and (image is None or (digit_side is not None and digit_side < SMALL_DIGIT)):
        # A small digit on a big photo: decoded again as the preparation would take it whole (<= WORK_SIDE).
        finer = _decode(path, content, WORK_SIDE)
        if isinstance(finer, str):
            return _failed(name, finer)
        if finer[1] < scale:
            try:
                image = _prepared(finer[0], dataset)[0]
            except DataError as error:
                return _failed(name, str(error))
    return LoadedInput(name, image, None) if image is not None else _failed(name, problem)


def _decode(path: Path, content: bytes | None, side: int) -> tuple[Image.Image, int] | str:
    """The picture decoded (a JPEG reduced to no less than `side`, see `decode_reduced`) and upright, with its
    scale; or the one-line problem."""
    try:
        # Our pixel limit, checked from the header, is below Pillow's own (which only warns first): a bomb is
        # refused before anything is decoded.
        # Pillow warns (a `warnings.warn(` line on stderr) before our own check can refuse the picture in one line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path if content is None else io.BytesIO(content), formats=PILLOW_FORMATS)
        with img:
            # The limit applies to what is decoded: a JPEG decoded reduced costs its reduced size.
            size = img.size
            scale = decode_reduced(img, side)
            refusal = over_limit(size, img.size, MAX_PIXELS)
            if refusal:
                return refusal
            img.load()
            return ImageOps.exif_transpose(img), scale  # phone photos are stored sideways with a rotation tag
    except Image.DecompressionBombError as error:
        return f"refused as a decompression bomb ({error})"
    except UnidentifiedImageError:
        return "not an image file Pillow can read"
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        return f"corrupt or truncated image ({type(error).__name__}: {error})"


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
