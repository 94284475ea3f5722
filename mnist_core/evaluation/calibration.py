"""Confidences that mean what they say: temperature scaling (Guo et al., 2017) fitted on the validation split, and
the expected calibration error that shows whether it worked. Numpy only: it runs on logits from any runtime.

A model trained with label smoothing says 0.85-0.95 for digits it almost always gets right: dividing its logits by
one temperature T (fitted to minimise the validation split's negative log-likelihood) keeps every prediction and
makes the confidence match the accuracy. Probabilities are softmax(logits / T); the model files keep raw logits.
"""

import numpy as np

ECE_BINS = 15
# Search range for T: far wider than any trained model needs (0.05 would be absurdly overconfident, 20 near-uniform).
LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    return float(-log_softmax(logits, temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the NLL of `labels`: a golden-section search on log T (the NLL is unimodal in it),
    to a relative precision of about 1e-4. 1.0 when there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0
    ratio = (np.sqrt(5) - 1) / 2
    low, high = LOG_T_RANGE
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    while high - low > 1e-4:
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, labels, np.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((low + high) / 2))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over `bins` equal-width confidence bins weighted by
    how many predictions fall in each (0 = perfectly calibrated)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin (k/B, (k+1)/B]
    total = 0.0
    for index in range(bins):
        inside = which == index
        if inside.any():
            total += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(total)


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
              test_labels: np.ndarray) -> dict[str, float]:  # fmt: skip
    """T fitted on validation; the test split's ECE before (T = 1) and after."""
    temperature = fit_temperature(val_logits, val_labels)
    return {
        "temperature": temperature,
        "test_ece_before": expected_calibration_error(np.exp(log_softmax(test_logits)), test_labels),
        "test_ece_after": expected_calibration_error(np.exp(log_softmax(test_logits, temperature)), test_labels),
    }
