"""Where kd-tune keeps its files: a local folder (or NFS) or an object store, one interface.

A :class:`Storage` is a location (``/abs/path``, ``s3://bucket/prefix``, or any other URI
pyarrow's file systems understand) and the ``pyarrow.fs`` file system that reaches it.
Every store of kd-tune (teachers, teacher-logit caches, noisy labels, ``sweep.json``,
the Parquet results, figures, locks) reads and writes through it, so a local path and
an object store take the same code path.

Writes are whole or absent. An object store has no rename and no partial files, so a
write goes first to a node-local temporary file and reaches the store in one upload
(one PUT, or a multipart upload completed at its end): a reader sees the whole file or
none, and a writer that fails leaves nothing. A local write goes to a hidden temporary
file beside its target and is moved into place (``os.replace``), which is atomic on one
file system.

Credentials never travel with a :class:`Storage`: it pickles as its URI and endpoint,
and each process (driver, Ray worker) resolves them from its own environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, a profile, or
an instance role: the AWS SDK's usual chain). The endpoint of an S3-compatible store
(MinIO, Ceph, a test server) is ``--storage-endpoint`` or ``$AWS_ENDPOINT_URL_S3`` /
``$AWS_ENDPOINT_URL``. Nothing kd-tune prints or records names a credential.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from kd_tune.storage.atomic import atomic_write

CHECK_TIMEOUT_S = 5.0  # connect and request timeout of the start-up check of an object store
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
COPY_BUFFER = 8 << 20


class StorageError(ValueError):
    """A storage location cannot be used: a bad URI, refused credentials, no bucket, no answer."""


def is_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a location by URI (``s3://...``), not a local path."""
    return "://" in str(text) and not str(text).startswith("file://")


