"""Headless Chromium for the browser tests (Debian's `chromium`, driven by Playwright: its own browser download
cannot reach its host here). Without one the tests skip, or fail when MNIST_REQUIRE_BROWSER=1 (CI)."""

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def browser_page(width: int, height: int) -> Iterator[Any]:
    """A page of a headless Chromium, closed on exit."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed"
    if missing is None and chromium() is None:
        missing = f"no chromium at {CHROMIUM} or on PATH (Debian: apt-get install chromium; .ci/chromium.sh)"
    if missing:
        if os.environ.get("MNIST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MNIST_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox.
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
