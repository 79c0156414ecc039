"""Finished recordings kept in a directory tree and in S3 (a real local moto server)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from pathwarden.recording import (
    FileStorage,
    RecordingError,
    RecordingNotFound,
    RecordingStorage,
    RecordingWriter,
    S3Storage,
    location_for,
    read_recording,
)
from pgserver import free_port

DAY = date(2026, 5, 3)


def finished_recording(tmp_path: Path, session_id: str, text: str = "select 1") -> Path:
    w = RecordingWriter.create(tmp_path / "live" / f"{session_id}.pwrec", session_id, "gw")
    w.append("operation", {"op_seq": 1, "text": text})
    w.append("session_end", {"reason": "client_closed"})
    return w.finish(tmp_path / "done" / f"{session_id}-{text.__hash__()}.pwrec.gz").path


def exercise(storage: RecordingStorage, tmp_path: Path) -> None:
    """The contract every backend keeps."""
    local = finished_recording(tmp_path, "b0c9b72dea5b3558")
    location = storage.put("b0c9b72dea5b3558", DAY, local)
    assert location == "2026/05/03/b0c9b72dea5b3558.pwrec.gz"
    assert storage.exists(location)
    assert storage.get(location) == local.read_bytes()
    assert gzip.decompress(storage.get(location)).startswith(b'{"created":')

    # put again with the same bytes is a retry: fine; different bytes: refused
    assert storage.put("b0c9b72dea5b3558", DAY, local) == location
    other = finished_recording(tmp_path, "b0c9b72dea5b3558", text="select 2")
    with pytest.raises(RecordingError, match="never overwritten"):
        storage.put("b0c9b72dea5b3558", DAY, other)
    assert storage.get(location) == local.read_bytes()

    second = storage.put("s-2", date(2026, 5, 4), finished_recording(tmp_path, "s-2"))
    third = storage.put("s-3", date(2026, 6, 1), finished_recording(tmp_path, "s-3"))
    assert storage.list() == [location, second, third]
    assert storage.list("2026/05/") == [location, second]
    assert storage.list("2026/05/04/") == [second]
    assert storage.list("2027/") == []

    storage.delete(second)
    assert not storage.exists(second)
    storage.delete(second)  # deleting twice is fine
    with pytest.raises(RecordingNotFound):
        storage.get(second)
    assert storage.list() == [location, third]

    for bad in ("../etc/passwd", "2026/05/03/../../x.pwrec.gz", "/abs.pwrec.gz", ""):
        assert not storage.exists(bad)
        with pytest.raises(RecordingNotFound, match="not a recording location"):
            storage.get(bad)
    with pytest.raises(ValueError, match="cannot name a stored recording"):
        storage.put("../evil", DAY, local)


def test_location_is_day_and_session() -> None:
    assert location_for("abc", date(2026, 1, 2)) == "2026/01/02/abc.pwrec.gz"
    for bad in ("", "a/b", "..", ".hidden", "x" * 129, "a\nb"):
        with pytest.raises(ValueError):
            location_for(bad, DAY)


def test_file_storage_keeps_the_contract(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    exercise(storage, tmp_path)


def test_file_storage_files_are_private_and_written_atomically(tmp_path: Path) -> None:
    root = tmp_path / "store"
    storage = FileStorage(root)
    location = storage.put("s1", DAY, finished_recording(tmp_path, "s1"))
    path = root / location
    assert path.stat().st_mode & 0o777 == 0o600
    for d in (root / "2026", root / "2026" / "05", root / "2026" / "05" / "03"):
        assert d.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["s1.pwrec.gz"]
    assert read_recording(path).complete
    assert FileStorage(tmp_path / "nothing-yet").list() == []


def test_file_storage_failure_names_the_location(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    with pytest.raises(RecordingError, match=re.escape("2026/05/03/s1.pwrec.gz")) as info:
        storage.put("s1", DAY, tmp_path / "missing.pwrec.gz")
    assert info.value.errno is not None
    assert list((tmp_path / "store").rglob("*.tmp")) == []


# -- S3 against a real (local) server ----------------------------------------------------------


def moto_server_command() -> list[str]:
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "moto.server"]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install '.[test]')")
    pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install '.[test]')",
    )
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_bucket(endpoint: str, name: str) -> None:
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=name)


def s3(endpoint: str, bucket: str, prefix: str = "") -> S3Storage:
    return S3Storage(bucket, prefix, endpoint_url=endpoint, region="us-east-1",
                     access_key="test", secret_key="test")


def test_s3_storage_keeps_the_contract(s3_endpoint: str, tmp_path: Path) -> None:
    make_bucket(s3_endpoint, "recordings")
    exercise(s3(s3_endpoint, "recordings", "gw-eu-1/"), tmp_path)


def test_s3_storage_keys_live_under_the_prefix(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3
    make_bucket(s3_endpoint, "prefixed")
    storage = s3(s3_endpoint, "prefixed", "/audit/gw-1/")
    location = storage.put("s1", DAY, finished_recording(tmp_path, "s1"))
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="prefixed")["Contents"]]
    assert keys == ["audit/gw-1/2026/05/03/s1.pwrec.gz"]
    client.put_object(Bucket="prefixed", Key="audit/gw-1/notes.txt", Body=b"x")
    assert storage.list() == [location]
    assert s3(s3_endpoint, "prefixed", "audit/gw-2").list() == []


def test_s3_storage_errors_name_the_bucket_and_key(s3_endpoint: str, tmp_path: Path) -> None:
    storage = s3(s3_endpoint, "no-such-bucket")
    with pytest.raises(RecordingError, match=re.escape("s3://no-such-bucket/2026/05/03/s1.pwrec.gz")):
        storage.put("s1", DAY, finished_recording(tmp_path, "s1"))
    with pytest.raises(RecordingError, match="listing s3://no-such-bucket/"):
        storage.list()


def test_s3_storage_without_boto3_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what an absent package looks like
    with pytest.raises(RecordingError, match=r"pathwarden\[s3\]"):
        S3Storage("bucket")
