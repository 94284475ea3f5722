import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before anything imports prefect: no telemetry (offline machine) and a private home for this test session.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mnist-tests-prefect-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME))
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(_SESSION_HOME / "storage"))

import pytest  # noqa: E402
import torch  # noqa: E402

from mnist_core import download as download_module  # noqa: E402
from mnist_core.config import RunParams  # noqa: E402
from mnist_core.download import download_dataset  # noqa: E402
from mnist_core.prepare import load_prepared, prepare_dataset, prepared_path  # noqa: E402
from tests import synthetic  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def mnist_mirror() -> Path:
    """The local MNIST mirror: $MNIST_MIRROR, else ../shared/data/mnist beside the project."""
    candidates = [os.environ.get("MNIST_MIRROR", ""), str(PROJECT_ROOT.parent / "shared" / "data" / "mnist")]
    for candidate in candidates:
        folder = Path(candidate.removeprefix("file://")) if candidate else None
        if folder and all((folder / name).is_file() for name in MNIST_FILES):
            return folder.resolve()
    pytest.fail(f"no MNIST mirror found (tried {candidates}); set MNIST_MIRROR to a folder with the four IDX files")


@pytest.fixture(scope="session")
def mnist_data_dir(mnist_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data cache with real MNIST downloaded and prepared (default split), shared by the whole session."""
    data_dir = tmp_path_factory.mktemp("mnist-data")
    files = download_dataset("mnist", data_dir, [str(mnist_mirror)])
    params = RunParams()
    prepare_dataset(files, data_dir, "mnist", params.val_size, params.seed)
    return data_dir


@pytest.fixture(scope="session")
def mnist_tensors(mnist_data_dir: Path) -> dict[str, torch.Tensor]:
    files = download_dataset("mnist", mnist_data_dir)  # served from the session's verified cache
    params = RunParams()
    sha256s = {role: entry["sha256"] for role, entry in files.items()}
    return load_prepared(prepared_path(mnist_data_dir, "mnist", sha256s, params.val_size, params.seed))


@pytest.fixture
def synthetic_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, dict[str, str]]:
    """A registered dataset 'synthetic' with a local mirror: (name, mirror folder, role -> SHA-256)."""
    mirror = tmp_path / "mirror"
    sha256s = synthetic.write_dataset(mirror)
    monkeypatch.setitem(download_module.DATASETS, "synthetic", synthetic.spec_for("synthetic", sha256s))
    return "synthetic", mirror, sha256s


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for the whole session (~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
