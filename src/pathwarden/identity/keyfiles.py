"""Private key files the gateway creates for itself: the token signing key, the SSH CA,
the SSH host key.

:func:`create_secret_file` writes a new file 0600 under a temporary name and
links it into place: ``link()`` refuses to replace an existing file (unlike
``rename()``), so when several processes start at once the first one wins and
everyone uses its key, and a crash never leaves half a key. :func:`read_secret_file`
refuses a file other users can access.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from pathlib import Path

__all__ = ["LooseKeyFile", "create_secret_file", "read_secret_file"]


class LooseKeyFile(Exception):
    """A key file group or other users can access; ``mode`` is its permission bits."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(f"{path} is accessible by other users (mode {mode:04o}); "
                         f"run: chmod 600 {path}")
        self.mode = mode


def create_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` (0600) unless it exists; raises OSError."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def read_secret_file(path: Path) -> bytes:
    """The contents of a key file; raises :class:`LooseKeyFile` or OSError."""
    info = path.stat()
    if sys.platform != "win32" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LooseKeyFile(path, stat.S_IMODE(info.st_mode))
    return path.read_bytes()


def _fsync_dir(directory: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - directories cannot be opened there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
