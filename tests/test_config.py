import pytest
from pydantic import ValidationError

from mnist_core.config import PRESETS, RunParams


def test_defaults_are_the_seed_architecture_and_valid() -> None:
    params = RunParams()
    assert params.hidden_sizes == [128, 64]
    assert params.dataset == "mnist"
    assert params.val_size == 5000


def test_unknown_field_is_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="epochz"):
        RunParams.model_validate({"epochz": 3})


def test_preset_fills_only_fields_not_given() -> None:
    params = RunParams(preset="seed", epochs=2)
    assert params.lr == PRESETS["seed"]["lr"]
    assert params.batch_size == 64
    assert params.epochs == 2
    overridden = RunParams(preset="seed", lr=0.5)
    assert overridden.lr == 0.5


def test_training_digest_ignores_where_files_go() -> None:
    base = RunParams()
    assert base.training_digest() == RunParams(output_dir="elsewhere", data_dir="x").training_digest()
    assert base.training_digest() != RunParams(lr=base.lr / 2).training_digest()


def test_checkpoint_name_uses_run_name_when_given() -> None:
    assert RunParams(run_name="nightly").checkpoint_name() == "nightly"
    assert RunParams().checkpoint_name().startswith("mnist-")
