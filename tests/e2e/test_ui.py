"""The Prefect UI as a user sees it, in a real browser: the flow run's page and the report artifact's page after a
real run. Headless Chromium (Debian's) through Playwright; screenshots are kept in test-output/ui/."""

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import PROJECT_ROOT
from tests.support.browser import browser_page as chromium_page

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SCREENSHOTS = PROJECT_ROOT / "test-output" / "ui"
PAGE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page(1400, 1000) as opened:
        yield opened


def _images(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "img[src^='data:']", "els => els.map(e => ({src: e.src.slice(0, 30), width: e.naturalWidth}))"
    )


def test_the_flow_run_page_shows_the_run_and_its_artifacts(page, trained_run, prefect_server: str) -> None:
    result, flow_run_id, _ = trained_run
    ui = prefect_server.removesuffix("/api")
    page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
    page.get_by_text("Completed").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    # The Logs tab, open by default: the evaluate task's line with the test accuracy.
    accuracy = f"test accuracy {result.exported.card.metrics.test_accuracy:.2%}"
    page.get_by_text(accuracy).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.screenshot(path=SCREENSHOTS / "flow-run-logs.png", full_page=True)
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("mnist-report").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.screenshot(path=SCREENSHOTS / "flow-run-artifacts.png", full_page=True)
    text = page.inner_text("body")
    for key in ("mnist-report", "mnist-per-class", "mnist-confusion-matrix", "mnist-promotion"):
        assert key in text, key


def test_the_report_artifact_shows_accuracy_tables_and_every_plot(page, trained_run, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    result, flow_run_id, _ = trained_run
    artifact_filter = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=["mnist-report"])
    )
    with get_client(sync_client=True) as client:
        [report] = client.read_artifacts(artifact_filter=artifact_filter)
    ui = prefect_server.removesuffix("/api")
    page.goto(f"{ui}/artifacts/artifact/{report.id}")
    accuracy = f"{result.exported.card.metrics.test_accuracy:.2%}"
    page.get_by_text(accuracy).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll(\"img[src^='data:']\")];"
        " return imgs.length >= 3 && imgs.every(i => i.complete); }",
        timeout=PAGE_TIMEOUT_MS,
    )
    page.screenshot(path=SCREENSHOTS / "report-artifact.png", full_page=True)
    images = _images(page)
    assert len(images) == 3, images
    assert all(image["width"] > 0 and image["src"].startswith("data:image/png") for image in images), images
    # The report's tables, rendered as tables with their rows: model files (3), per-epoch, per-class (10).
    rows = page.eval_on_selector_all("table", "tables => tables.map(t => t.querySelectorAll('tr').length)")
    assert rows == [1 + 3, 1 + result.exported.card.metrics.epochs_run, 1 + 10], rows
