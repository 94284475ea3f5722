"""The code digest in a run's fingerprint covers what changes a trained model, and nothing else."""

import shutil
from pathlib import Path

import pytest

from mnist_core.fingerprint import CODE_ROOT, code_digest


@pytest.fixture
def code(tmp_path: Path) -> Path:
    copy = tmp_path / "mnist_core"
    shutil.copytree(CODE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(copy) == code_digest()
    return copy


def touch(path: Path) -> None:
    with path.open("a") as source:
        source.write("\n# edited\n")


@pytest.mark.parametrize(
    "module",
    ["inference/predict.py", "inference/predict_command.py", "export/run_folder.py", "evaluation/plots.py",
     "evaluation/evaluate.py", "registry/store.py", "records.py", "preflight.py"],
)  # fmt: skip
def test_editing_what_does_not_train_keeps_the_digest(code: Path, module: str) -> None:
    before = code_digest(code)
    touch(code / module)
    assert code_digest(code) == before


@pytest.mark.parametrize(
    "module", ["training/steps.py", "training/backprop.py", "training/loop.py", "data/prepare.py", "data/images.py"]
)
def test_editing_what_trains_changes_the_digest(code: Path, module: str) -> None:
    before = code_digest(code)
    touch(code / module)
    assert code_digest(code) != before


def test_a_new_training_module_changes_the_digest(code: Path) -> None:
    before = code_digest(code)
    (code / "training" / "augment.py").write_text("STRENGTH = 1\n")
    assert code_digest(code) != before
