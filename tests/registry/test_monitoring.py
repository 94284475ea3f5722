"""What the monitor reads from the registry's database: the latest window of one champion's predictions, oldest
first; why it cannot test (no champion, no reference, too few predictions); the history of its checks."""

import numpy as np

from mnist_core.evaluation.monitoring import MonitorSettings
from mnist_core.registry.monitoring import MonitorStore, check, observe
from tests.support.monitoring import champion_with_reference, log_window, logits_of, served


def test_the_window_is_the_latest_predictions_of_the_champion_only(tmp_path) -> None:
    rule = champion_with_reference(tmp_path, "run-a")
    rng = np.random.default_rng(7)
    log_window(tmp_path, "run-a", served(logits_of(rng, 300), rule), hour=10)
    log_window(tmp_path, "run-a", served(logits_of(rng, 300), rule), hour=11)
    log_window(tmp_path, "run-other", served(logits_of(rng, 300, margin=1.0), rule), hour=12)  # not the champion's
    rows = MonitorStore(tmp_path).window("mnist", "run-a", 400)
    assert len(rows) == 400 and rows[0]["at"] == "2026-12-07T10:03:20Z" and rows[-1]["at"] == "2026-12-07T11:04:59Z"
    observed = observe(tmp_path, "mnist", MonitorSettings(window=400))
    assert observed.run_id == "run-a" and observed.reference is not None and len(observed.classes) == 400
    result = check(observed, MonitorSettings(window=400))
    assert result.status == "checked" and result.drifted == [], result
    store = MonitorStore(tmp_path)
    store.record_check(result.row())
    (history,) = store.checks("mnist", 10)
    assert history["run_id"] == "run-a" and history["predictions"] == 400 and history["drifted"] == ""
    assert history["score_p"] == next(test.p_value for test in result.tests if test.name == "score")


def test_no_champion_no_reference_or_too_few_predictions_is_said_not_tested(tmp_path) -> None:
    settings = MonitorSettings()
    assert check(observe(tmp_path / "empty", "mnist", settings), settings).status == "no_champion"
    rule = champion_with_reference(tmp_path / "old", "run-old", reference=False)
    log_window(tmp_path / "old", "run-old", served(logits_of(np.random.default_rng(8), 200), rule), hour=9)
    assert check(observe(tmp_path / "old", "mnist", settings), settings).status == "no_reference"
    rule = champion_with_reference(tmp_path / "new", "run-new")
    log_window(tmp_path / "new", "run-new", served(logits_of(np.random.default_rng(9), 50), rule), hour=9)
    result = check(observe(tmp_path / "new", "mnist", settings), settings)
    assert result.status == "too_few" and result.tests == [] and "50 predictions" in result.message
