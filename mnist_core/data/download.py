"""Fetching a dataset's four IDX files from mirrors into a verified cache."""

import base64
import contextlib
import functools
import gzip
import hashlib
import json
import logging
import netrc
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mnist_core.errors import DataError, DownloadError
from mnist_core.files import atomic_write, atomic_write_text
from mnist_core.records import DatasetFile, Downloaded
from mnist_core.redact import redact_url

log = logging.getLogger(__name__)

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024  # the largest real file is ~10 MB compressed
FETCH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    official_mirrors: tuple[str, ...]
    # role -> (file name, SHA-256 of the decompressed IDX content)
    files: dict[str, tuple[str, str]]

    @property
    def mirror_env_var(self) -> str:
        return self.name.upper().replace("-", "_") + "_MIRROR"


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        official_mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        official_mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
    ),
}


def mirrors_for(spec: DatasetSpec, extra: Iterable[str] = ()) -> list[str]:
    """Official mirrors first, then the caller's, then those in the environment variable (comma-separated)."""
    from_env = [m.strip() for m in os.environ.get(spec.mirror_env_var, "").split(",") if m.strip()]
    return list(dict.fromkeys([*spec.official_mirrors, *extra, *from_env]))  # first occurrence wins


def decompressed_sha256(path: Path, name: str | None = None) -> str:
    """SHA-256 of a gzip file's content; DataError (naming `name`, default the file's) if it is not complete gzip."""
    name = name or path.name
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except gzip.BadGzipFile as error:
        raise DataError(f"{name}: not a gzip file ({error}); an error page instead of data?") from error
    except (EOFError, zlib.error, OSError) as error:
        raise DataError(f"{name}: corrupt or truncated gzip data ({error})") from error
    return digest.hexdigest()


RACY_SECONDS = 2.0  # a cached file changed this recently is hashed in full again next time


