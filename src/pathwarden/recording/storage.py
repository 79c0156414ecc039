"""Where finished recordings are kept: a directory tree, or an S3 bucket.

Theory of operation
-------------------

A location is a key relative to the storage's root, the same for every
backend: ``YYYY/MM/DD/<session>.pwrec.gz`` (the day the session started), so
recordings can move between backends without rewriting the index that points
at them. Recordings are immutable: ``put`` of the same bytes again is a no-op
(a retry after a crash), ``put`` of different bytes under an existing
location is refused. Calls block; the gateway runs them in a worker thread.
Every failure is a :class:`RecordingError` naming the location.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from pathwarden.recording.errors import RecordingError, RecordingNotFound
from pathwarden.recording.writer import make_private_dirs

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_LOCATION = re.compile(r"\d{4}/\d{2}/\d{2}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.pwrec\.gz\Z")
SUFFIX = ".pwrec.gz"


def location_for(session_id: str, day: date) -> str:
    """The storage key of a session's recording."""
    if not _SESSION_ID.match(session_id):
        raise ValueError(
            f"session id {session_id!r} cannot name a stored recording "
            "(letters, digits, '.', '_', '-'; at most 128)"
        )
    return f"{day:%Y/%m/%d}/{session_id}{SUFFIX}"


def _check_location(location: str) -> str:
    if not _LOCATION.match(location):
        raise RecordingNotFound(
            f"{location!r} is not a recording location (YYYY/MM/DD/<id>{SUFFIX})"
        )
    return location


class RecordingStorage(Protocol):
    def put(self, session_id: str, day: date, local_path: Path) -> str:
        """Store the finished recording at ``local_path``; return its location."""
        ...

    def get(self, location: str) -> bytes: ...

    def delete(self, location: str) -> None: ...

    def exists(self, location: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """Locations starting with ``prefix`` (e.g. ``"2026/05/"``), sorted."""
        ...


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class FileStorage:
    """Recordings under ``root`` as ``YYYY/MM/DD/<session>.pwrec.gz``: files 0600, dirs 0700."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, location: str) -> Path:
        return self.root / _check_location(location)

    def put(self, session_id: str, day: date, local_path: Path) -> str:
        location = location_for(session_id, day)
        dest = self.root / location
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            if dest.exists():
                if _sha256_file(dest) == _sha256_file(local_path):
                    return location
                raise RecordingError(
                    f"a different recording is already stored at {location}; "
                    "recordings are never overwritten"
                )
            make_private_dirs(dest.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out, open(local_path, "rb") as src:
                os.fchmod(fd, 0o600)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(fd)
            os.replace(tmp, dest)
            dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RecordingError(
                f"storing {local_path} at {self.root}/{location} failed: {exc.strerror}",
                exc.errno,
            ) from None
        return location

    def get(self, location: str) -> bytes:
        try:
            return self._path(location).read_bytes()
        except FileNotFoundError:
            raise RecordingNotFound(f"no recording at {location} in {self.root}") from None
        except OSError as exc:
            raise RecordingError(
                f"reading {location} from {self.root} failed: {exc.strerror}", exc.errno,
            ) from None

    def delete(self, location: str) -> None:
        try:
            self._path(location).unlink(missing_ok=True)
        except OSError as exc:
            raise RecordingError(
                f"deleting {location} from {self.root} failed: {exc.strerror}", exc.errno,
            ) from None

    def exists(self, location: str) -> bool:
        try:
            return self._path(location).is_file()
        except RecordingNotFound:
            return False

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.glob(f"*/*/*/*{SUFFIX}"):
            location = path.relative_to(self.root).as_posix()
            if location.startswith(prefix) and _LOCATION.match(location):
                found.append(location)
        return sorted(found)


def _boto3() -> Any:
    try:
        return importlib.import_module("boto3")
    except ImportError:
        raise RecordingError(
            "S3 recording storage needs boto3: install pathwarden with the s3 extra "
            "(pip install 'pathwarden[s3]')"
        ) from None


class S3Storage:
    """Recordings in an S3 (or S3-compatible) bucket under ``prefix``."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
        region: str | None = None, access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        boto3 = _boto3()
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        )
        self._client_error: type[Exception] = importlib.import_module(
            "botocore.exceptions"
        ).ClientError
        self._boto_error: type[Exception] = importlib.import_module(
            "botocore.exceptions"
        ).BotoCoreError

    def _key(self, location: str) -> str:
        return self.prefix + _check_location(location)

    def _fail(self, action: str, location: str, exc: Exception) -> RecordingError:
        code = ""
        if isinstance(exc, self._client_error):
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return RecordingNotFound(f"no recording at s3://{self.bucket}/{self._key(location)}")
        detail = code or type(exc).__name__
        return RecordingError(
            f"{action} s3://{self.bucket}/{self.prefix}{location} failed: {detail}",
        )

    def _head(self, location: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._client.head_object(
                Bucket=self.bucket, Key=self._key(location),
            )
        except (self._client_error, self._boto_error) as exc:
            err = self._fail("checking", location, exc)
            if isinstance(err, RecordingNotFound):
                return None
            raise err from None
        return head

    def put(self, session_id: str, day: date, local_path: Path) -> str:
        location = location_for(session_id, day)
        digest = _sha256_file(local_path)
        existing = self._head(location)
        if existing is not None:
            if existing.get("Metadata", {}).get("sha256") == digest:
                return location
            raise RecordingError(
                f"a different recording is already stored at s3://{self.bucket}/"
                f"{self._key(location)}; recordings are never overwritten"
            )
        try:
            with open(local_path, "rb") as body:
                self._client.put_object(
                    Bucket=self.bucket, Key=self._key(location), Body=body,
                    ContentType="application/gzip", Metadata={"sha256": digest},
                )
        except OSError as exc:
            raise RecordingError(
                f"reading {local_path} to store it failed: {exc.strerror}", exc.errno,
            ) from None
        except (self._client_error, self._boto_error) as exc:
            raise self._fail("storing", location, exc) from None
        return location

    def get(self, location: str) -> bytes:
        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(location))
            data: bytes = obj["Body"].read()
        except (self._client_error, self._boto_error) as exc:
            raise self._fail("reading", location, exc) from None
        return data

    def delete(self, location: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(location))
        except (self._client_error, self._boto_error) as exc:
            raise self._fail("deleting", location, exc) from None

    def exists(self, location: str) -> bool:
        try:
            return self._head(location) is not None
        except RecordingNotFound:
            return False

    def list(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix,
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    location = obj["Key"][len(self.prefix):]
                    if _LOCATION.match(location):
                        found.append(location)
        except (self._client_error, self._boto_error) as exc:
            raise RecordingError(
                f"listing s3://{self.bucket}/{self.prefix}{prefix} failed: "
                f"{type(exc).__name__}",
            ) from None
        return sorted(found)
