"""Drift of what the champion sees: its reference (its own answers on the validation split, written into its model
card at export), and named tests comparing a window of the prediction log with it. Plain numpy and scipy: the
`mnist-monitor` flow (flows/monitor.py) composes these; nothing here knows Prefect.

What is compared is what the server logs of each prediction (registry/feedback.py's `predictions` table): the answer
(0-9, or 10 when refused as "not a digit"), the calibrated confidence of the best class, and the not-a-digit score
-logsumexp(logits). They are outputs of the model, so no image statistics are kept: this is "black-box shift
detection" (Rabanser, Günnemann and Lipton, "Failing Loudly: An Empirical Study of Methods for Detecting Dataset
Shift", NeurIPS 2019), which found tests on a classifier's outputs among the most powerful detectors, with univariate
tests on softmax outputs doing about as well as a multivariate MMD on representations at small windows, for far
less computation. Four tests, each with a p-value against its own threshold:

- `classes`: Pearson's chi-square test of homogeneity of the window's answer counts and the reference's (a 2 x 11
  contingency table, "not a digit" included; classes neither answered are left out). The classic test for a
  categorical distribution; two-sample rather than goodness-of-fit against the reference's frequencies, because
  those are themselves counted on 5,000-6,000 images: measured, the one-sample version raised 1.6 % false alarms on
  clean windows of 500 where this one stays under its threshold's 1 %. It catches label shift (one digit sent far more
  than the others) and the answers a shifted input gets (Fashion-MNIST reads mostly as "not a digit", 8, 2 and 5).
  Its chi-square approximation wants ~5 expected per cell: with a window of 500 every digit has ~50; "not a digit"
  (~0.7 %) has ~3.5, and is tested exactly by the next test.
- `not_a_digit`: Fisher's exact test, one-sided, of the window's refusals against the reference's (the 2 x 2 table
  refused / answered): the exact two-sample form of a binomial test of the rate, so the reference's own sampling
  error counts too (a one-sample binomial test against its rate of 0.7 % gave 2.5 % false alarms at p < 0.01). One-
  sided (more refusals), because fewer refusals than on the validation split is no harm; exact, because at a rate
  under 1 % the normal approximation is poor.
- `confidence`: the two-sample Kolmogorov-Smirnov test of the window's confidences against the reference's.
  Distribution-free and sensitive to a shift anywhere in the distribution, not only its mean: a model that sees
  inputs unlike its training data is less sure (Hendrycks and Gimpel, 2017, "A Baseline for Detecting Misclassified
  and Out-of-Distribution Examples").
- `score`: the same test on the not-a-digit score (the energy, Liu et al. 2020), which separates out-of-distribution
  inputs better than the confidence does and moves before the refusals do: an input the model was not trained on
  has a higher energy even when it stays under the refusal threshold (measured: benchmarks/drift.py,
  docs/monitoring.md).

The reference keeps REFERENCE_POINTS evenly spaced quantiles of each distribution rather than every value (a card of
a few kilobytes, not a copy of the validation split); the KS test takes them as a sample of that size, which is a
slightly conservative stand-in for the full sample. Four tests at a p-value threshold of 0.01 each have a
family-wise false-alarm rate of at most 4 % (Bonferroni) per window when nothing changed; measured on clean MNIST
test digits: docs/monitoring.md.
"""

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mnist_core.evaluation.novelty import REFUSED_CLASS, refuse
from mnist_core.evaluation.plots import DPI, new_figure
from mnist_core.records import MonitoringReference, NotADigitRule
from mnist_core.settings import current as current_settings

REFERENCE_POINTS = 1000  # quantiles kept of each distribution (with 6,000 validation images: every 6th)
CELLS = REFUSED_CLASS + 1  # the 10 classes and "not a digit"
TESTS = ("classes", "not_a_digit", "confidence", "score")


