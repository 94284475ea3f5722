import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.cli import train as main
from mnist_core.config import RunParams
from mnist_core.flags import build_parser, parse_params
from tests.support import PROJECT_ROOT


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


def run_command(args: list[str], **kwargs) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, **kwargs)
    return result, time.monotonic() - started


MNIST = str(Path(sys.executable).parent / "mnist")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--help"], 0, "mnist train"),
        (["train", "--help"], 0, "--epochs"),
        (["train", "--epochs", "0"], 2, "invalid --epochs"),
        (["train", "--epoch", "3"], 2, "unrecognized arguments: --epoch"),
        (["sweep", "--help"], 0, "Fields of the sweep JSON"),
        (["sweep", "{not json"], 2, "not valid JSON"),
        (["predict", "--help"], 0, "--threshold"),
        (["predict-batch", "--help"], 0, "--output"),
        (["stack", "--help"], 0, "status"),
        (["nonsense"], 2, "unknown command 'nonsense'"),
    ],
)
def test_the_mnist_command_answers_help_and_usage_errors_without_torch_or_prefect(
    args: list[str], code: int, expected: str
) -> None:
    """Read before anything heavy is imported: neither torch nor Prefect is in sys.modules when it has answered."""
    guard = (
        "import sys, atexit\n"
        "heavy = lambda: ','.join(sorted({'torch', 'prefect'} & set(sys.modules)))\n"
        "atexit.register(lambda: sys.stderr.write(' HEAVY:' + heavy()))\n"
        "from launch.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    result, _ = run_command([sys.executable, "-c", guard, *args])
    assert result.returncode == code, result.stderr
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith(" HEAVY:"), result.stderr  # nothing heavy was imported


def test_the_mnist_command_answers_within_a_second() -> None:
    """The console script as installed (each figure is a whole process: interpreter start included)."""
    for args in (["--help"], ["train", "--help"], ["train", "--epochs", "0"]):
        result, seconds = min((run_command([MNIST, *args]) for _ in range(3)), key=lambda pair: pair[1])
        assert result.returncode in (0, 2) and "Traceback" not in result.stderr
        assert seconds < 1.0, (args, seconds)


def test_a_python_without_the_project_packages_is_told_what_to_do() -> None:
    """`python flows/mnist.py` with an interpreter that lacks torch and Prefect (-S: no site-packages), as when
    the venv is not active: one line that says to run `make setup`, not a ModuleNotFoundError."""
    result, _ = run_command([sys.executable, "-S", "flows/mnist.py", "--epochs", "1"])
    assert result.returncode == 1
    assert "lacks the project's packages" in result.stderr and "make setup" in result.stderr
    assert "Traceback" not in result.stderr and "ModuleNotFoundError" not in result.stderr


def test_make_stack_status_on_a_stopped_stack_is_not_a_make_error(tmp_path: Path) -> None:
    env = {**os.environ, "MNIST_STACK_DIR": str(tmp_path / "stack")}
    result, _ = run_command(["make", "-s", "stack-status", f"PYTHON={sys.executable}"], env=env)
    assert result.returncode == 0, result.stderr
    assert "server: stopped" in result.stdout and "Error" not in result.stderr
