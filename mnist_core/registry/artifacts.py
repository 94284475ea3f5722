"""Model files in an artifact store, so machines that share no folder share one champion: a local folder, or an
S3-compatible bucket (`s3://bucket/prefix`: AWS S3, SeaweedFS, MinIO, ...) through obstore.

Content-addressed, as Metaflow stores its blobs: a file goes to `<store>/blobs/sha256/<hex>`, so two machines
uploading the same model write the same object, an object never changes under its name, and a later upload never
conflicts with an earlier one. An upload returns only once the store has the whole object (an S3 PUT is atomic;
a local store writes beside and renames), and the registry records the URI only after that: a half-uploaded
model is never anyone's champion. A fetch checks the bytes against the SHA-256 the registry recorded, so a model
whose object was changed in the store is refused, and keeps them in a local cache.

S3 credentials and endpoint come from the environment as the AWS tools read them (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`; `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint such as
a SeaweedFS on loopback) and are never logged or written: messages name the store's URL only.
"""

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_core.errors import DataError, StorageError
from mnist_core.files import atomic_write
from mnist_core.layout import CARD_FILE, EXPORTED_PROGRAM_FILE, ONNX_FILE, WEIGHTS_FILE
from mnist_core.records import Exported, ModelCard
from mnist_core.redact import redact_url
from mnist_core.settings import current as current_settings
from mnist_core.stamps import file_sha256

if TYPE_CHECKING:
    from mnist_core.registry.rows import ChampionPointer

STORE_ENV = "MNIST_ARTIFACT_STORE"
BLOBS = "blobs/sha256"
# A store that does not answer, or answers 5xx, is retried for a few seconds (jittered back-off, at most ~9 s in
# all), then the caller gets one clear error (obstore's defaults retry for up to 3 minutes, which holds a run, a
# server or `mnist predict` for nothing). The three retries before ended within ~1 s, too soon for a store to get
# over a 5xx (S3's own advice is to back off and retry).
RETRY = {
    "max_retries": 6,
    "retry_timeout": timedelta(seconds=20),
    "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=3), "base": 2.0},
}
TIMEOUTS = {"connect_timeout": "5s", "timeout": "60s"}


def blob_key(sha256: str) -> str:
    return f"{BLOBS}/{sha256}"


