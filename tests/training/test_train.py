from pathlib import Path

import pytest
import torch

from mnist_core.config import RunParams
from mnist_core.errors import TrainingError
from mnist_core.training.loop import train_model
from mnist_core.training.model import evaluate_split

CPU = torch.device("cpu")


def test_same_seed_same_metrics_on_cpu(mnist_tensors: dict[str, torch.Tensor]) -> None:
    params = RunParams(epochs=1, seed=3)
    first = train_model(mnist_tensors, params, CPU)
    second = train_model(mnist_tensors, params, CPU)
    for a, b in zip(first.history, second.history, strict=True):
        assert (a.train_loss, a.val_loss, a.val_accuracy) == (b.train_loss, b.val_loss, b.val_accuracy)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name])
    other_seed = train_model(mnist_tensors, RunParams(epochs=1, seed=4), CPU)
    assert other_seed.history[0].train_loss != first.history[0].train_loss


def test_one_epoch_learns_mnist(mnist_tensors: dict[str, torch.Tensor]) -> None:
    result = train_model(mnist_tensors, RunParams(epochs=1), CPU)
    stats = result.history[0]
    assert stats.val_accuracy > 0.93  # chance is 0.10; only a trained model gets here
    assert stats.samples_per_s > 0 and stats.seconds > 0
    assert result.best_epoch == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "sgd", "schedule": "none", "nesterov": False},
        {"optimizer": "adam", "lr": 3e-3, "schedule": "cosine"},
        {"optimizer": "adamw", "lr": 3e-3, "schedule": "onecycle", "dropout": 0.1},
    ],
)
def test_optimizers_and_schedules_learn(synthetic_tensors: dict[str, torch.Tensor], overrides: dict) -> None:
    params = RunParams(epochs=3, batch_size=64, **overrides)
    result = train_model(synthetic_tensors, params, CPU)
    assert result.history[-1].val_accuracy > 0.9
    assert len(result.history) == 3


def test_keeps_best_validation_weights(synthetic_tensors: dict[str, torch.Tensor]) -> None:
    result = train_model(synthetic_tensors, RunParams(epochs=4, batch_size=64, lr=0.05), CPU)
    best = max(result.history, key=lambda s: (s.val_accuracy, -s.val_loss))
    assert result.best_epoch == best.epoch
    val_images, val_labels = synthetic_tensors["val_images"], synthetic_tensors["val_labels"]
    _, correct, _ = evaluate_split(result.model, val_images, val_labels)
    assert correct.item() / len(val_labels) == pytest.approx(best.val_accuracy)


def test_checkpoint_is_written_each_epoch_and_loads_safely(
    synthetic_tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    seen: list[int] = []
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"

    def on_epoch(stats) -> None:
        payload = torch.load(checkpoint, weights_only=True)
        seen.append(payload["epoch"])

    train_model(synthetic_tensors, RunParams(epochs=2, batch_size=64), CPU, checkpoint, on_epoch)
    assert seen == [1, 2]


def test_clipping_keeps_a_diverging_recipe_finite(mnist_tensors: dict[str, torch.Tensor]) -> None:
    """The default lr 0.3 on a small training set (as on Fashion-MNIST) blows up without clipping; with the
    default clip it trains."""
    data = {k: v[:4000] if k.startswith("train") else v[:500] for k, v in mnist_tensors.items() if "test" not in k}
    params = RunParams(epochs=2, batch_size=128)
    with pytest.raises(TrainingError, match="diverged"):
        train_model(data, params.model_copy(update={"clip_grad_norm": 0.0}), CPU)
    assert train_model(data, params, CPU).history[-1].val_accuracy > 0.85


def test_the_default_clip_never_acts_on_the_default_mnist_recipe(
    mnist_tensors: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default recipe's gradients stay under the limit all through its 4 epochs, so clipping multiplies them by
    exactly 1.0: the defaults train on MNIST bit for bit as they did before clipping existed."""
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        norm = clip(*args, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    train_model(mnist_tensors, RunParams(), CPU)
    assert len(norms) == 4 * 215 and max(norms) < RunParams().clip_grad_norm, max(norms)
