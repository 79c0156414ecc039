"""The ``recording:`` configuration block: session recordings and the write-ahead audit.

Recordings are written as the session runs, to an append-only file in
``<dir>/live/``; when the session ends the file is compressed and handed to
the storage (files under ``dir`` by default, or an S3-compatible bucket).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pathwarden.config.durations import Duration
from pathwarden.config.secrets import Secret

__all__ = ["FileStorageConfig", "RecordingSettings", "S3StorageConfig"]


def _resolve(value: Path | None) -> Path | None:
    return value.expanduser() if value is not None else None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileStorageConfig(_Model):
    """Finished recordings as files: ``<dir>/YYYY/MM/DD/<session>.pwrec.gz``."""

    type: Literal["file"] = "file"


class S3StorageConfig(_Model):
    """Finished recordings in an S3-compatible bucket (AWS S3, MinIO, Ceph ...)."""

    type: Literal["s3"]
    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    prefix: str = "pathwarden/recordings/"
    endpoint_url: str | None = None  # None: AWS itself
    region: str = "us-east-1"
    access_key: Secret | None = None  # None: the default credential chain
    secret_key: Secret | None = None

    @model_validator(mode="after")
    def _both_keys(self) -> S3StorageConfig:
        if (self.access_key is None) != (self.secret_key is None):
            raise PydanticCustomError(
                "s3_keys", "give both access_key and secret_key, or neither (the default "
                "credential chain is used then)")
        return self


def _yaml_off(value: object) -> object:
    # YAML 1.1 reads a bare `off` as false: take it as meant.
    return "off" if value is False else value


def _positive_size(value: ByteSize) -> ByteSize:
    if value < 64 * 1024:
        raise PydanticCustomError("size", "must be at least 64KiB")
    return value


class RecordingSettings(_Model):
    """How sessions are recorded."""

    enabled: bool = True
    # None: <data_dir>/recordings.
    dir: Annotated[Path | None, AfterValidator(_resolve)] = None
    # Write-ahead: an operation is forwarded only after its event is written;
    # if it cannot be written the operation is refused. Off: a failed write is
    # logged and the operation goes ahead.
    strict: bool = True
    # Power-loss durability: "off" leaves flushing to the OS (an event survives a
    # gateway crash as soon as it is written, not a power cut); "interval" syncs
    # every recording written to in the last fsync_interval; "always" syncs each
    # event before the operation is forwarded.
    fsync: Annotated[Literal["off", "interval", "always"], BeforeValidator(_yaml_off)] = (
        "interval")
    fsync_interval: Duration = timedelta(milliseconds=200)
    # Past this size a session's result samples are no longer kept (a
    # "truncated" event says how many were dropped); operations and decisions
    # are recorded up to 25% more, after which the session is ended.
    max_session_bytes: Annotated[ByteSize, AfterValidator(_positive_size)] = ByteSize(
        64 * 1024 * 1024)
    # Masked result rows kept per statement, and their size.
    sample_rows: Annotated[int, Field(ge=0, le=1000, strict=True)] = 10
    sample_bytes: Annotated[int, Field(ge=0, le=1024 * 1024, strict=True)] = 4096
    # None: keep everything; `pathwarden audit prune` removes older sessions.
    retention: Duration | None = None
    storage: FileStorageConfig | S3StorageConfig = Field(
        default_factory=FileStorageConfig, discriminator="type")
    # Names this gateway's chain of sessions; None: derived from the host name
    # and the data directory. Replicas sharing a store need distinct ids.
    gateway_id: Annotated[str | None, Field(min_length=1, max_length=64)] = None
