import subprocess
import sys

import pytest

from flows.mnist import main
from mnist_core.cli import build_parser, parse_params
from mnist_core.config import RunParams
from tests.conftest import PROJECT_ROOT


def test_every_field_has_a_flag() -> None:
    parser = build_parser(RunParams, "test")
    flags = {option for action in parser._actions for option in action.option_strings}
    for name in RunParams.model_fields:
        assert "--" + name.replace("_", "-") in flags


def test_flags_become_validated_params(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--epochs", "3", "--batch-size", "128", "--lr", "0.05", "--optimizer", "adamw", "--device", "cpu",
            "--seed", "7", "--val-size", "1000", "--data-dir", "d", "--output-dir", "o", "--mirror", "m1",
            "--mirror", "file:///m2", "--hidden-sizes", "256", "32", "--no-resume"]  # fmt: skip
    params = parse_params(RunParams, argv, "test")
    assert isinstance(params, RunParams)
    assert (params.epochs, params.batch_size, params.lr, params.optimizer) == (3, 128, 0.05, "adamw")
    assert (params.device, params.seed, params.val_size) == ("cpu", 7, 1000)
    assert params.mirror == ["m1", "file:///m2"]
    assert params.hidden_sizes == [256, 32]
    assert params.resume is False


def test_only_given_flags_override_defaults() -> None:
    assert parse_params(RunParams, [], "test") == RunParams()


def test_invalid_flag_value_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--batch-size", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "greater than or equal to 1" in err
    assert "Traceback" not in err


def test_help_runs_without_starting_anything() -> None:
    result = subprocess.run(
        [sys.executable, "flows/mnist.py", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for flag in ("--epochs", "--batch-size", "--lr", "--optimizer", "--device", "--seed", "--val-size",
                 "--data-dir", "--output-dir", "--mirror"):  # fmt: skip
        assert flag in result.stdout