@dataclass(frozen=True)
class FileEntry:
    """One entry of a listing: its path relative to the listed folder, and its size in bytes
    (None for a folder)."""

    path: str
    size: int | None

    @property
    def is_dir(self) -> bool:
        return self.size is None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Storage:
    """A folder on a local or an object-store file system (see the module docstring).

    ``uri`` is a local absolute path or a URI without credentials; ``endpoint`` the
    S3-compatible endpoint (``http://host:port``), when not the default. Paths given to
    the methods are relative to the folder, with ``/`` between parts; ``""`` is the
    folder itself. ``storage / "a" / "b"`` is the sub-folder ``a/b``.
    """

    def __init__(self, uri: str | os.PathLike, *, endpoint: str | None = None):
        text = str(uri)
        if text.startswith("file://"):
            text = urlsplit(text).path
        if is_uri(text):
            self.uri = text.rstrip("/")
            self.scheme = urlsplit(self.uri).scheme
        else:
            self.uri = str(Path(os.path.expanduser(text)).absolute())
            self.scheme = ""
        self.endpoint = endpoint if self.scheme == "s3" else None
        self._fs: pafs.FileSystem | None = None
        self._root: str | None = None

    # -- identity ---------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        # The file system is made again where the storage is unpickled, from that process's
        # environment: no credential is ever pickled.
        return (_reopen, (self.uri, self.endpoint))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and (self.uri, self.endpoint) == (other.uri, other.endpoint)

    def __hash__(self) -> int:
        return hash((self.uri, self.endpoint))

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, part: str) -> Storage:
        child = Storage.__new__(Storage)
        child.uri = f"{self.uri}/{part.strip('/')}"
        child.scheme, child.endpoint = self.scheme, self.endpoint
        child._fs = self._fs  # one client per process for a whole tree of locations
        child._root = None
        return child

    @property
    def name(self) -> str:
        """The folder's last name (a sweep's name)."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Storage:
        parent = Storage.__new__(Storage)
        parent.uri = self.uri.rstrip("/").rsplit("/", 1)[0] or "/"
        parent.scheme, parent.endpoint, parent._fs, parent._root = self.scheme, self.endpoint, self._fs, None
        return parent

    @property
    def is_local(self) -> bool:
        """Whether the folder is on a local (or NFS-mounted) file system."""
        return self.scheme == ""

    @property
    def local_path(self) -> Path:
        """The folder as a local path; only for a local storage (:attr:`is_local`)."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is not a local folder")
        return Path(self.uri)

    def uri_of(self, rel: str = "") -> str:
        """The URI (or local path) of ``rel``."""
        return f"{self.uri}/{rel.strip('/')}" if rel.strip("/") else self.uri

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The ``pyarrow.fs`` file system (made on first use, in this process)."""
        if self._fs is None:
            self._fs = _filesystem(self.uri, self.scheme, self.endpoint)
        return self._fs

    @property
    def root(self) -> str:
        """The folder's path inside :attr:`filesystem` (``bucket/prefix`` for S3)."""
        if self._root is None:
            if self.is_local:
                self._root = self.uri
            else:
                parts = urlsplit(self.uri)
                self._root = f"{parts.netloc}{parts.path}".rstrip("/")
        return self._root

    def fs_path(self, rel: str = "") -> str:
        """The path of ``rel`` inside :attr:`filesystem`."""
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    # -- reading ----------------------------------------------------------------------------

    def info(self, rel: str = "") -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.fs_path(rel))

    def exists(self, rel: str = "") -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def is_file(self, rel: str = "") -> bool:
        return self.info(rel).type == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        return self.info(rel).type == pafs.FileType.Directory

    def size(self, rel: str) -> int:
        info = self.info(rel)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(self.uri_of(rel))
        return int(info.size)

    def read_bytes(self, rel: str) -> bytes:
        """The whole file ``rel`` (FileNotFoundError when there is none)."""
        if self.is_local:
            return (self.local_path / rel).read_bytes()
        try:
            with self.filesystem.open_input_stream(self.fs_path(rel)) as stream:
                return stream.read()
        except OSError as err:
            if not self.is_file(rel):
                raise FileNotFoundError(self.uri_of(rel)) from err
            raise

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def open_input_file(self, rel: str) -> Any:
        """A random-access reader of ``rel`` (for Parquet)."""
        return self.filesystem.open_input_file(self.fs_path(rel))

    def list(self, rel: str = "", *, recursive: bool = False) -> list[FileEntry]:
        """The entries of folder ``rel`` (none when it does not exist), paths relative to it, sorted."""
        base = self.fs_path(rel)
        selector = pafs.FileSelector(base, allow_not_found=True, recursive=recursive)
        entries = []
        for info in self.filesystem.get_file_info(selector):
            path = info.path[len(base):].lstrip("/")
            entries.append(FileEntry(path, None if info.type == pafs.FileType.Directory else int(info.size)))
        return sorted(entries, key=lambda e: e.path)

    def download(self, rel: str, target: str | os.PathLike) -> Path:
        """Copy file ``rel`` to the local file ``target``, whole or not at all."""
        target = Path(target)
        with atomic_write(target) as out:
            if self.is_local:
                with open(self.local_path / rel, "rb") as src:
                    shutil.copyfileobj(src, out, COPY_BUFFER)
            else:
                with self.filesystem.open_input_stream(self.fs_path(rel)) as src:
                    while chunk := src.read(COPY_BUFFER):
                        out.write(chunk)
        return target

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[BinaryIO]:
        """Open ``rel`` for writing; it appears whole when the block ends, and not at all
        when the block raises (see the module docstring)."""
        if self.is_local:
            with atomic_write(self.local_path / rel) as handle:
                yield handle
            return
        with tempfile.TemporaryFile(prefix="kd-tune-upload-") as spool:
            yield spool  # type: ignore[misc]
            spool.seek(0)
            self._upload(spool, rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.writer(rel) as handle:
            handle.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, value: Any, **dumps: Any) -> None:
        self.write_text(rel, json.dumps(value, **dumps))

    def upload(self, source: str | os.PathLike, rel: str) -> None:
        """Copy the local file ``source`` to ``rel``, whole or not at all."""
        if self.is_local:
            with open(source, "rb") as src, atomic_write(self.local_path / rel) as out:
                shutil.copyfileobj(src, out, COPY_BUFFER)
            return
        with open(source, "rb") as src:
            self._upload(src, rel)

    def _upload(self, source: BinaryIO, rel: str) -> None:
        # The object appears when the stream's multipart upload completes at close; a failure
        # before then aborts it, so nothing is visible.
        with self.filesystem.open_output_stream(self.fs_path(rel)) as out:
            while chunk := source.read(COPY_BUFFER):
                out.write(chunk)

    def makedirs(self, rel: str = "") -> None:
        """Make folder ``rel`` (object stores have no folders: nothing to do there)."""
        if self.is_local:
            (self.local_path / rel).mkdir(parents=True, exist_ok=True)

    def delete(self, rel: str) -> None:
        """Remove file ``rel`` (nothing when there is none)."""
        with contextlib.suppress(FileNotFoundError):
            self.filesystem.delete_file(self.fs_path(rel))

    def delete_dir(self, rel: str) -> None:
        """Remove folder ``rel`` and everything in it (nothing when there is none)."""
        if self.exists(rel):
            with contextlib.suppress(FileNotFoundError):
                self.filesystem.delete_dir(self.fs_path(rel))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` holding ``data`` only if it does not exist: True when this call made it.

        Local: the bytes go to a temporary file that is hard-linked into place (``link``
        fails when the name exists; atomic on local file systems and NFS). S3: a PUT with
        ``If-None-Match: *`` (the store refuses it when the key exists).
        """
        if self.is_local:
            target = self.local_path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
                return True
            finally:
                os.unlink(tmp)
        return self.conditional().create(rel, data)

    def conditional(self) -> ConditionalWrites:
        """Conditional writes on this object store (see :class:`ConditionalWrites`)."""
        if self.scheme != "s3":
            raise StorageError(f"{self.uri}: kd-tune can make conditional writes only on local folders and S3 "
                               f"(s3://), not {self.scheme}://; sweeps refuse it rather than race")
        return ConditionalWrites(self)

    # -- checks -----------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why this location cannot be used (one line), or None; writes nothing, answers in seconds.

        Local: the folder (or its nearest existing parent) must be a writable folder. S3:
        the endpoint must answer, the credentials be accepted and the bucket exist.
        """
        if self.is_local:
            return _local_problem(self.local_path)
        if self.scheme != "s3":
            try:
                self.info()
            except Exception as err:  # each file system raises its own errors
                return f"{self.uri}: cannot be reached ({_first_line(err)})"
            return None
        return _s3_problem(self)


class ConditionalWrites:
    """Writes that hold only if the object is as expected, on S3 (``If-None-Match`` / ``If-Match``).

    pyarrow's file systems cannot make them, so these go through boto3 with the same
    credentials chain and endpoint. Each returns None (or False) when the condition
    failed, i.e. another process changed the object first.
    """

    def __init__(self, storage: Storage):
        self.storage = storage
        self._client = _boto3_client(storage.endpoint)
        parts = urlsplit(storage.uri)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")

    def _key(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def create(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` if absent: True when this call made it."""
        return self.put(rel, data, if_none_match=True) is not None

    def put(self, rel: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str | None:
        """Write ``rel`` if it is at version ``if_match`` (an ETag) or absent (``if_none_match``);
        the new ETag, or None when the condition failed."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(rel), "Body": data}
        if if_match is not None:
            args["IfMatch"] = if_match
        if if_none_match:
            args["IfNoneMatch"] = "*"
        try:
            return self._client.put_object(**args)["ETag"]
        except self._client.exceptions.ClientError as err:
            if _code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise

    def get(self, rel: str) -> tuple[bytes, str, float, float] | None:
        """The object's bytes, ETag, last-modified time and the store's clock when it answered
        (both epoch seconds, from the store: the age of an object is judged by one clock,
        whatever the nodes' clocks say), or None when it is absent."""
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(rel))
        except self._client.exceptions.ClientError as err:
            if _code(err) in ("NoSuchKey", "404"):
                return None
            raise
        now = _http_date(answer["ResponseMetadata"]["HTTPHeaders"].get("date"))
        return answer["Body"].read(), answer["ETag"], answer["LastModified"].timestamp(), now

    def delete(self, rel: str, *, if_match: str | None = None) -> bool:
        """Remove ``rel`` (if at version ``if_match``): False when another process changed it first."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(rel)}
        if if_match is not None:
            args["IfMatch"] = if_match
        try:
            self._client.delete_object(**args)
        except self._client.exceptions.ClientError as err:
            if _code(err) in ("PreconditionFailed", "412"):
                return False
            if _code(err) in ("NoSuchKey", "404"):
                return True
            raise
        return True


def open_storage(uri: str | os.PathLike | Storage, *, endpoint: str | None = None) -> Storage:
    """The :class:`Storage` of ``uri`` (``endpoint``: flag value, else ``$AWS_ENDPOINT_URL_S3`` /
    ``$AWS_ENDPOINT_URL`` for S3). Raises :class:`StorageError` for a URI kd-tune cannot parse."""
    if isinstance(uri, Storage):
        return uri
    text = str(uri)
    if is_uri(text):
        parts = urlsplit(text)
        if parts.username or parts.password or "@" in parts.netloc:
            raise StorageError(f"--storage {_redact(text)!r}: put no credentials in the URI; give them in "
                               "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if parts.query:
            raise StorageError(f"--storage {text!r}: options in the URI are not read; give the endpoint with "
                               "--storage-endpoint (or AWS_ENDPOINT_URL)")
        if not parts.netloc:
            raise StorageError(f"--storage {text!r} names no bucket (expected s3://bucket/prefix)")
        if parts.scheme == "s3" and endpoint is None:
            endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise StorageError(f"--storage-endpoint {endpoint!r} must be an http:// or https:// URL")
    return Storage(text, endpoint=endpoint)


def located(storage: Storage, rel: str = "") -> Path | str:
    """``rel`` of ``storage`` as kd-tune hands it out: a local Path for a local folder, the
    URI (a str, ``s3://bucket/prefix/rel``) for an object store."""
    return storage.local_path / rel if storage.is_local else storage.uri_of(rel)


def _reopen(uri: str, endpoint: str | None) -> Storage:
    return Storage(uri, endpoint=endpoint)


def _filesystem(uri: str, scheme: str, endpoint: str | None) -> pafs.FileSystem:
    if scheme == "":
        return pafs.LocalFileSystem()
    if scheme == "s3":
        return _s3(endpoint)
    fs, _ = pafs.FileSystem.from_uri(uri)
    return fs


def _s3(endpoint: str | None, *, timeout: float | None = None) -> pafs.S3FileSystem:
    # No keys are passed: the SDK's default chain reads them, so a pickled file system
    # (Ray Tune pickles its storage_filesystem) carries none.
    args: dict[str, Any] = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                            or "us-east-1"}
    if endpoint is not None:
        parts = urlsplit(endpoint)
        args["endpoint_override"] = parts.netloc
        args["scheme"] = parts.scheme
    if timeout is not None:
        args["connect_timeout"] = timeout
        args["request_timeout"] = timeout
        args["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=1)
    return pafs.S3FileSystem(**args)


def s3_filesystem(storage: Storage) -> pafs.S3FileSystem:
    """A fresh S3 file system for ``storage`` (for Ray Tune's ``storage_filesystem``)."""
    return _s3(storage.endpoint)


def _boto3_client(endpoint: str | None, *, timeout: float | None = None) -> Any:
    # Here, not at the top: boto3 is optional (the s3 extra); a local install runs without it.
    # (It is not slow: 0.1 s measured.)
    try:
        import boto3
        from botocore.config import Config
    except ImportError as err:
        raise StorageError("object storage needs boto3 for its locks: pip install 'kd-tune[s3]' "
                           "(or pip install boto3)") from err
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=timeout,
                    read_timeout=timeout) if timeout else None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # A session of its own: boto3's default session keeps the credentials it first read.
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config, region_name=region)


