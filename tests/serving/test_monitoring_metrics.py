"""/metrics for monitoring between two drift checks: the confidence histogram of every answer (counted a batch at
a time), the champion's age from its run id, and the not-a-digit rate as refused / total of the class counter."""

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mnist_core.serving.app import ConfidenceHistogram


def test_confidences_are_a_prometheus_histogram_and_the_champion_has_an_age() -> None:
    created = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 3600))
    follower = SimpleNamespace(current=SimpleNamespace(run_id=f"{created}-0123abcd-a1b2c3"))
    histogram = ConfidenceHistogram(follower)
    histogram.observe(np.array([0.3, 0.5, 0.96, 0.999, 1.0]))
    histogram.observe(np.array([0.91]))
    registry = CollectorRegistry()
    registry.register(histogram)
    text = generate_latest(registry).decode()
    assert 'mnist_serve_confidence_bucket{le="0.5"} 2.0' in text  # 0.3 and 0.5: "le" counts the edge itself
    assert 'mnist_serve_confidence_bucket{le="0.95"} 3.0' in text
    assert 'mnist_serve_confidence_bucket{le="0.999"} 5.0' in text
    assert 'mnist_serve_confidence_bucket{le="+Inf"} 6.0' in text and "mnist_serve_confidence_count 6.0" in text
    assert float(re.search(r"^mnist_serve_confidence_sum (\S+)$", text, re.M).group(1)) == pytest.approx(4.669)
    age = float(re.search(r"^mnist_serve_model_age_seconds (\S+)$", text, re.M).group(1))
    assert 3590 < age < 3700
    follower.current = SimpleNamespace(run_id=None)  # a model file outside any run: no age, not a made-up one
    assert not re.search(r"^mnist_serve_model_age_seconds ", generate_latest(registry).decode(), re.M)
