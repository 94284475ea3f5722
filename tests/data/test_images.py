"""User inputs to MNIST-form images: the preparation matches how MNIST was made, and no bad file costs the batch."""

import gzip
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from mnist_core.data import images
from mnist_core.data.images import MAX_PIXELS, LoadedInput, load_inputs, to_mnist_form
from mnist_core.errors import DataError
from tests.support import PROJECT_ROOT
from tests.support.images import best_shift_correlation, correlation, png_header, save_bytes
from tests.support.photos import make_photo, write_photos


def draw_seven(size: tuple[int, int] = (300, 200), at: tuple[int, int] = (40, 30), scale: float = 1.0,
               ink: str = "black", paper: str = "white", mode: str = "RGB") -> Image.Image:  # fmt: skip
    """A '7' drawn with a thick pen: 100x140 px at scale 1, its top-left corner at `at`."""
    image = Image.new(mode, size, paper)
    x, y = at
    draw = ImageDraw.Draw(image)
    draw.line([(x, y), (x + 100 * scale, y), (x + 40 * scale, y + 140 * scale)], fill=ink, width=round(12 * scale))
    return image


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    weights = image.astype(np.float64)
    return tuple(float(np.average(np.arange(28), weights=weights.sum(axis=1 - axis))) for axis in (0, 1))


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def write_idx(path: Path, array: np.ndarray, magic: int = 0x00000803) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good" / "seven.png"
    path.parent.mkdir()
    draw_seven().save(path)
    return path


# ---------------------------------------------------------------- to_mnist_form


def test_mnist_form_of_a_drawing() -> None:
    out = to_mnist_form(draw_seven(size=(640, 480), at=(400, 250), ink="#203080", paper="#e8e0c8"))
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    row, col = centre_of_mass(out)
    assert 13.5 <= row <= 14.5 and 13.5 <= col <= 14.5
    assert max(ink_box(out)) in (19, 20)
    assert np.median(out) == 0 and out[0, 0] == 0  # inverted: black background, white ink
    assert out.max() >= 250


def test_same_digit_whatever_its_size_place_and_colours() -> None:
    reference = to_mnist_form(draw_seven(size=(150, 200), at=(10, 10)))
    for variant in [
        draw_seven(size=(1200, 900), at=(700, 100), scale=4, ink=(90, 20, 20), paper=(210, 220, 235)),
        draw_seven(size=(300, 400), at=(5, 200), scale=1.2, ink="white", paper="black"),  # already light on dark
        draw_seven(mode="L", ink=40, paper=215),
    ]:
        assert best_shift_correlation(to_mnist_form(variant), reference) > 0.9


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_background_is_paper(mode: str) -> None:
    clear = (0,) * len(mode)  # transparent *black*: read without alpha it would be a black page with black ink
    out = to_mnist_form(draw_seven(mode=mode, ink=(0,) * (len(mode) - 1) + (255,), paper=clear))
    assert out.max() >= 250 and out[0].max() == 0


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_light_ink_on_a_transparent_background_is_not_lost(mode: str) -> None:
    """A digit drawn in white on a transparent canvas (what MNIST-style drawing apps export): on white paper it
    would vanish; it is composited on black instead."""
    reference = to_mnist_form(draw_seven(mode="L"))
    for clear in [(0,) * len(mode), (255,) * (len(mode) - 1) + (0,)]:  # transparent black, transparent white
        drawn = draw_seven(mode=mode, ink=(255,) * len(mode), paper=clear)
        assert correlation(to_mnist_form(drawn), reference) > 0.99


@pytest.mark.parametrize("clear", ["rounded corners", "a margin"])
def test_a_canvas_with_transparent_corners_or_margin_keeps_its_paper(clear: str) -> None:
    """Found in review: a white canvas whose corners (or margin) are transparent had its clear part composited on
    black, which then read as ink."""
    reference = to_mnist_form(draw_seven(size=(200, 200)))
    canvas = np.array(draw_seven(size=(200, 200), mode="RGBA", ink=(0, 0, 0, 255), paper=(255, 255, 255, 255)))
    rows, cols = np.mgrid[0:200, 0:200]
    x, y = np.minimum(cols, 199 - cols), np.minimum(rows, 199 - rows)
    if clear == "rounded corners":
        canvas[(x < 12) & (y < 12) & ((x - 12) ** 2 + (y - 12) ** 2 > 144), 3] = 0
    else:
        canvas[(x < 10) | (y < 10), 3] = 0
    assert correlation(to_mnist_form(Image.fromarray(canvas)), reference) > 0.99


