"""Saying "not a digit": the score and the decision every path uses (`mnist predict`, `/predict`, the v2 route, the
page, the batch deployment), from the model's logits and the rule its card holds (records.NotADigitRule).

The answer is a reserved class after the dataset's own: index 10, named "not a digit" ("not a clothing item" for
Fashion-MNIST). Probabilities keep their 10 columns (the model files' contract is unchanged: logits).
"""

import numpy as np

from mnist_core.data.idx import REFUSED_CLASS, REFUSED_NAMES, refused_name
from mnist_core.records import NotADigitRule

__all__ = ["REFUSED_CLASS", "REFUSED_NAMES", "answers", "fit_threshold", "outlier_scores", "refuse", "refused_name"]


def outlier_scores(logits: np.ndarray) -> np.ndarray:
    """Negative free energy, -logsumexp(logits), per row: the higher, the less the input looks like the classes."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1)
    return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))


# An image in MNIST's form whose brightest pixel is below this holds no stroke: the photo preparation refuses such
# an image as blank (images.MIN_CONTRAST, the same 32 grey levels); a tensor sent as it is (the v2 route, .npy, IDX)
# skips that preparation. Found on a new user's try: 28x28 zeros, a client's usual first test, were answered "5" (54 %).
BLANK_BELOW = 32


def refuse(
    logits: np.ndarray, rule: NotADigitRule | None, images: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, refused) per row: refused where the score is over the rule's threshold (with no rule, an older card
    or a bare model file, never) and, when the `images` (N x 28 x 28, 0-255) are given, where one is blank."""
    scores = outlier_scores(logits)
    refused = np.zeros(len(scores), dtype=bool) if rule is None else scores > rule.threshold
    if images is not None:
        refused |= np.asarray(images).reshape(len(scores), -1).max(axis=1, initial=0) < BLANK_BELOW
    return scores, refused


def answers(logits: np.ndarray, rule: NotADigitRule | None, images: np.ndarray | None = None) -> np.ndarray:
    """The class every path answers: the best class, or REFUSED_CLASS where `refuse` refuses."""
    return np.where(refuse(logits, rule, images)[1], REFUSED_CLASS, np.asarray(logits).argmax(axis=1))


def fit_threshold(val_logits: np.ndarray, target_false_refusal: float) -> tuple[float, float]:
    """The threshold refusing `target_false_refusal` of the validation split's (real) images, and the share it
    refuses there (ties can make it differ slightly)."""
    scores = outlier_scores(val_logits)
    threshold = float(np.quantile(scores, 1.0 - target_false_refusal))
    return threshold, float((scores > threshold).mean())
