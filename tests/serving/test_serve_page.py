"""The `mnist serve` page in headless Chromium (Debian's, through Playwright): digits traced from MNIST's test set
are drawn on the canvas with mouse strokes and must be read right (9 of 10 at least); an image file dropped on the
page is read too."""

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.browser import browser_page as chromium_page
from tests.support.serving import digit_png, make_run, promote, start_server, stop_server, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    with chromium_page(1000, 800) as opened:
        yield opened


@pytest.fixture(scope="module")
def page_url(small_mnist_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("page-runs")
    promote(root, make_run(root, "run-page", small_mnist_onnx))
    process, url = start_server(root, root.parent / "serve-page.log", token="page-token")
    try:
        yield f"{url}/?token=page-token"
    finally:
        stop_server(process)


def _strokes(image: np.ndarray, cell: float) -> list[list[tuple[float, float]]]:
    """A digit as a person would trace it: one horizontal stroke per run of ink in every other row of the 28x28
    image, scaled to the canvas (the page's pen is thick enough that the strokes merge into one shape)."""
    strokes = []
    for row in range(0, image.shape[0], 2):  # every other row: the pen is wider than two rows
        ink = np.flatnonzero(image[row] > 96)
        if not len(ink):
            continue
        runs = np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1)
        for run in runs:
            y = (row + 0.5) * cell
            strokes.append([((run[0] + 0.5) * cell, y), ((run[-1] + 0.5) * cell, y)])
    return strokes


def _draw(page: Any, image: np.ndarray) -> None:
    box = page.locator("#pad").bounding_box()
    cell = box["width"] / 28
    for stroke in _strokes(image, cell):
        x, y = stroke[0]
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.up()


def _drop_file(page: Any, name: str, content: str) -> None:
    """Drop a PNG (base64 `content`) named `name` on the page's drop zone, as a person dragging a file does."""
    page.evaluate(
        """([name, content]) => {
            const bytes = Uint8Array.from(atob(content), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, {type: "image/png"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        }""",
        [name, content],
    )


def test_digits_drawn_with_the_mouse_are_read(browser_page, page_url: str, mnist_tensors: dict[str, torch.Tensor]):
    page = browser_page
    page.goto(page_url)
    images, labels = mnist_tensors["test_images"].numpy(), mnist_tensors["test_labels"].numpy()
    read = {}
    for digit in range(10):
        image = images[int(np.flatnonzero(labels == digit)[0])]
        page.click("#clear")
        _draw(page, image)
        answer = page.evaluate("() => predictNow()")  # the page's own request, after the last stroke
        assert "error" not in answer, answer
        read[digit] = answer["predictions"][0]["class"]
        page.wait_for_function(f"document.getElementById('answer').dataset.class === '{read[digit]}'",
                               timeout=TIMEOUT_MS)  # fmt: skip
        bars = page.locator("#top3 .bar")
        assert bars.count() == 3
        assert "run-page" in page.inner_text("#model") and "confidence" in page.inner_text("#confidence")
    right = sum(read[digit] == digit for digit in range(10))
    assert right >= 9, read


def test_a_dropped_image_file_is_read(browser_page, page_url: str, mnist_tensors: dict[str, torch.Tensor]) -> None:
    page = browser_page
    page.goto(page_url)
    page.click("#clear")
    labels = mnist_tensors["test_labels"].numpy()
    index = int(np.flatnonzero(labels == 7)[0])
    content = base64.b64encode(digit_png(mnist_tensors["test_images"][index], scale=4)).decode()
    _drop_file(page, "seven.png", content)
    page.wait_for_function("document.getElementById('answer').dataset.class === '7'", timeout=TIMEOUT_MS)
    wait_until(lambda: "run-page" in page.inner_text("#model"), timeout=5)


def test_a_phone_size_picture_is_scaled_down_by_the_page(browser_page, page_url: str, mnist_tensors) -> None:
    """A 4032x3024 PNG (12 M pixels, which a PNG decodes to whole) is over the server's 4 M pixel limit: the page
    scales it to 2048x1536 (3 M) before sending, and the digit is read."""
    page = browser_page
    page.goto(page_url)
    page.click("#clear")
    labels = mnist_tensors["test_labels"].numpy()
    index = int(np.flatnonzero(labels == 3)[0])
    digit = Image.fromarray(255 - mnist_tensors["test_images"][index].numpy()).resize((1500, 1500), Image.BICUBIC)
    photo = Image.new("L", (4032, 3024), 255)
    photo.paste(digit, (1266, 762))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    _drop_file(page, "IMG_0003.png", base64.b64encode(buffer.getvalue()).decode())
    page.wait_for_function("document.getElementById('answer').dataset.class === '3'", timeout=TIMEOUT_MS)
    assert page.inner_text("#error") == ""
