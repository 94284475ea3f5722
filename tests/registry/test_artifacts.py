"""Model files in an artifact store (mnist_core/registry/artifacts.py): a local folder, and a real S3-compatible
server (SeaweedFS on loopback): content-addressed uploads, checked fetches, and the store failing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_core.errors import DataError, StorageError
from mnist_core.registry.artifacts import ArtifactStore, blob_key
from mnist_core.stamps import file_sha256
from tests.support import PROJECT_ROOT
from tests.support.seaweedfs import SECRET_KEY, SeaweedFS


def model_file(folder: Path, size: int = 4096, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def test_a_local_store_round_trip_is_content_addressed(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    path = model_file(tmp_path / "run")
    sha = file_sha256(path)
    uri = store.put(path)
    assert uri.endswith(blob_key(sha)) and (tmp_path / "store" / blob_key(sha)).read_bytes() == path.read_bytes()
    copy = model_file(tmp_path / "other-machine")
    copy.write_bytes(path.read_bytes())
    assert store.put(copy) == uri  # the same bytes from anywhere: the same object, nothing rewritten
    fetched = store.fetch(uri, sha, tmp_path / "cache", ".onnx")
    assert fetched.read_bytes() == path.read_bytes() and fetched.name == f"{sha}.onnx"


def test_a_changed_object_or_cached_copy_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    path = model_file(tmp_path / "run")
    sha = file_sha256(path)
    uri = store.put(path)
    cached = store.fetch(uri, sha, tmp_path / "cache")
    cached.write_bytes(b"a cache anyone can write to")
    assert store.fetch(uri, sha, tmp_path / "cache").read_bytes() == path.read_bytes()  # fetched again
    (tmp_path / "store" / blob_key(sha)).write_bytes(b"changed in the store")
    with pytest.raises(DataError, match="changed in the store; refusing"):
        store.fetch(uri, sha, tmp_path / "fresh-cache")
    assert not (tmp_path / "fresh-cache" / sha).exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [("", "empty"), ("ftp://host/x", "s3://BUCKET"), ("s3://", "needs a bucket")],
)
def test_a_bad_store_url_is_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        ArtifactStore(url)


def test_a_missing_object_is_named(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(DataError, match="no such object"):
        store.fetch(store.uri("0" * 64), "0" * 64, tmp_path / "cache")


# A real S3 server: SeaweedFS, once for the session (tests/conftest.py; ~3 s to start).


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    return seaweedfs.env()


@pytest.mark.slow
def test_an_s3_store_round_trip(s3_env: dict[str, str], tmp_path: Path) -> None:
    store = ArtifactStore(s3_env["MNIST_ARTIFACT_STORE"])
    path = model_file(tmp_path / "run", size=600_000)
    sha = file_sha256(path)
    started = time.monotonic()
    uri = store.put(path)
    upload_s = time.monotonic() - started
    assert uri == f"{s3_env['MNIST_ARTIFACT_STORE']}/{blob_key(sha)}"
    started = time.monotonic()
    fetched = store.fetch(uri, sha, tmp_path / "cache", ".onnx")
    print(
        f"\nSeaweedFS on loopback: upload {upload_s * 1000:.0f} ms, fetch {(time.monotonic() - started) * 1000:.0f} ms"
    )
    assert fetched.read_bytes() == path.read_bytes()


@pytest.mark.slow
def test_an_object_changed_in_the_bucket_is_refused(s3_env: dict[str, str], tmp_path: Path) -> None:
    import obstore

    store = ArtifactStore(s3_env["MNIST_ARTIFACT_STORE"])
    path = model_file(tmp_path / "run")
    sha = file_sha256(path)
    uri = store.put(path)
    obstore.put(store._obstore, blob_key(sha), b"someone else's bytes")
    with pytest.raises(DataError, match="changed in the store"):
        store.fetch(uri, sha, tmp_path / "cache")


@pytest.mark.slow
def test_an_unreachable_store_fails_in_seconds_with_one_line(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launch.server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    store = ArtifactStore(s3_env["MNIST_ARTIFACT_STORE"])
    started = time.monotonic()
    with pytest.raises(StorageError) as error:
        store.put(model_file(tmp_path / "run"))
    assert time.monotonic() - started < 30
    message = str(error.value)
    assert message.startswith(s3_env["MNIST_ARTIFACT_STORE"]) and "\n" not in message
    assert SECRET_KEY not in message and s3_env["AWS_ACCESS_KEY_ID"] not in message


UPLOAD = """
import sys
from pathlib import Path
from mnist_core.registry.artifacts import ArtifactStore
print("uploading", flush=True)
ArtifactStore(sys.argv[1]).put(Path(sys.argv[2]))
print("uploaded", flush=True)
"""


@pytest.mark.slow
def test_an_upload_killed_half_way_leaves_no_object(s3_env: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL mid-upload: the store holds the whole object or none, never a part under the model's name."""
    path = model_file(tmp_path / "run", size=32 * 1024 * 1024)
    sha = file_sha256(path)
    upload = subprocess.Popen(
        [sys.executable, "-c", UPLOAD, s3_env["MNIST_ARTIFACT_STORE"], str(path)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert upload.stdout is not None and upload.stdout.readline().strip() == "uploading"
    time.sleep(0.3)
    upload.send_signal(signal.SIGKILL)
    upload.wait(timeout=30)
    import obstore

    store = ArtifactStore(s3_env["MNIST_ARTIFACT_STORE"])
    try:
        head = obstore.head(store._obstore, blob_key(sha))
    except FileNotFoundError:
        head = None
    assert head is None or head["size"] == path.stat().st_size
    # And the next upload completes it; the fetch checks every byte.
    uri = store.put(path, sha)
    assert store.fetch(uri, sha, tmp_path / "cache").stat().st_size == path.stat().st_size
