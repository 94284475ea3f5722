"""Bad data and bad mirrors: each gets an error naming the file (or mirror) at fault, and the cache stays clean."""

import base64
import contextlib
import gzip
import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from launch.server import free_port
from mnist_core.data import download as download_module
from mnist_core.data.download import download_dataset
from mnist_core.data.idx import read_bytes, read_images, read_labels
from mnist_core.data.prepare import prepare_dataset
from mnist_core.errors import DataError, DownloadError
from tests.support import synthetic
from tests.support.synthetic import assert_no_partial_files, snapshot

SLOW_RESPONSE_S = 2.0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass


class _NotFoundHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_error(404, "Not Found")


class _LoginHandler(_QuietHandler):
    """Files only for alice with the password "p@ss:word" (HTTP Basic), as a private mirror behind a login."""

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"alice:p@ss:word").decode():
            self.send_error(401, "Unauthorized")
            return
        super().do_GET()


class _SlowHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802
        time.sleep(SLOW_RESPONSE_S)
        with contextlib.suppress(OSError):  # the client gave up long ago, as intended
            self.send_error(503, "too slow anyway")


@pytest.fixture
def http_mirror() -> Iterator[Callable[..., str]]:
    """Starts loopback HTTP servers on demand; `start(kind, folder=None)` returns the mirror URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(kind: str, folder: Path | None = None) -> str:
        if kind in ("files", "login"):

            def handler(*args, **kwargs):
                return (_LoginHandler if kind == "login" else _QuietHandler)(*args, directory=str(folder), **kwargs)
        else:
            handler = {"404": _NotFoundHandler, "slow": _SlowHandler}[kind]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was just released)."""
    return f"http://127.0.0.1:{free_port()}/"


# --- files that are not what they claim -----------------------------------------------------------------------------


def _corrupt_mirror(synthetic_dataset, tmp_path: Path, mutate: Callable[[bytes], bytes]) -> tuple[Path, str]:
    """A copy of the synthetic mirror whose train-images file is replaced by mutate(original gzip bytes)."""
    _, mirror, _ = synthetic_dataset
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for name in synthetic.FILE_NAMES.values():
        (bad / name).write_bytes((mirror / name).read_bytes())
    target = bad / synthetic.FILE_NAMES["train_images"]
    target.write_bytes(mutate(target.read_bytes()))
    return bad, synthetic.FILE_NAMES["train_images"]


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _html_page(data: bytes) -> bytes:
    return b"<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>\n"


def _other_content(data: bytes) -> bytes:
    images, _ = synthetic.learnable_split(1200, seed=99)
    return gzip.compress(synthetic.idx_bytes(images), mtime=0)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_truncated, "DataError: train-images-idx3-ubyte.gz: corrupt or truncated gzip data"),
        (_html_page, "DataError: train-images-idx3-ubyte.gz: not a gzip file"),
        (_other_content, "DataError: SHA-256 of the content is"),
    ],
    ids=["truncated-gz", "html-error-page", "sha256-mismatch"],
)
def test_bad_download_is_refused_and_next_mirror_used(synthetic_dataset, tmp_path: Path, mutate, expected: str) -> None:
    name, good_mirror, sha256s = synthetic_dataset
    bad_mirror, bad_file = _corrupt_mirror(synthetic_dataset, tmp_path, mutate)
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError) as caught:
        download_dataset(name, cache, [str(bad_mirror)])
    message = str(caught.value)
    assert message.startswith(f"could not fetch a verified {bad_file}")
    assert f"{bad_mirror}: {expected}" in message
    raw = cache / "raw" / name
    assert not (raw / bad_file).exists(), "a file that failed verification was kept in the cache"
    assert_no_partial_files(cache)

    # The bad mirror first, a good one after it: the download succeeds and records where each file came from.
    files = download_dataset(name, cache, [str(bad_mirror), str(good_mirror)]).files
    assert files["train_images"].source == str(good_mirror)
    assert files["train_labels"].source == str(bad_mirror)
    for role, entry in files.items():
        assert hashlib.sha256(read_bytes(entry.path)).hexdigest() == sha256s[role]
    assert_no_partial_files(cache)


def test_read_bytes_names_the_broken_file(tmp_path: Path) -> None:
    content = synthetic.idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    truncated = tmp_path / "truncated-idx3-ubyte.gz"
    truncated.write_bytes(gzip.compress(content)[:-12])
    html = tmp_path / "html-idx3-ubyte.gz"
    html.write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match=r"truncated-idx3-ubyte\.gz: corrupt or truncated gzip"):
        read_bytes(truncated)
    with pytest.raises(DataError, match=r"html-idx3-ubyte\.gz: not a gzip file .*<html>"):
        read_bytes(html)
    with pytest.raises(DataError, match=r"missing\.gz: cannot read"):
        read_bytes(tmp_path / "missing.gz")