def _s3_store(url: str, retry: dict[str, Any] | None = None) -> Any:
    from obstore.store import S3Store

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{url}: an S3 store needs a bucket: s3://BUCKET[/PREFIX]")
    settings = current_settings()  # the environment, else the settings file (docs/settings.md)
    config: dict[str, Any] = {"region": settings.aws_region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or settings.aws_endpoint_url
    if endpoint:
        config["endpoint"] = endpoint
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        config["access_key_id"] = settings.aws_access_key_id
        config["secret_access_key"] = settings.secret("aws_secret_access_key")
    client: dict[str, Any] = dict(TIMEOUTS)
    if settings.aws_allow_http:
        client["allow_http"] = True
    # Other credentials (a session token, a profile): obstore reads the rest of AWS_* itself.
    return S3Store(bucket, prefix=prefix or None, config=config, client_options=client, retry_config=retry or RETRY)


def s3_endpoint() -> str:
    """The S3 endpoint this machine's settings name (for messages: which server did not answer)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or current_settings().aws_endpoint_url or "AWS S3"


def local_folder(url: str) -> Path | None:
    """The folder a store's URL names (a path, or file://PATH); None for any other scheme (s3://)."""
    if "://" in url and not url.startswith("file://"):
        return None
    return Path(url.removeprefix("file://")).expanduser().resolve()


@dataclass(frozen=True)
class ArtifactStore:
    """A store of model files by SHA-256: `put` a file, `fetch` it back (checked) into a local cache."""

    url: str  # s3://bucket/prefix, file:///folder, or a folder path

    def __post_init__(self) -> None:
        if not self.url.strip():
            raise StorageError(f"{STORE_ENV}: the artifact store's URL is empty")
        object.__setattr__(self, "_store", self._open())

    def _open(self) -> Any:
        if self.url.startswith("s3://"):
            return _s3_store(self.url)
        folder = local_folder(self.url)
        if folder is None:
            raise StorageError(f"{redact_url(self.url)}: an artifact store is s3://BUCKET[/PREFIX] or a folder")
        from obstore.store import LocalStore

        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"{folder}: the artifact store's folder cannot be created ({error.strerror})") from error
        return LocalStore(folder)

    @property
    def _obstore(self) -> Any:
        return self.__dict__["_store"]

    def probe(self) -> None:
        """Before any training: the store answers, its bucket exists, and a small object written reads back
        (then deleted); otherwise one StorageError line naming the store, its endpoint and what failed. With two
        quick retries, not the upload's ~9 s of them: a preflight that waits is a preflight nobody runs."""
        import uuid

        import obstore

        where = redact_url(self.url)
        if self.url.startswith("s3://"):
            where += f" (endpoint {s3_endpoint()})"
            store = _s3_store(self.url, {**RETRY, "max_retries": 2, "retry_timeout": timedelta(seconds=5)})
        else:
            store = self._obstore
        key = f"preflight/{uuid.uuid4().hex}"
        payload = uuid.uuid4().hex.encode()
        step = "writing a test object"
        try:
            obstore.put(store, key, payload)
            step = "reading the test object back"
            back = bytes(obstore.get(store, key).bytes())
            step = "deleting the test object"
            obstore.delete(store, key)
        except Exception as error:  # obstore's errors: unreachable, refused, no bucket, bad credentials
            raise StorageError(f"artifact store {where}: {step} failed: {_reason(error)}") from None
        if back != payload:
            raise StorageError(f"artifact store {where}: the test object read back differs from what was written")

    def uri(self, sha256: str) -> str:
        return f"{self.url.rstrip('/')}/{blob_key(sha256)}"

    def _failed(self, what: str, error: Exception) -> StorageError:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StorageError(f"{redact_url(self.url)}: {what} failed: {first_line[:300]}")

    def put(self, path: Path, sha256: str | None = None) -> str:
        """Upload `path` under its SHA-256 (skipped if the store already holds that object); its URI. Returns only
        once the whole object is in the store."""

        def content() -> bytes:
            try:
                return path.read_bytes()
            except OSError as error:
                raise StorageError(f"{path}: cannot be read for upload ({error.strerror})") from error

        return self._put(sha256 or file_sha256(path), path.stat().st_size, content, path.name)

    def put_bytes(self, content: bytes) -> str:
        """Upload `content` under its SHA-256 (skipped if the store already holds it: content-addressed, so the same
        bytes are one object); its URI. For small objects (a feedback image) that never were a file."""
        return self._put(hashlib.sha256(content).hexdigest(), len(content), lambda: content, None)

    def _put(self, sha256: str, size: int, content: Callable[[], bytes], name: str | None) -> str:
        """The object of that SHA-256 and size in the store: looked up first (read and sent only if missing)."""
        import obstore

        key = blob_key(sha256)
        try:
            if obstore.head(self._obstore, key)["size"] == size:
                return self.uri(sha256)
        except FileNotFoundError:
            pass
        except Exception as error:  # obstore's errors: unreachable, refused, timed out
            raise self._failed(f"looking up {key}", error) from error
        data = content()  # a StorageError of its own when a file cannot be read
        try:
            obstore.put(self._obstore, key, data)
        except Exception as error:
            raise self._failed(f"uploading {name} as {key}" if name else f"uploading {key}", error) from error
        return self.uri(sha256)

    def get_bytes(self, sha256: str) -> bytes:
        """The object stored under `sha256`, its bytes checked against it."""
        import obstore

        key = blob_key(sha256)
        try:
            content = obstore.get(self._obstore, key).bytes().to_bytes()
        except FileNotFoundError as error:
            raise DataError(f"{redact_url(self.uri(sha256))}: no such object in the artifact store") from error
        except Exception as error:
            raise self._failed(f"fetching {key}", error) from error
        if hashlib.sha256(content).hexdigest() != sha256:
            raise DataError(f"{redact_url(self.uri(sha256))}: its bytes do not have the SHA-256 they are stored under")
        return content

    def fetch(self, uri: str, sha256: str, cache_dir: Path, suffix: str = "") -> Path:
        """The object at `uri` as a local file in `cache_dir`, its bytes checked against `sha256` (a cached copy is
        checked too: a cache is a folder anyone can write to)."""
        import obstore

        if not uri.startswith(self.url.rstrip("/") + "/"):
            raise DataError(f"{redact_url(uri)}: not in the artifact store {redact_url(self.url)}")
        key = uri[len(self.url.rstrip("/")) + 1 :]
        cached = Path(cache_dir) / f"{sha256}{suffix}"
        if cached.is_file() and file_sha256(cached) == sha256:
            return cached
        try:
            content = obstore.get(self._obstore, key).bytes().to_bytes()
        except FileNotFoundError as error:
            raise DataError(f"{redact_url(uri)}: no such object in the artifact store") from error
        except Exception as error:
            raise self._failed(f"fetching {key}", error) from error
        actual = hashlib.sha256(content).hexdigest()
        if actual != sha256:
            raise DataError(
                f"{redact_url(uri)}: its bytes have SHA-256 {actual[:16]}…, but the registry recorded {sha256[:16]}…: "
                "the object was changed in the store; refusing to use it"
            )
        atomic_write(cached, lambda stream: stream.write(content))
        return cached


