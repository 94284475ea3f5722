import gzip
import hashlib
from pathlib import Path

import pytest

from mnist_core.data.download import DATASETS, decompressed_sha256, download_dataset, mirrors_for
from mnist_core.files import FILE_MODE


def test_mirrors_official_first_then_user_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_MIRROR", "/env/a, file:///env/b")
    mirrors = mirrors_for(DATASETS["mnist"], ["/user"])
    assert mirrors[: len(DATASETS["mnist"].official_mirrors)] == list(DATASETS["mnist"].official_mirrors)
    assert mirrors[-3:] == ["/user", "/env/a", "file:///env/b"]


def test_fashion_mnist_reads_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHION_MNIST_MIRROR", "/usr/share/datasets/fashion-mnist")
    assert mirrors_for(DATASETS["fashion-mnist"])[-1] == "/usr/share/datasets/fashion-mnist"


def test_download_from_folder_and_file_url(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, sha256s = synthetic_dataset
    for source in (str(mirror), mirror.as_uri()):
        cache = tmp_path / f"cache-{len(source)}"
        files = download_dataset(name, cache, [source]).files
        assert set(files) == set(sha256s)
        for role, entry in files.items():
            assert entry.source == source
            assert decompressed_sha256(entry.path) == sha256s[role]
            assert entry.path.parent == (cache / "raw" / name).resolve()
            assert entry.path.stat().st_mode & 0o777 == FILE_MODE  # readable by a team sharing the cache
        assert not list((cache / "raw" / name).glob("*.part"))


def test_verified_cache_is_not_fetched_again(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, _ = synthetic_dataset
    first = download_dataset(name, tmp_path, [str(mirror)]).files
    for item in mirror.iterdir():
        item.unlink()  # the mirror is gone: only the cache can serve now
    second = download_dataset(name, tmp_path, [str(mirror)]).files
    assert {entry.source for entry in second.values()} == {"cache"}
    assert [e.path for e in first.values()] == [e.path for e in second.values()]


def test_recompressed_file_is_accepted_by_content_hash(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, sha256s = synthetic_dataset
    target = mirror / "train-labels-idx1-ubyte.gz"
    content = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    files = download_dataset(name, tmp_path, [str(mirror)]).files
    assert (
        hashlib.sha256(gzip.decompress(files["train_labels"].path.read_bytes())).hexdigest()
        == (sha256s["train_labels"])
    )


def test_real_mnist_mirror_verifies(mnist_mirror: Path, tmp_path: Path) -> None:
    files = download_dataset("mnist", tmp_path, [str(mnist_mirror)]).files
    for role, entry in files.items():
        assert entry.source != "cache"
        assert decompressed_sha256(entry.path) == DATASETS["mnist"].files[role][1]


def test_unreachable_mirror_is_tried_once_per_dataset(
    synthetic_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    from mnist_core.data import download as download_module

    name, mirror, _ = synthetic_dataset
    dead = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused
    attempts: list[str] = []
    real_fetch = download_module._fetch

    def counting_fetch(source, on_bytes, name, target) -> None:
        attempts.append(str(source))
        if str(source).startswith(dead):
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        real_fetch(source, on_bytes, name, target)

    monkeypatch.setattr(download_module, "_fetch", counting_fetch)
    files = download_dataset(name, tmp_path, [dead, str(mirror)]).files
    assert [a for a in attempts if a.startswith(dead)] == [dead + "train-images-idx3-ubyte.gz"]
    assert {entry.source for entry in files.values()} == {str(mirror)}


def test_a_real_fetch_reports_its_bytes_and_a_cached_file_none(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, _ = synthetic_dataset
    seen: dict[str, tuple[int, int | None]] = {}

    def on_bytes(file_name: str, copied: int, total: int | None) -> None:
        seen[file_name] = (copied, total)

    files = download_dataset(name, tmp_path, [str(mirror)], on_bytes).files
    assert set(seen) == {entry.path.name for entry in files.values()}
    for file_name, (copied, total) in seen.items():
        assert copied == total == (mirror / file_name).stat().st_size, file_name
    seen.clear()
    download_dataset(name, tmp_path, [str(mirror)], on_bytes)
    assert seen == {}