# --- valid gzip, valid checksum, invalid IDX content ----------------------------------------------------------------


def _bad_idx_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contents: dict[str, bytes]) -> tuple[str, Path]:
    """A registered dataset whose published checksums match its (defective) files: only IDX validation can object."""
    mirror = tmp_path / "mirror"
    sha256s = synthetic.write_dataset(mirror, overrides=contents)
    monkeypatch.setitem(download_module.DATASETS, "defective", synthetic.spec_for("defective", sha256s))
    return "defective", mirror


def _images(count: int = 1200, side: tuple[int, int] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(count, *side), dtype=np.uint8)


BAD_IDX_CASES = {
    "wrong-magic": (
        {"train_images": synthetic.idx_bytes(_images(), magic=0x00000804)},
        r"train-images-idx3-ubyte\.gz: IDX magic number is 0x00000804, expected 0x00000803",
    ),
    "labels-as-images": (
        {"train_images": synthetic.idx_bytes(np.zeros(1200, dtype=np.uint8))},
        r"train-images-idx3-ubyte\.gz: IDX magic number is 0x00000801, expected 0x00000803",
    ),
    "wrong-dimensions": (
        {"train_images": synthetic.idx_bytes(_images(side=(27, 28)))},
        r"train-images-idx3-ubyte\.gz: images are 27x28, expected 28x28",
    ),
    "header-size-mismatch": (
        {"train_images": synthetic.idx_bytes(_images())[:-784]},
        r"train-images-idx3-ubyte\.gz: header declares shape \(1200, 28, 28\) .* but the file has",
    ),
    "count-mismatch": (
        {"train_labels": synthetic.idx_bytes(np.zeros(1199, dtype=np.uint8))},
        r"train-images-idx3-ubyte\.gz has 1200 images but train-labels-idx1-ubyte\.gz has 1199 labels",
    ),
    "label-out-of-range": (
        {"test_labels": synthetic.idx_bytes(np.array([3] * 17 + [10] + [0] * 282, dtype=np.uint8))},
        r"t10k-labels-idx1-ubyte\.gz: label 10 at index 17 is outside 0-9",
    ),
    "no-images": (
        {
            "test_images": synthetic.idx_bytes(np.zeros((0, 28, 28), dtype=np.uint8)),
            "test_labels": synthetic.idx_bytes(np.zeros(0, dtype=np.uint8)),
        },
        r"t10k-images-idx3-ubyte\.gz: no images",
    ),
}