def _s3_problem(storage: Storage) -> str | None:
    flag = f"--storage {storage.uri}"
    where = f" at {storage.endpoint}" if storage.endpoint else ""
    try:
        client = _boto3_client(storage.endpoint, timeout=CHECK_TIMEOUT_S)
    except StorageError as err:
        return str(err)
    # Optional, as in _boto3_client (present once a client was made).
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    bucket = urlsplit(storage.uri).netloc
    try:
        # A listing, not HEAD: some stores answer HEAD on a bucket without checking the signature.
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except NoCredentialsError:
        return f"{flag}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)"
    except EndpointConnectionError:
        return f"{flag}: the object store{where} does not answer (is the endpoint right and the server up?)"
    except ClientError as err:
        code = _code(err)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"{flag}: bucket {bucket!r} does not exist{where}; create it first"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
            return (f"{flag}: the object store{where} refused the credentials (check AWS_ACCESS_KEY_ID and "
                    f"AWS_SECRET_ACCESS_KEY, and that they may use bucket {bucket!r})")
        return f"{flag}: the object store{where} answered {code}"
    except BotoCoreError as err:
        return f"{flag}: the object store{where} cannot be reached ({type(err).__name__})"
    return None


def _local_problem(folder: Path) -> str | None:
    flag = f"--storage {str(folder)!r}"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != folder:
        if not existing.is_dir():
            return f"{flag} cannot be created: {str(existing)!r} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{flag} cannot be created: {str(existing)!r} is not writable"
        return None
    if not folder.is_dir():
        return f"{flag} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{flag} is not writable"
    return None


def _code(err: Any) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def _http_date(text: str | None) -> float:
    return parsedate_to_datetime(text).timestamp() if text else time.time()


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://…@{parts.hostname or ''}{parts.path}"
