"""The architecture as a rule that can fail: each layer of `mnist_core` imports only the layers below it (every
import, also those inside functions), `mnist_core` never imports Prefect, the packages around it import only
downwards (mnist_core <- reporting <- tasks <- flows <- launch), benchmarks import nothing from the tests, no test
module imports another, and the ONNX inference path never imports torch. docs/development.md draws the same."""

import ast
import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORE = PROJECT_ROOT / "mnist_core"

# Bottom to top. The kernel is the modules directly in mnist_core/ that everything may use; the application
# modules on top (preflight, fingerprint, sweep) compose the layers.
LAYERS = ["kernel", "data", "training", "evaluation", "export", "registry", "inference", "serving", "application"]
KERNEL = {"errors", "files", "redact", "config", "records", "flags", "layout", "stamps", "settings"}
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


# The packages around mnist_core, bottom to top; each may import those before it (and itself). deployments/ holds
# only prefect.yaml: nothing imports it.
OUTER = ["mnist_core", "reporting", "tasks", "flows", "deployments", "launch"]


def _outside_script_entry(tree: ast.Module) -> ast.Module:
    """The module without its `if __name__ == "__main__":` blocks: a flow module run as a script hands over to the
    `mnist` command there (`python flows/mnist.py` = `mnist train`); importing the module never runs it."""
    kept = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)
        )
    ]
    return ast.Module(body=kept, type_ignores=[])


def project_imports(path: Path) -> list[tuple[int, str]]:
    tree = _outside_script_entry(ast.parse(path.read_text(), str(path)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]  # `from tests import x`
    return [(line, name) for line, name in found if name.split(".")[0] in (*OUTER, "tests", "benchmarks")]


def test_the_packages_around_mnist_core_import_only_downwards() -> None:
    wrong = []
    for package in OUTER[1:]:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            for line, target in project_imports(path):
                top = target.split(".")[0]
                if top not in OUTER or OUTER.index(top) > OUTER.index(package):
                    wrong.append(f"{path.relative_to(PROJECT_ROOT)}:{line} ({package}) imports {target}")
    assert not wrong, "\n".join(wrong)


def imports_in(folder: str, wanted: Callable[[str], bool]) -> list[str]:
    return [
        f"{path.relative_to(PROJECT_ROOT)}:{line} imports {target}"
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))
        for line, target in project_imports(path)
        if wanted(target)
    ]


def test_benchmarks_import_nothing_from_the_tests() -> None:
    wrong = imports_in("benchmarks", lambda target: target.split(".")[0] == "tests")
    assert not wrong, "\n".join(wrong)


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/support/ (or are fixtures in conftest.py), never in a test module."""
    wrong = imports_in("tests", lambda target: target.startswith("tests.") and ".test_" in f".{target}")
    assert not wrong, "\n".join(wrong)


def test_the_outer_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a task importing launch is seen; a script entry's import is not an import of the module."""
    task = tmp_path / "task.py"
    task.write_text("from launch.local import run_from_command_line\n")
    assert project_imports(task) == [(1, "launch.local"), (1, "launch.local.run_from_command_line")]
    flow = tmp_path / "flow.py"
    flow.write_text('if __name__ == "__main__":\n    from launch.cli import run_script\nfrom tasks import train\n')
    assert project_imports(flow) == [(3, "tasks"), (3, "tasks.train")]


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from data/ into registry/ is named."""
    assert LAYERS.index(layer_of("mnist_core.data.images")) < LAYERS.index(layer_of("mnist_core.registry.store"))
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mnist_core.registry.store import read_champion\n")
    assert imports_of(bad) == [(2, "mnist_core.registry.store"), (2, "mnist_core.registry.store.read_champion")]


@pytest.mark.parametrize(
    "statement",
    [
        "import mnist_core.inference.predict_command",
        "from mnist_core.export.runtimes import load_predictor",
        "import mnist_core.data.images",
        "from mnist_core.serving.app import create_app",
        "import mnist_core.serving.serve_command",
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
