from pathlib import Path

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


def test_a_run_with_extra_images_has_its_own_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a new user: with and without --extra-data, runs shared one checkpoint, so resuming one was refused
    and the advised --no-resume threw the other's epochs away."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    plain, mine = RunParams(), RunParams(extra_data="mine")
    assert plain.training_digest() == mine.training_digest()  # the digest says how training computes, not on what
    assert mine.checkpoint_name() != plain.checkpoint_name() == RunParams().checkpoint_name()
    assert mine.checkpoint_name() == RunParams(extra_data=tmp_path / "mine/").checkpoint_name()  # one folder
    assert RunParams(extra_data="mine", run_name="nightly").checkpoint_name() == "nightly"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_float_that_is_not_finite_is_refused_as_such(value: float) -> None:
    """Found by a new user: --lr nan was refused as "should be less than or equal to 10"."""
    with pytest.raises(ValidationError, match="lr\n  Input should be a finite number"):
        RunParams(lr=value)


def test_the_defaults_are_the_fast98_recipe() -> None:
    """One source of truth: the defaults read their values from the fast98 preset."""
    defaults, fast98 = RunParams(), RunParams(preset="fast98")
    assert defaults.model_dump(exclude={"preset"}) == fast98.model_dump(exclude={"preset"})
    assert RunParams(preset="seed").lr != defaults.lr


def test_the_robust_and_fashion90_presets() -> None:
    robust, fashion = RunParams(preset="robust"), RunParams(preset="fashion90", dataset="fashion-mnist")
    assert (robust.augment, robust.epochs, robust.hidden_sizes) == (0.6, 15, [128, 64])  # the seed's architecture
    assert (fashion.hidden_sizes, fashion.epochs, fashion.lr, fashion.dropout) == ([512, 256], 30, 0.1, 0.2)
    assert RunParams(preset="robust", epochs=2).epochs == 2  # an explicit field still wins


def test_run_params_survive_a_json_round_trip() -> None:
    """What Prefect stores and a subprocess reads back: the JSON of the parameters validates to the same ones
    (the path fields' validator once returned Paths, which pydantic's JSON mode refuses)."""
    params = RunParams(data_dir="~/cache", output_dir=Path("/tmp/runs"), extra_data="extra", epochs=2)
    assert RunParams.model_validate_json(params.model_dump_json()) == params