def _verified_record(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def _identity(path: Path) -> dict[str, int]:
    """What changes whenever the file's bytes can have: it was replaced (inode), written (size, mtime, ctime)."""
    stat = path.stat()
    return {"inode": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def record_verified(path: Path, sha256: str) -> None:
    """Note beside a cached file that its content was just checked against `sha256`, with the file's identity, so
    the next run trusts it without decompressing and hashing it again (~0.2 s a run for MNIST's four files)."""
    with contextlib.suppress(OSError):  # a read-only cache is checked in full each time, as before
        identity = _identity(path)
        # A file changed within the filesystem's timestamp granularity of the check could change again with the
        # same times ("racily clean", as git calls it): such a file is not recorded, and is hashed next time.
        if time.time_ns() - max(identity["mtime_ns"], identity["ctime_ns"]) < RACY_SECONDS * 1e9:
            return
        atomic_write_text(_verified_record(path), json.dumps({"sha256": sha256, **identity}))


def verified_before(path: Path, sha256: str) -> bool:
    """True when the file is, to the inode and the nanosecond, the one whose content matched `sha256` last time:
    any write, truncation or replacement since (ours or anyone's) changes its size, ctime or inode, and it is hashed
    again. ctime cannot be set back by a user, unlike mtime."""
    try:
        recorded = json.loads(_verified_record(path).read_text(encoding="utf-8"))
        return recorded == {"sha256": sha256, **_identity(path)}
    except (OSError, ValueError):
        return False


def _source_url(mirror: str, file_name: str) -> str | Path:
    """A URL for http(s)/file mirrors, a Path for plain folders."""
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme in ("http", "https", "file"):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(file_name)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive
        raise DownloadError(f"unsupported mirror scheme {scheme!r} (use http, https, file or a folder path)")
    return Path(mirror).expanduser() / file_name


# (file name, bytes so far, total bytes or None when the source does not say): a progress bar's feed.
OnBytes = Callable[[str, int, int | None], None]


def _no_progress(name: str, copied: int, total: int | None) -> None:
    pass


def _copy_limited(source: BinaryIO, target: BinaryIO, progress: Callable[[int], None]) -> None:
    copied = 0
    while chunk := source.read(1 << 20):
        copied += len(chunk)
        if copied > MAX_DOWNLOAD_BYTES:
            raise DownloadError(f"more than {MAX_DOWNLOAD_BYTES} bytes; refusing an oversized file")
        target.write(chunk)
        progress(copied)


def _fetch(source: str | Path, on_bytes: OnBytes, name: str, target: BinaryIO) -> None:
    if isinstance(source, Path):
        if not source.is_file():
            raise DownloadError(f"no such file {source}")
        total = source.stat().st_size
        with open(source, "rb") as stream:
            _copy_limited(stream, target, lambda copied: on_bytes(name, copied, total))
        return
    with urllib.request.urlopen(_request(source), timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (schemes checked)
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        _copy_limited(response, target, lambda copied: on_bytes(name, copied, total))


def _request(url: str) -> urllib.request.Request:
    """`url` as urllib can send it: a user:password in it (which urlopen takes for part of the host name, so such
    a mirror never answered) sent as HTTP Basic authentication instead; without one, the host's entry in
    ~/.netrc (or $NETRC), as curl and pip read it. Never sent on to where a redirect points."""
    parts = urllib.parse.urlsplit(url)
    login: tuple[str, str] | None = None
    if parts.username is not None or parts.password is not None:
        login = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        url = urllib.parse.urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
    elif parts.hostname:
        login = _netrc_login(parts.hostname)
    request = urllib.request.Request(url)
    if login is not None:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode("ascii")
        request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _netrc_login(host: str) -> tuple[str, str] | None:
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except FileNotFoundError:
        return None
    except (netrc.NetrcParseError, OSError) as error:
        raise DownloadError(f"cannot read the netrc file for {host}'s login ({error})") from error
    return (entry[0], entry[2] or "") if entry else None


def _unreachable(error: Exception) -> bool:
    """The mirror itself cannot be reached (no route, no DNS, refused, timed out), as opposed to lacking a file."""
    if isinstance(error, urllib.error.HTTPError):
        return False
    return isinstance(error, (urllib.error.URLError, TimeoutError, ConnectionError))


def fetch_verified(
    file_name: str,
    sha256: str,
    cache_dir: Path,
    mirrors: list[str],
    unreachable: set[str] | None = None,
    on_bytes: OnBytes = _no_progress,
) -> tuple[Path, str]:
    """The cached, verified copy of `file_name` and where it came from, fetching it if needed.

    Mirrors found unreachable are added to `unreachable` and skipped for the caller's next files, so an
    offline machine pays each dead mirror's timeout once per dataset, not once per file."""
    unreachable = set() if unreachable is None else unreachable
    cache_dir.mkdir(parents=True, exist_ok=True)
    destination = (cache_dir / file_name).resolve()
    if destination.parent != cache_dir.resolve():
        raise DownloadError(f"file name {file_name!r} would write outside the cache folder {cache_dir}")
    if destination.is_file():
        if verified_before(destination, sha256):
            return destination, "cache"
        try:
            if decompressed_sha256(destination) == sha256:
                record_verified(destination, sha256)
                return destination, "cache"
        except DataError:
            pass
        log.warning("cached %s failed verification; fetching it again", destination)

    def verify(temp_path: Path) -> None:
        actual = decompressed_sha256(temp_path, file_name)  # the real name, not the temporary one
        if actual != sha256:
            raise DataError(f"SHA-256 of the content is {actual}, expected {sha256}")

    failures: list[str] = []
    for mirror in mirrors:
        if mirror in unreachable:
            failures.append(f"  - {redact_url(mirror)}: skipped (unreachable for an earlier file)")
            continue
        try:
            fetch = functools.partial(_fetch, _source_url(mirror, file_name), on_bytes, file_name)
            atomic_write(destination, fetch, check=verify)
            record_verified(destination, sha256)
            log.info("fetched %s from %s", file_name, redact_url(mirror))
            return destination, redact_url(mirror)
        except Exception as error:  # noqa: BLE001 - every failure is reported with its mirror below
            if _unreachable(error):
                unreachable.add(mirror)
            # urllib can echo the URL (credentials included) in its message, hence the replace.
            reason = str(error).replace(mirror, redact_url(mirror))
            failures.append(f"  - {redact_url(mirror)}: {type(error).__name__}: {reason}")
    tried = "\n".join(failures) if failures else "  (no mirrors configured)"
    raise DownloadError(f"could not fetch a verified {file_name}; mirrors tried:\n{tried}")


def download_dataset(
    name: str, cache_root: Path, extra_mirrors: Iterable[str] = (), on_bytes: OnBytes = _no_progress
) -> Downloaded:
    """Fetch (or find cached) the four verified files of dataset `name`; `on_bytes` follows each real fetch."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    mirrors = mirrors_for(spec, extra_mirrors)
    cache_dir = Path(cache_root).expanduser().resolve() / "raw" / spec.name
    files: dict[str, DatasetFile] = {}
    unreachable: set[str] = set()
    for role in ROLES:
        file_name, sha256 = spec.files[role]
        path, source = fetch_verified(file_name, sha256, cache_dir, mirrors, unreachable, on_bytes)
        files[role] = DatasetFile(path=path, sha256=sha256, source=source)
    return Downloaded(dataset=name, files=files)