def _reason(error: Exception) -> str:
    """obstore's many-line error as one short reason, naming the usual causes in words."""
    text = str(error)
    for marker, words in (("NoSuchBucket", "the bucket does not exist"), ("InvalidAccessKeyId", "access key refused"),
                          ("SignatureDoesNotMatch", "secret key refused"), ("AccessDenied", "access denied"),
                          ("Connection refused", "connection refused (nothing listens there)"),
                          ("timed out", "timed out (the endpoint does not answer)"),
                          ("dns error", "the endpoint's host name does not resolve")):  # fmt: skip
        if marker.lower() in text.lower():
            return words
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:300]


def configured_store(url: str | None = None) -> ArtifactStore | None:
    """The store `url` names, else $MNIST_ARTIFACT_STORE's, else None (the run folders are the only copy)."""
    url = url or current_settings().artifact_store or None
    return ArtifactStore(url) if url else None


# The files of a run folder that another machine needs to use or judge the model; the card names their SHA-256s.
UPLOADED = (WEIGHTS_FILE, ONNX_FILE, EXPORTED_PROGRAM_FILE)


def upload_run(store: ArtifactStore, run: Exported) -> Exported:
    """Upload the run's model files and its card (last: the card names the others); the run with the store and
    the card's SHA-256 filled in. Every upload has completed when this returns, so the registry row that records
    these is written only after the whole model is in the store."""
    for name in UPLOADED:
        entry = run.card.model_files.get(name)
        if entry is not None and (run.run_dir / name).is_file():
            store.put(run.run_dir / name, entry.sha256)
    card = run.run_dir / CARD_FILE
    sha256 = file_sha256(card)
    store.put(card, sha256)
    return run.model_copy(update={"artifact_store": store.url, "card_sha256": sha256})


def materialize(store_url: str, card_sha256: str, cache_root: Path) -> Path:
    """A run folder rebuilt from the store in `cache_root/<card SHA-256>/`: the card and the model files it names,
    each checked against its SHA-256, under their usual names, so every loader reads it as it reads a run folder
    (the SHA-256 check against the card included)."""
    store = ArtifactStore(store_url)
    folder = Path(cache_root) / card_sha256
    card_path = store.fetch(store.uri(card_sha256), card_sha256, folder / ".blobs")
    try:
        card = ModelCard.model_validate_json(card_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DataError(f"{store.uri(card_sha256)}: not a model card ({error.__class__.__name__})") from error
    for name in UPLOADED:
        entry = card.model_files.get(name)
        if entry is None:
            continue
        blob = store.fetch(store.uri(entry.sha256), entry.sha256, folder / ".blobs")
        _link(blob, folder / name)
    _link(card_path, folder / CARD_FILE)
    return folder


def _link(blob: Path, name: Path) -> None:
    """`name` as a hard link to the checked blob (a copy where links cannot be made), replaced whole."""
    temp = name.with_name(f".{name.name}.{os.getpid()}.part")
    temp.unlink(missing_ok=True)
    try:
        os.link(blob, temp)
    except OSError:
        shutil.copyfile(blob, temp)
    os.replace(temp, name)


def local_run_folder(run_dir: Path, store_url: str | None, card_sha256: str | None, cache_root: Path) -> Path:
    """Where a recorded run's files can be read on this machine: its run folder when this machine has it (the
    machine that trained it, or a shared disk), else the copy fetched from the artifact store into `cache_root`."""
    if (Path(run_dir) / CARD_FILE).is_file():
        return Path(run_dir)
    if store_url and card_sha256:
        return materialize(store_url, card_sha256, cache_root)
    raise DataError(
        f"{run_dir}: the run folder is not on this machine, and its model files were not uploaded to an artifact "
        f"store (set {STORE_ENV} on the machines that train, e.g. s3://bucket/models, so that others can fetch them)"
    )


def cache_root(output_dir: Path) -> Path:
    """Where models fetched from the store are kept on this machine."""
    return Path(output_dir).expanduser() / ".artifact-cache"


def recorded_run_folder(pointer: "ChampionPointer", output_dir: Path) -> Path:
    """A champion's files on this machine: its run folder, or the copy fetched from the artifact store."""
    return local_run_folder(pointer.run_dir, pointer.artifact_store, pointer.card_sha256, cache_root(output_dir))
