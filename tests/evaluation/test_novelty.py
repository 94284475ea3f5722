"""Saying "not a digit": the score and threshold on known logits, and a model trained with outlier exposure that
refuses what is plainly no digit and answers real ones (real MNIST, images made as a user would)."""

import numpy as np
import torch

from mnist_core.config import RunParams
from mnist_core.data import not_digits
from mnist_core.evaluation.novelty import fit_threshold, outlier_scores, refuse
from mnist_core.records import NotADigitRule
from mnist_core.training.loop import train_model


def test_the_score_is_the_negative_free_energy_and_the_threshold_refuses_the_asked_share() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert np.allclose(outlier_scores(logits), -np.log(np.exp(logits).sum(axis=1)))
    threshold, refused_share = fit_threshold(np.random.default_rng(0).normal(size=(1000, 10)), 0.01)
    assert refused_share == 0.01
    rule = NotADigitRule(threshold=-2.0, target_false_refusal=0.01, val_false_refusal=0.01)
    scores, refused = refuse(logits, rule)
    assert refused.tolist() == [False, False, True]  # -logsumexp: -10.0, -2.1, -1.1
    assert not refuse(logits, None)[1].any()  # no rule (an older card): never refused
    # A blank image (a tensor that skipped the preparation, which refuses blank pictures itself) is no digit, with
    # a rule or without; a faint stroke (31 grey levels: not yet ink) neither; a stroke of 32 levels is looked at.
    images = np.zeros((3, 28, 28), np.uint8)
    images[1, 10:20, 14], images[2, 10:20, 14] = 31, 32
    assert refuse(logits, None, images)[1].tolist() == [True, True, False]
    assert refuse(logits, rule, images)[1].tolist() == [True, True, True]


def test_a_model_trained_with_outlier_exposure_refuses_non_digits_and_answers_digits(
    mnist_tensors: dict[str, torch.Tensor],
) -> None:
    outliers = torch.from_numpy(not_digits.training_outliers(600, seed=0))
    data = {**mnist_tensors, "outlier_images": outliers}
    params = RunParams(epochs=1, outlier_images=600)
    model = train_model(data, params, torch.device("cpu")).model
    with torch.no_grad():
        val_logits = model(mnist_tensors["val_images"]).double().numpy()
        test_logits = model(mnist_tensors["test_images"]).double().numpy()
        symbols = model(torch.from_numpy(not_digits.make(not_digits.symbols, 200, seed=7)[0])).double().numpy()
    threshold, _ = fit_threshold(val_logits, params.refusal_rate)
    rule = NotADigitRule(threshold=threshold, target_false_refusal=params.refusal_rate, val_false_refusal=0.0)
    assert refuse(test_logits, rule)[1].mean() < 0.02  # real digits: ~1 % refused
    test_images = mnist_tensors["test_images"].numpy()
    assert (refuse(test_logits, rule, test_images)[1] == refuse(test_logits, rule)[1]).all()  # none is blank
    # Held-out symbols and shapes (no such drawing is trained on): most refused, where an untrained rule would
    # refuse ~1 %. After one epoch; the benchmark measures the full recipe.
    assert refuse(symbols, rule)[1].mean() > 0.3
