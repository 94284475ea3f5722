"""The architecture as a rule that can fail: each layer of `mnist_core` imports only the layers below it (every
import, also those inside functions), `mnist_core` never imports Prefect, and the ONNX inference path never
imports torch."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORE = PROJECT_ROOT / "mnist_core"

# Bottom to top. The kernel is the modules directly in mnist_core/ that everything may use; the application
# modules on top (preflight, fingerprint, sweep) compose the layers.
LAYERS = ["kernel", "data", "training", "evaluation", "export", "registry", "inference", "serving", "application"]
KERNEL = {"errors", "files", "redact", "config", "records", "cli", "layout", "stamps"}
APPLICATION = {"preflight", "fingerprint", "sweep", "model", "__main__"}  # model: the old cards' loader name


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "mnist_core", module
    if len(parts) == 1:
        return "kernel"
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] in KERNEL:
        return "kernel"
    if parts[1] in APPLICATION:
        return "application"
    raise AssertionError(f"mnist_core.{parts[1]} belongs to no layer: add it to a package or to this test's lists")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from mnist_core.data import images` imports mnist_core.data.images
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for path in sorted(CORE.rglob("*.py")):
        here = module_name(path)
        mine = LAYERS.index(layer_of(here))
        for line, target in imports_of(path):
            if target.split(".")[0] in ("prefect", "flows", "tasks", "deployments", "launch", "reporting"):
                wrong.append(f"{path.relative_to(PROJECT_ROOT)}:{line} imports {target} (mnist_core is plain PyTorch)")
                continue
            if not target.startswith("mnist_core.") or target.count(".") < 1:
                continue
            try:
                theirs = LAYERS.index(layer_of(target))
            except AssertionError:
                continue  # `from mnist_core.x import NAME`: NAME is not a module
            if theirs > mine:
                wrong.append(f"{path.relative_to(PROJECT_ROOT)}:{line} ({LAYERS[mine]}) imports {target} "
                             f"({LAYERS[theirs]}, a higher layer)")  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from data/ into registry/ is named."""
    assert LAYERS.index(layer_of("mnist_core.data.images")) < LAYERS.index(layer_of("mnist_core.registry.store"))
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mnist_core.registry.store import read_champion\n")
    assert imports_of(bad) == [(2, "mnist_core.registry.store"), (2, "mnist_core.registry.store.read_champion")]


@pytest.mark.parametrize(
    "statement",
    [
        "import mnist_core.inference.cli",
        "from mnist_core.export.runtimes import load_predictor",
        "import mnist_core.data.images",
        "from mnist_core.serving.app import create_app",
        "import mnist_core.serving.cli",
    ],
)
def test_the_onnx_path_imports_no_torch(statement: str) -> None:
    code = f"import sys; {statement}; bad = {{'torch', 'prefect'}} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, timeout=60)


@pytest.mark.parametrize(
    "load_with",
    [
        "mnist_core.model.load_weights, then model(images)",  # cards written before the layer packages
        "mnist_core.training.model.load_weights, then model(images)",  # cards written since
    ],
)
def test_the_loader_a_model_card_names_still_imports(load_with: str) -> None:
    from mnist_core.training.model import load_weights

    module, _, name = load_with.split(",")[0].rpartition(".")
    assert getattr(importlib.import_module(module), name) is load_weights