def test_float_and_16_bit_grey_holding_other_ranges() -> None:
    """Float images (TIFF) in 0-1, and 16-bit files holding 8-bit values, are not read as black pages."""
    reference = to_mnist_form(draw_seven(mode="L"))
    gray = np.asarray(draw_seven(mode="L"), dtype=np.float32)
    for image in [Image.fromarray(gray / 255, "F"), Image.fromarray(gray, "F"),
                  Image.fromarray(gray.astype(np.uint16)), Image.fromarray(gray.astype(np.int32))]:  # fmt: skip
        assert correlation(to_mnist_form(image), reference) > 0.99, image.mode
    # A non-finite pixel (found by a new user's try: one +inf made a 0-1 picture read as 0-255, "not a digit").
    unit = gray / 255
    unit[0, 0], unit[0, 1], unit[1, 0] = np.inf, np.nan, -np.inf
    assert correlation(to_mnist_form(Image.fromarray(unit, "F")), reference) > 0.99


def fashion_item() -> np.ndarray:
    """A Fashion-MNIST-like item in the dataset's form: a shaded garment filling the frame's height, light on black."""
    item = np.zeros((28, 28), dtype=np.uint8)
    rows, cols = np.mgrid[0:28, 0:18]
    item[:, 5:23] = np.minimum(90 + 5 * rows + 3 * cols, 230)  # shaded, not saturated
    item[3:10, 2:5] = item[3:10, 23:26] = 120  # sleeves
    return item


def test_a_fashion_item_is_brought_to_fashion_mnists_form_not_a_digits() -> None:
    """Found by a new user: PNGs of Fashion-MNIST's own test images, prepared like digits (a 20 px box, saturated
    ink), scored 42.7 % where the same pixels as .npy scored 88.7 %; prepared in Fashion-MNIST's form, 85.7 %."""
    item = fashion_item()
    wide = item.copy()
    wide[3:12, :] = 150  # sleeves to both edges: most of the border is the item (found in review: read as paper)
    assert correlation(to_mnist_form(wide, "fashion-mnist"), wide) > 0.97
    as_fashion = to_mnist_form(item, "fashion-mnist")
    assert correlation(as_fashion, item) > 0.97 and np.abs(as_fashion.astype(int) - item).mean() < 12
    assert ink_box(as_fashion)[0] == 28 and max(ink_box(to_mnist_form(item))) == 20  # the digit form shrinks it
    photo = Image.new("L", (320, 240), 245)  # dark item on white paper, 5x, off-centre
    photo.paste(Image.fromarray(255 - item).resize((140, 140), Image.BICUBIC), (150, 60))
    assert correlation(to_mnist_form(photo, "fashion-mnist"), item) > 0.95


def test_inputs_are_brought_to_the_models_datasets_form(tmp_path: Path) -> None:
    Image.fromarray(fashion_item()).save(tmp_path / "item.png")
    (fashion,) = load_inputs([tmp_path / "item.png"], "fashion-mnist")
    (digit,) = load_inputs([tmp_path / "item.png"])
    assert ink_box(fashion.image)[0] == 28 and max(ink_box(digit.image)) == 20