@pytest.mark.parametrize("case", list(BAD_IDX_CASES))
def test_invalid_idx_content_is_refused_before_caching(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents, expected = BAD_IDX_CASES[case]
    name, mirror = _bad_idx_dataset(tmp_path, monkeypatch, contents)
    cache = tmp_path / "cache"
    downloaded = download_dataset(name, cache, [str(mirror)])  # checksums match: the download itself is fine
    raw_before = snapshot(cache / "raw")

    with pytest.raises(DataError, match=expected):
        prepare_dataset(downloaded, cache, val_size=100, seed=0)
    assert snapshot(cache / "raw") == raw_before
    assert not list((cache / "prepared").glob("*")) if (cache / "prepared").exists() else True
    assert_no_partial_files(cache)


def test_val_size_larger_than_training_set(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, _ = synthetic_dataset
    downloaded = download_dataset(name, tmp_path / "cache", [str(mirror)])
    with pytest.raises(DataError, match=r"val_size=1200 leaves no training images \(the training set has 1200\)"):
        prepare_dataset(downloaded, tmp_path / "cache", val_size=1200, seed=0)


def test_readers_on_uncompressed_files(tmp_path: Path) -> None:
    """Raw (not gzip) IDX files are read too, with the same checks."""
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(synthetic.idx_bytes(np.array([1, 2, 255], dtype=np.uint8)))
    with pytest.raises(DataError, match="label 255 at index 2"):
        read_labels(path)
    path.write_bytes(synthetic.idx_bytes(_images(2)))
    assert read_images(path).shape == (2, 28, 28)


# --- mirrors that fail --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unreachable", "timeout", "404"])
def test_failing_mirror_alone_is_reported(
    kind: str, synthetic_dataset, http_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _, _ = synthetic_dataset
    monkeypatch.setattr(download_module, "FETCH_TIMEOUT_S", 0.3)
    url = {"unreachable": closed_port_url, "timeout": lambda: http_mirror("slow"), "404": lambda: http_mirror("404")}[
        kind
    ]()
    expected = {"unreachable": "Connection refused", "timeout": "timed out", "404": "HTTP Error 404"}[kind]
    cache = tmp_path / "cache"
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download_dataset(name, cache, [url])
    assert time.monotonic() - started < SLOW_RESPONSE_S + 5
    message = str(caught.value)
    assert "could not fetch a verified train-images-idx3-ubyte.gz" in message
    assert url in message and expected in message
    assert_no_partial_files(cache)
    assert not list((cache / "raw" / name).glob("*"))


def test_fallback_through_failing_mirrors(
    synthetic_dataset, http_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unreachable, timing-out and 404 mirrors first; the fourth (over HTTP) delivers every file."""
    name, mirror, sha256s = synthetic_dataset
    monkeypatch.setattr(download_module, "FETCH_TIMEOUT_S", 0.3)
    good = http_mirror("files", mirror)
    failing = [closed_port_url(), http_mirror("slow"), http_mirror("404")]
    cache = tmp_path / "cache"
    started = time.monotonic()
    files = download_dataset(name, cache, [*failing, good]).files
    # Each file waits out the timeout once (4 x 0.3 s), never the slow server's full response time.
    assert time.monotonic() - started < 4 * SLOW_RESPONSE_S
    assert {entry.source for entry in files.values()} == {good}
    for role, entry in files.items():
        assert entry.sha256 == sha256s[role]
        assert hashlib.sha256(read_bytes(entry.path)).hexdigest() == sha256s[role]
    assert_no_partial_files(cache)


def test_a_mirror_behind_a_login_takes_it_from_the_url_or_netrc(
    synthetic_dataset, http_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a docs check: urllib read "alice:pw@127.0.0.1" as the host name, so a URL with a login (whose
    password the docs promised to mask) never reached its server. Sent as HTTP Basic now, or read from ~/.netrc."""
    name, mirror, _ = synthetic_dataset
    url = http_mirror("login", mirror)
    with pytest.raises(DownloadError, match="HTTP Error 401"):
        download_dataset(name, tmp_path / "none", [url])
    with_login = url.replace("http://", "http://alice:p%40ss%3Aword@")
    with pytest.raises(DownloadError) as wrong:
        download_dataset(name, tmp_path / "wrong", [with_login.replace("word@", "wort@")])
    assert "HTTP Error 401" in str(wrong.value) and "wort" not in str(wrong.value)  # the password masked
    files = download_dataset(name, tmp_path / "url", [with_login]).files
    assert {entry.source for entry in files.values()} == {url.replace("http://", "http://***@")}
    netrc = tmp_path / "netrc-file"
    netrc.write_text("machine 127.0.0.1 login alice password p@ss:word\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert {entry.source for entry in download_dataset(name, tmp_path / "by-netrc", [url]).files.values()} == {url}


def test_mirror_from_environment_is_tried_last(
    synthetic_dataset, http_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, mirror, _ = synthetic_dataset
    monkeypatch.setitem(
        download_module.DATASETS, name, synthetic.spec_for(name, synthetic_dataset[2], (http_mirror("404"),))
    )
    monkeypatch.setenv("SYNTHETIC_MIRROR", f" {closed_port_url()} , {mirror} ")
    files = download_dataset(name, tmp_path / "cache", []).files
    assert {entry.source for entry in files.values()} == {str(mirror)}


def test_corrupted_cache_entry_is_fetched_again(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, sha256s = synthetic_dataset
    cache = tmp_path / "cache"
    files = download_dataset(name, cache, [str(mirror)]).files
    cached = files["train_labels"].path
    cached.write_bytes(cached.read_bytes()[:40])  # a previous run died mid-copy outside our atomic writes
    again = download_dataset(name, cache, [str(mirror)]).files
    assert again["train_labels"].source == str(mirror)
    assert again["train_images"].source == "cache"
    assert hashlib.sha256(read_bytes(cached)).hexdigest() == sha256s["train_labels"]


@pytest.mark.slow
def test_bad_mirror_from_cli(
    prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole path: flag -> flow -> download task (with its retries) -> exit status 1 and a short message."""
    from dataclasses import replace

    from launch.cli import train as main

    # Offline or not, only the mirror under test is tried.
    monkeypatch.setitem(
        download_module.DATASETS, "mnist", replace(download_module.DATASETS["mnist"], official_mirrors=())
    )
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    mirror = tmp_path / "error-pages"
    mirror.mkdir()
    for name in synthetic.FILE_NAMES.values():
        (mirror / name).write_bytes(_html_page(b""))
    data_dir, output = tmp_path / "data", tmp_path / "runs"
    code = main(["--mirror", str(mirror), "--data-dir", str(data_dir), "--output-dir", str(output), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1
    # Prefect's own log of the failed task carries a traceback (for the UI); the CLI's last word is short.
    ours = err[err.index("mnist: error:") :]
    assert "Traceback" not in ours
    assert ours.startswith("mnist: error: could not fetch a verified train-images-idx3-ubyte.gz")
    assert f"{mirror}: DataError: train-images-idx3-ubyte.gz" in ours and "not a gzip file" in ours
    assert not [p for p in data_dir.rglob("*") if p.is_file()], "something was cached from a bad mirror"
    assert not [p for p in output.iterdir() if not p.name.startswith(".")]
