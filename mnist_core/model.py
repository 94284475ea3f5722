"""The name model cards written before the layer packages (Dec 2026) give for loading weights: their `load_with`
says `mnist_core.model.load_weights`. The model lives in `mnist_core.training.model`."""

from mnist_core.training.model import MLP, load_weights

__all__ = ["MLP", "load_weights"]