def test_palette_with_transparency_and_16_bit() -> None:
    reference = to_mnist_form(draw_seven(mode="L"))
    palette = draw_seven(mode="L").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert correlation(to_mnist_form(palette), reference) > 0.99
    sixteen = Image.fromarray(np.asarray(draw_seven(mode="L"), dtype=np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    assert correlation(to_mnist_form(sixteen), reference) > 0.99


def test_arrays_are_accepted() -> None:
    gray = np.asarray(draw_seven(mode="L"))
    reference = to_mnist_form(gray)
    assert correlation(to_mnist_form(gray / 255.0), reference) > 0.99
    assert correlation(to_mnist_form(np.asarray(draw_seven(ink="navy"))), reference) > 0.95
    with pytest.raises(DataError, match="shape"):
        to_mnist_form(np.zeros((28, 28, 5), dtype=np.uint8))


def test_jpeg_noise_and_paper_texture_are_not_ink() -> None:
    rng = np.random.default_rng(0)
    paper = np.clip(225 + rng.normal(0, 4, (300, 400)), 0, 255).astype(np.uint8)
    noisy = Image.open(io.BytesIO(save_bytes(Image.fromarray(paper), "JPEG", quality=85)))
    with pytest.raises(DataError, match="no ink found: the image is blank"):
        to_mnist_form(noisy)
    drawing = np.minimum(paper, np.asarray(draw_seven(size=(400, 300), mode="L")))
    out = to_mnist_form(drawing)
    assert correlation(out, to_mnist_form(draw_seven(mode="L"))) > 0.95
    assert max(ink_box(out)) in (19, 20)  # noise far from the digit did not stretch its box


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (Image.new("RGB", (200, 100), "white"), "no ink found: the image is blank"),
        (Image.new("L", (64, 64), 0), "no ink found: the image is blank"),
        (Image.new("L", (64, 64), 128), "no ink found: the image is blank"),
        (Image.new("L", (1, 1), 0), "1x1 px is too small to hold a digit"),
        (Image.new("L", (30, 5), 0), "30x5 px is too small to hold a digit"),
    ],
)
def test_what_holds_no_digit_is_refused(image: Image.Image, message: str) -> None:
    with pytest.raises(DataError, match=message):
        to_mnist_form(image)


def test_mnist_digits_come_out_as_themselves(mnist_tensors: dict) -> None:
    digits = mnist_tensors["test_images"][:300].numpy()
    for digit in digits:
        assert best_shift_correlation(to_mnist_form(digit), digit) > 0.97


def test_photos_of_mnist_digits_come_back_as_the_digits(mnist_tensors: dict, tmp_path: Path) -> None:
    """Dark ink on light, tinted, noisy paper, 3-8x larger and off-centre, PNG and JPEG: prepared, they must match
    the original digits. (Accuracy of a trained model on them is measured elsewhere.)"""
    digits = mnist_tensors["test_images"][:500].numpy()
    started = time.perf_counter()
    paths = write_photos(digits, tmp_path / "photos", seed=0)
    loaded = load_inputs([tmp_path / "photos"])
    assert [row.name for row in loaded] == [str(path) for path in paths]
    assert [row.error for row in loaded] == [None] * len(digits)
    scores = np.array([correlation(row.image, digit) for row, digit in zip(loaded, digits, strict=True)])
    print(f"photo->MNIST correlation over {len(digits)} digits: mean {scores.mean():.3f}, "
          f"5th percentile {np.percentile(scores, 5):.3f} ({time.perf_counter() - started:.1f} s)")  # fmt: skip
    assert scores.mean() > 0.85, scores.mean()
    assert np.percentile(scores, 5) > 0.6
    one = to_mnist_form(make_photo(digits[0], np.random.default_rng(1)))
    assert correlation(one, digits[0]) > 0.8


# ---------------------------------------------------------------- load_inputs: bad inputs


def _text_as_png(tmp: Path) -> tuple[Path, str]:
    (tmp / "notes.png").write_text("these are my notes, not a picture\n")
    return tmp / "notes.png", "not an image file"


