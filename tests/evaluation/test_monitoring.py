"""The drift tests on inputs with a known answer: windows drawn from the reference's own distribution raise (almost)
no alarm; a shift of the inputs, of the classes, or of the refusals does, in the test that should see it."""

import numpy as np
import pytest

from mnist_core.evaluation.monitoring import (
    TESTS,
    MonitorSettings,
    Window,
    answers,
    drift_tests,
    plot_history,
    reference_from_logits,
)
from mnist_core.records import NotADigitRule
from tests.support.monitoring import logits_of, made_up_rule


@pytest.fixture(scope="module")
def model() -> tuple[NotADigitRule, object]:
    rng = np.random.default_rng(0)
    val = logits_of(rng, 5000)
    rule = made_up_rule(val)
    return rule, reference_from_logits(val, 1.5, rule)


def alarms(reference, window: Window) -> list[str]:
    return [test.name for test in drift_tests(reference, window, MonitorSettings()) if test.drifted]


def test_the_reference_is_what_the_server_would_answer_on_the_validation_split(model) -> None:
    rule, reference = model
    assert reference.size == 5000 and sum(reference.class_counts) == 5000 and len(reference.class_counts) == 11
    assert reference.not_a_digit_rate == pytest.approx(0.01, abs=0.002)  # the rule's own target, on its own split
    assert len(reference.confidence_quantiles) == len(reference.score_quantiles) == 1000
    assert reference.confidence_quantiles == sorted(reference.confidence_quantiles)
    assert reference.confidence_quantiles[0] >= 0.1 and reference.confidence_quantiles[-1] <= 1.0
    assert reference_from_logits(np.zeros((0, 10)), 1.0, rule) is None


def test_windows_from_the_same_distribution_raise_no_alarm(model) -> None:
    rule, reference = model
    rng = np.random.default_rng(1)
    found = [alarms(reference, answers(logits_of(rng, 500), 1.5, rule)) for _ in range(20)]
    assert sum(bool(tests) for tests in found) <= 1, found  # 4 tests at p < 0.01: at most ~4 % expected


def test_inputs_the_model_is_unsure_of_raise_every_alarm(model) -> None:
    rule, reference = model
    shifted = answers(logits_of(np.random.default_rng(2), 500, margin=3.0), 1.5, rule)
    results = {test.name: test for test in drift_tests(reference, shifted, MonitorSettings())}
    assert [name for name in TESTS if results[name].drifted] == list(TESTS)
    assert results["confidence"].method == "Kolmogorov-Smirnov" and results["confidence"].p_value < 1e-6
    assert results["not_a_digit"].statistic > 0.05  # the window's refused share


def test_one_class_sent_far_more_alarms_the_classes_only(model) -> None:
    rule, reference = model
    rng = np.random.default_rng(3)
    classes = np.where(rng.random(500) < 0.4, 7, rng.integers(0, 10, 500))  # 7s: 46 % instead of 10 %
    assert alarms(reference, answers(logits_of(rng, 500, classes=classes), 1.5, rule)) == ["classes"]


def test_more_refusals_alarm_the_not_a_digit_test_and_fewer_do_not(model) -> None:
    rule, reference = model
    rng = np.random.default_rng(4)
    window = answers(logits_of(rng, 500), 1.5, rule)
    more = Window(np.where(np.arange(500) < 25, 10, window.classes), window.confidences, window.scores)  # 5 %
    assert "not_a_digit" in alarms(reference, more)
    fewer = Window(np.where(window.classes == 10, 0, window.classes), window.confidences, window.scores)
    assert "not_a_digit" not in alarms(reference, fewer)  # one-sided: refusing less is no harm


def test_a_model_without_a_rule_never_refused_so_one_refusal_is_news() -> None:
    rng = np.random.default_rng(5)
    reference = reference_from_logits(logits_of(rng, 2000), 1.0, None)
    assert reference.class_counts[10] == 0 and reference.not_a_digit_rate == 0
    window = answers(logits_of(rng, 300), 1.0, None)
    assert alarms(reference, window) == []
    refused = Window(np.where(np.arange(300) < 10, 10, window.classes), window.confidences, window.scores)
    assert "not_a_digit" in alarms(reference, refused)


def test_thresholds_and_window_are_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_MONITOR_WINDOW", "300")
    monkeypatch.setenv("MNIST_MONITOR_SCORE_P", "0.001")
    settings = MonitorSettings.from_machine()  # the machine's settings (mnist_core/settings.py): env or file
    assert (settings.window, settings.score_p, settings.classes_p) == (300, 0.001, 0.01)
    assert settings.threshold("score") == 0.001


def test_the_history_plot_is_a_png() -> None:
    history = [{"at": f"2026-12-07T1{i}:00:00Z", **{f"{t}_p": 10.0**-i for t in TESTS}} for i in range(5)]
    png = plot_history(history, dict.fromkeys(TESTS, 0.01))
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
