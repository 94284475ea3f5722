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
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mnist_core.errors import DataError, StorageError
from mnist_core.files import atomic_write
from mnist_core.redact import redact_url
from mnist_core.stamps import file_sha256

STORE_ENV = "MNIST_ARTIFACT_STORE"
BLOBS = "blobs/sha256"
# A store that does not answer is retried for a few seconds, then the caller gets one clear error (obstore's
# defaults retry for up to 3 minutes, which holds a run, a server or `mnist predict` for nothing).
RETRY = {
    "max_retries": 3,
    "retry_timeout": timedelta(seconds=20),
    "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=2), "base": 2.0},
}
TIMEOUTS = {"connect_timeout": "5s", "timeout": "60s"}


def blob_key(sha256: str) -> str:
    return f"{BLOBS}/{sha256}"


def _s3_store(url: str) -> Any:
    from obstore.store import S3Store

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{url}: an S3 store needs a bucket: s3://BUCKET[/PREFIX]")
    config: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        config["endpoint"] = endpoint
    client: dict[str, Any] = dict(TIMEOUTS)
    if os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true"):
        client["allow_http"] = True
    # Credentials: obstore reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and the rest of AWS_*) itself.
    return S3Store(bucket, prefix=prefix or None, config=config, client_options=client, retry_config=RETRY)


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
        if "://" in self.url and not self.url.startswith("file://"):
            raise StorageError(f"{redact_url(self.url)}: an artifact store is s3://BUCKET[/PREFIX] or a folder")
        from obstore.store import LocalStore

        folder = Path(self.url.removeprefix("file://")).expanduser().resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"{folder}: the artifact store's folder cannot be created ({error.strerror})") from error
        return LocalStore(folder)

    @property
    def _obstore(self) -> Any:
        return self.__dict__["_store"]

    def uri(self, sha256: str) -> str:
        return f"{self.url.rstrip('/')}/{blob_key(sha256)}"

    def _failed(self, what: str, error: Exception) -> StorageError:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StorageError(f"{redact_url(self.url)}: {what} failed: {first_line[:300]}")

    def put(self, path: Path, sha256: str | None = None) -> str:
        """Upload `path` under its SHA-256 (skipped if the store already holds that object); its URI. Returns only
        once the whole object is in the store."""
        import obstore

        sha256 = sha256 or file_sha256(path)
        key = blob_key(sha256)
        try:
            existing = obstore.head(self._obstore, key)
            if existing["size"] == path.stat().st_size:
                return self.uri(sha256)
        except FileNotFoundError:
            pass
        except Exception as error:  # obstore's errors: unreachable, refused, timed out
            raise self._failed(f"looking up {key}", error) from error
        try:
            obstore.put(self._obstore, key, path.read_bytes())
        except OSError as error:
            raise StorageError(f"{path}: cannot be read for upload ({error.strerror})") from error
        except Exception as error:
            raise self._failed(f"uploading {path.name} as {key}", error) from error
        return self.uri(sha256)

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


def configured_store(url: str | None = None) -> ArtifactStore | None:
    """The store `url` names, else $MNIST_ARTIFACT_STORE's, else None (the run folders are the only copy)."""
    url = url or os.environ.get(STORE_ENV) or None
    return ArtifactStore(url) if url else None