class MonitorSettings(BaseModel):
    """The monitor's window and thresholds. The machine's values are the settings MNIST_MONITOR_<NAME>
    (mnist_core/settings.py: the environment or the settings file): `from_machine()`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_machine(cls) -> "MonitorSettings":
        machine = current_settings()
        return cls(**{name: getattr(machine, f"monitor_{name}") for name in cls.model_fields})

    window: int = Field(500, ge=20, description="Predictions compared with the reference: the latest this many.")
    min_predictions: int = Field(
        100, ge=20, description="Fewer predictions than this since the champion was served: no test (too few to say)."
    )
    classes_p: float = Field(0.01, gt=0, lt=1, description="Alarm when the classes' chi-square p-value is below this.")
    not_a_digit_p: float = Field(0.01, gt=0, lt=1, description="Alarm when the refusals' Fisher p-value is below this.")
    confidence_p: float = Field(0.01, gt=0, lt=1, description="Alarm when the confidences' KS p-value is below this.")
    score_p: float = Field(0.01, gt=0, lt=1, description="Alarm when the not-a-digit scores' KS p-value is below this.")
    history: int = Field(50, ge=1, description="Earlier checks drawn in the artifact's plot over time.")

    def threshold(self, test: str) -> float:
        return float(getattr(self, f"{test}_p"))


@dataclass(frozen=True)
class Window:
    """What the server logged of some predictions: answers (0-10), calibrated confidences, not-a-digit scores."""

    classes: np.ndarray
    confidences: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> "Window":
        """From prediction-log rows (registry/feedback.py: `class`, `confidence`, `not_a_digit_score`)."""
        return cls(
            np.array([row["class"] for row in rows], dtype=np.int64),
            np.array([row["confidence"] for row in rows], dtype=np.float64),
            np.array([row["not_a_digit_score"] for row in rows], dtype=np.float64),
        )


@dataclass(frozen=True)
class DriftTest:
    """One named test on one window: its statistic, p-value, threshold, and whether it is over it."""

    name: str
    method: str
    statistic: float
    p_value: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.p_value < self.threshold


def answers(logits: np.ndarray, temperature: float, rule: NotADigitRule | None) -> Window:
    """What `mnist serve` answers and logs for these logits (serving/app.py's `answer`, the same functions):
    the best class or REFUSED_CLASS, the calibrated confidence of the best class, the not-a-digit score."""
    logits = np.asarray(logits, dtype=np.float64)
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    probabilities = np.exp(scaled)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    scores, refused = refuse(logits, rule)
    classes = np.where(refused, REFUSED_CLASS, probabilities.argmax(axis=1))
    return Window(classes, probabilities.max(axis=1), scores)


def _quantiles(values: np.ndarray) -> list[float]:
    points = min(REFERENCE_POINTS, len(values))
    return [float(v) for v in np.quantile(values, (np.arange(points) + 0.5) / points)]


def reference_from_logits(
    logits: np.ndarray, temperature: float, rule: NotADigitRule | None
) -> MonitoringReference | None:
    """The champion's reference: its answers on the validation split (these logits), as the server would log them.
    None for an empty split."""
    if len(logits) == 0:
        return None
    seen = answers(logits, temperature, rule)
    counts = np.bincount(seen.classes, minlength=CELLS)
    return MonitoringReference(
        size=len(seen),
        class_counts=[int(c) for c in counts],
        not_a_digit_rate=float(counts[REFUSED_CLASS] / len(seen)),
        mean_confidence=float(seen.confidences.mean()),
        confidence_quantiles=_quantiles(seen.confidences),
        score_quantiles=_quantiles(seen.scores),
    )


def drift_tests(reference: MonitoringReference, window: Window, settings: MonitorSettings) -> list[DriftTest]:
    """The four tests (module docstring) of `window` against `reference`, in TESTS order."""
    from scipy import stats  # here: export imports this module for the reference, which needs no scipy (~0.3 s)

    n = len(window)
    if n == 0:
        raise ValueError("drift_tests: the window is empty")
    observed = np.bincount(np.clip(window.classes, 0, REFUSED_CLASS), minlength=CELLS)
    table = np.stack([observed, np.asarray(reference.class_counts)])
    table = table[:, table.sum(axis=0) > 0]  # a class neither ever answered says nothing (and would divide by 0)
    chi2 = stats.chi2_contingency(table, correction=False)
    refused, kept = int(observed[REFUSED_CLASS]), reference.class_counts[REFUSED_CLASS]
    fisher = stats.fisher_exact([[refused, n - refused], [kept, reference.size - kept]], alternative="greater")
    # The asymptotic distribution: exact at 500 x 1,000 costs ~10 ms a test and often falls back to it anyway.
    confidence = stats.ks_2samp(window.confidences, np.asarray(reference.confidence_quantiles), method="asymp")
    score = stats.ks_2samp(window.scores, np.asarray(reference.score_quantiles), method="asymp")
    figures = {
        "classes": ("chi-square homogeneity", float(chi2.statistic), float(chi2.pvalue)),
        "not_a_digit": ("Fisher exact", refused / n, float(fisher.pvalue)),
        "confidence": ("Kolmogorov-Smirnov", float(confidence.statistic), float(confidence.pvalue)),
        "score": ("Kolmogorov-Smirnov", float(score.statistic), float(score.pvalue)),
    }
    return [DriftTest(name, *figures[name], settings.threshold(name)) for name in TESTS]


def summary(window: Window, reference: MonitoringReference) -> dict[str, float]:
    """The window's plain figures beside the reference's, for people reading the artifact."""
    return {
        "predictions": float(len(window)),
        "not_a_digit_rate": float(np.mean(window.classes == REFUSED_CLASS)),
        "reference_not_a_digit_rate": reference.not_a_digit_rate,
        "mean_confidence": float(window.confidences.mean()),
        "reference_mean_confidence": reference.mean_confidence,
    }


def plot_history(history: Sequence[dict], thresholds: dict[str, float]) -> bytes:
    """A PNG: one panel per test, -log10(p-value) of each check over time (oldest first; `history` rows have `at`
    and `<test>_p`), with the alarm threshold dashed: a point above the line is an alarm."""
    figure = new_figure(11, 6)
    panels = figure.subplots(2, 2, sharex=True).ravel()
    xs = np.arange(len(history))
    for axes, test in zip(panels, TESTS, strict=True):
        ps = np.array([max(float(row.get(f"{test}_p") or 1.0), 1e-300) for row in history])
        heights = -np.log10(ps)
        line = -math.log10(thresholds[test])
        axes.plot(xs, heights, marker="o", markersize=3, color="tab:blue")
        over = heights > line
        axes.plot(xs[over], heights[over], "o", color="tab:red", markersize=5, label="alarm")
        axes.axhline(line, color="tab:red", linestyle="--", linewidth=1)
        axes.set_title(f"{test}: -log10(p), alarm above {line:.1f}", fontsize=10)
        axes.set_ylim(bottom=0)
    labels = [str(row.get("at", ""))[5:16].replace("T", " ") for row in history]
    step = max(1, len(labels) // 8)
    for axes in panels[2:]:
        axes.set_xticks(xs[::step], labels[::step], rotation=30, fontsize=8)
    figure.suptitle("drift checks over time (UTC)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