def _random_bytes(tmp: Path) -> tuple[Path, str]:
    (tmp / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    return tmp / "noise.jpg", "not an image file"


def _tiny(tmp: Path) -> tuple[Path, str]:
    Image.new("L", (1, 1), 0).save(tmp / "dot.png")
    return tmp / "dot.png", "1x1 px is too small to hold a digit"


def _white(tmp: Path) -> tuple[Path, str]:
    Image.new("RGB", (200, 200), "white").save(tmp / "white.png")
    return tmp / "white.png", "no ink found: the image is blank"


def _bomb_for_pillow(tmp: Path) -> tuple[Path, str]:
    (tmp / "bomb.png").write_bytes(png_header(50_000, 50_000))
    return tmp / "bomb.png", "decompression bomb"


def _bomb_warning(tmp: Path) -> tuple[Path, str]:  # over Pillow's warning limit (it only warns): ours refuses it
    (tmp / "big.png").write_bytes(png_header(10_000, 10_000))
    return tmp / "big.png", f"10000x10000 px is over the limit of {MAX_PIXELS} pixels"


def _over_our_limit(tmp: Path) -> tuple[Path, str]:  # under Pillow's limits: only our own check stops it
    (tmp / "large.png").write_bytes(png_header(7_000, 6_000))
    return tmp / "large.png", f"7000x6000 px is over the limit of {MAX_PIXELS} pixels"


def _empty_folder(tmp: Path) -> tuple[Path, str]:
    (tmp / "empty").mkdir()
    return tmp / "empty", f"no images in folder {tmp / 'empty'}"


def _folder_of_text(tmp: Path) -> tuple[Path, str]:
    (tmp / "texts").mkdir()
    (tmp / "texts" / "notes.txt").write_text("hello")
    return tmp / "texts", "no images in folder"


def _unmatched_glob(tmp: Path) -> tuple[str, str]:
    return str(tmp / "*.png"), "no images match the pattern"


def _missing(tmp: Path) -> tuple[Path, str]:
    return tmp / "nowhere" / "digit.png", "no such file or folder"


def _npy(array: np.ndarray, message: str, **save: bool) -> Callable[[Path], tuple[Path, str]]:
    def make(tmp: Path) -> tuple[Path, str]:
        np.save(tmp / "digits.npy", array, **save)
        return tmp / "digits.npy", message

    return make


def _npy_garbage(tmp: Path) -> tuple[Path, str]:
    (tmp / "fake.npy").write_bytes(b"not numpy at all")
    return tmp / "fake.npy", "not a readable .npy file"


def _idx_labels(tmp: Path) -> tuple[Path, str]:
    return write_idx(tmp / "t10k-labels-idx1-ubyte.gz", np.arange(5), magic=0x00000801), "holds labels, not images"


def _idx_cut(name: str, cut: int, message: str) -> Callable[[Path], tuple[Path, str]]:
    """An IDX file of 3 images with its last `cut` bytes gone (raw, or gzip when `name` ends in .gz)."""

    def make(tmp: Path) -> tuple[Path, str]:
        path = write_idx(tmp / name, np.zeros((3, 28, 28)))
        path.write_bytes(path.read_bytes()[:-cut])
        return path, message

    return make


def _idx_gzip_bomb(tmp: Path) -> tuple[Path, str]:
    # 1 GB of zeros compresses to ~1 MB: refused at the limit, never decompressed whole.
    path = tmp / "bomb-idx3-ubyte.gz"
    header = (0x803).to_bytes(4, "big") + (1_300_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(header)
        zeros = bytes(1 << 24)
        for _ in range(1_300_000 * 784 // len(zeros) + 1):
            stream.write(zeros)
    return path, "decompresses to more than"


def _npy_huge_header(tmp: Path) -> tuple[Path, str]:
    # A 1 KB file whose header declares a billion images: refused before numpy allocates 730 GiB.
    path = tmp / "huge.npy"
    np.save(path, np.zeros((1, 28, 28), np.uint8))
    content = path.read_bytes().replace(b"(1, 28, 28)", b"(1000000000, 28, 28)")
    path.write_bytes(content)
    return path, "the header declares"


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


BAD_INPUTS = {
    "text named .png": _text_as_png,
    "random bytes": _random_bytes,
    "1x1 image": _tiny,
    "all white": _white,
    "bomb (pillow error)": _bomb_for_pillow,
    "bomb (pillow warning)": _bomb_warning,
    "over MAX_PIXELS": _over_our_limit,
    "empty folder": _empty_folder,
    "folder without images": _folder_of_text,
    "glob matching nothing": _unmatched_glob,
    "missing path": _missing,
    "npy wrong shape": _npy(np.zeros((4, 28, 27), np.uint8), "shape (4, 28, 27) dtype uint8"),
    "npy no images": _npy(np.zeros((0, 28, 28), np.uint8), "shape (0, 28, 28) dtype uint8"),
    "npy int64": _npy(np.zeros((2, 28, 28), np.int64), "shape (2, 28, 28) dtype int64"),
    "npy object": _npy(np.array([None, 1], dtype=object), "shape (2,) dtype object", allow_pickle=True),
    "npy NaN": _npy(np.full((2, 28, 28), np.nan, np.float32), "shape (2, 28, 28) dtype float32: float values"),
    "npy over 1": _npy(np.full((28, 28), 2.0), "shape (28, 28) dtype float64: float values must be finite"),
    "npy garbage": _npy_garbage,
    "IDX labels": _idx_labels,
    "IDX truncated": _idx_cut("images-idx3-ubyte", 100, "header declares shape (3, 28, 28)"),
    "IDX gzip bomb": _idx_gzip_bomb,
    "IDX gzip cut": _idx_cut("cut-idx3-ubyte.gz", 12, "corrupt or truncated gzip"),
    "IDX no images": lambda tmp: (write_idx(tmp / "none-idx3-ubyte", np.zeros((0, 28, 28))), "holds no images"),
    "npy header lies": _npy_huge_header,
    "empty .png": lambda tmp: (_write(tmp / "empty.png", b""), "empty.png: empty file"),
    "empty .npy": lambda tmp: (_write(tmp / "empty.npy", b""), "empty.npy: empty file"),
    "EPS named .png": lambda tmp: (
        _write(tmp / "eps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"),
        "not an image file Pillow can read",
    ),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_input_is_a_row_naming_file_and_problem(case: str, tmp_path: Path, good: Path) -> None:
    spec, message = BAD_INPUTS[case](tmp_path)
    rows = load_inputs([good, spec, good])
    assert [row.name for row in rows] == [str(good), str(spec), str(good)]
    bad = rows[1]
    assert bad.image is None and bad.error is not None and "\n" not in bad.error
    assert str(spec) in bad.error and message in bad.error, bad.error
    for row in (rows[0], rows[2]):  # nothing lost around it
        assert row.error is None and row.image is not None and row.image.shape == (28, 28)


@pytest.mark.parametrize("fraction", [0, 0.0006, 0.01, 0.2, 0.5, 0.8, 0.97])
def test_a_truncated_png_is_a_row(fraction: float, tmp_path: Path, good: Path) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    content = save_bytes(Image.fromarray(noisy), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(content[: max(9, int(len(content) * fraction))])
    rows = load_inputs([path, good])
    assert rows[0].image is None and str(path) in rows[0].error, rows[0]
    assert "corrupt or truncated image" in rows[0].error or "not an image file" in rows[0].error
    assert rows[1].error is None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nobody made Pillow pad truncated images with grey


def test_an_unreadable_file_is_a_row(tmp_path: Path, good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked.png"
    draw_seven().save(locked)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the read fail as it would for a user
        real_open = open

        def refusing_open(file: object, *args: object, **kwargs: object) -> object:
            if Path(str(file)) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(images, "open", refusing_open, raising=False)
    try:
        rows = load_inputs([locked, good])
    finally:
        locked.chmod(0o644)
    assert rows[0] == LoadedInput(str(locked), None, f"{locked}: cannot read (Permission denied)")
    assert rows[1].error is None


def test_a_file_named_explicitly_is_always_tried(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    [row] = load_inputs([tmp_path / "notes.txt"])
    assert row.error == f"{tmp_path / 'notes.txt'}: not an image file Pillow can read"


# ---------------------------------------------------------------- load_inputs: arrays, IDX, folders, globs


def test_npy_files_are_used_as_they_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "stack.npy", stack)
    np.save(tmp_path / "floats.npy", stack[:2].astype(np.float32) / 255)
    np.save(tmp_path / "one.npy", stack[0].astype(np.float64) / 255)
    rows = load_inputs([tmp_path / "stack.npy", tmp_path / "floats.npy", tmp_path / "one.npy"])
    names = [f"{tmp_path / 'stack.npy'}[{i}]" for i in range(3)] + [f"{tmp_path / 'floats.npy'}[{i}]" for i in range(2)]
    assert [row.name for row in rows] == [*names, f"{tmp_path / 'one.npy'}[0]"]
    for row, expected in zip(rows, [*stack, *stack[:2], stack[0]], strict=True):
        assert row.error is None and row.image.dtype == np.uint8
        np.testing.assert_array_equal(row.image, expected)  # no re-centring of what is already MNIST form


@pytest.mark.parametrize("name", ["digits-idx3-ubyte", "digits-idx3-ubyte.gz", "digits.bin"])
def test_idx_image_files_are_detected_by_content(name: str, tmp_path: Path) -> None:
    stack = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, stack)
    rows = load_inputs([path])
    assert [row.name for row in rows] == [f"{path}[{i}]" for i in range(4)]
    np.testing.assert_array_equal(np.stack([row.image for row in rows]), stack)


def test_folders_and_globs_expand_in_sorted_order(tmp_path: Path) -> None:
    for name in ["b.png", "a.jpg", "c.PNG"]:
        draw_seven().save(tmp_path / name, format="PNG" if name.lower().endswith("png") else "JPEG")
    np.save(tmp_path / "d.npy", np.zeros((2, 28, 28), np.uint8) + 9)
    write_idx(tmp_path / "e-idx3-ubyte", np.zeros((1, 28, 28)) + 7)
    (tmp_path / "notes.txt").write_text("skipped silently")
    (tmp_path / "sub").mkdir()
    draw_seven().save(tmp_path / "sub" / "f.png")

    names = [row.name for row in load_inputs([tmp_path])]
    assert [Path(name).name for name in names] == ["a.jpg", "b.png", "c.PNG", "d.npy[0]", "d.npy[1]", "e-idx3-ubyte[0]"]
    assert all(row.error is None for row in load_inputs([tmp_path]))
    assert [Path(row.name).name for row in load_inputs([str(tmp_path / "*.png")])] == ["b.png"]
    recursive = [row.name for row in load_inputs([str(tmp_path / "**" / "*.png")])]
    assert recursive == [str(tmp_path / "b.png"), str(tmp_path / "sub" / "f.png")]
    # A name that holds glob characters but exists is that file, not a pattern.
    draw_seven().save(tmp_path / "[1].png")
    assert [row.name for row in load_inputs([tmp_path / "[1].png"])] == [str(tmp_path / "[1].png")]


def test_links_back_up_the_tree_and_hidden_or_label_files_are_not_inputs(tmp_path: Path) -> None:
    draw_seven().save(tmp_path / "a.png")
    draw_seven().save(tmp_path / "._a.png")  # macOS's resource fork: not an image
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3), magic=0x00000801)
    (tmp_path / "sub").mkdir()
    draw_seven().save(tmp_path / "sub" / "b.png")
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a loop: followed, ** would repeat every file forever
    (tmp_path / "sub" / "up2").symlink_to(tmp_path)
    assert [row.name for row in load_inputs([tmp_path])] == [str(tmp_path / "a.png")]
    recursive = [row.name for row in load_inputs([str(tmp_path / "**" / "*.png")])]
    assert recursive == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.png")]


def test_a_folder_of_folders_says_its_subfolders_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "3").mkdir()
    draw_seven().save(tmp_path / "3" / "a.png")
    [row] = load_inputs([tmp_path])
    assert row.error is not None and "subfolders are not read" in row.error


def test_import_does_not_pull_in_torch() -> None:
    code = (
        "import sys, mnist_core.data.images; assert not {'torch', 'pandas', 'prefect'} & set(sys.modules), sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, timeout=60)


def test_the_preparations_median_and_percentile_are_numpys_to_the_bit() -> None:
    """The served path's median and 95th percentile skip numpy's argument handling (issue 31: ~0.1 ms a request);
    their results, and their types, must be numpy's own, or a prepared image could change by a level."""
    rng = np.random.default_rng(0)
    for trial in range(4000):
        count = int(rng.integers(1, 300))
        values = [
            rng.integers(0, 256, count).astype(np.float32),  # 8-bit levels, as a border ring holds
            (rng.random(count) * 300).astype(np.float32),
            np.clip(rng.normal(100, 50, count), 0, None).astype(np.float32),
            rng.random(count),  # float64
        ][trial % 4]
        for ours, theirs in ((images._median(values), np.median(values)),
                             (images._percentile(values, 95), np.percentile(values, 95))):  # fmt: skip
            assert ours == theirs and type(ours) is type(theirs), (trial, count, ours, theirs)
    square = rng.integers(0, 256, (30, 40)).astype(np.float32)
    assert images._median(square) == np.median(square)
