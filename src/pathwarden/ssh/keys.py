"""SSH keys the gateway keeps: its host key, and the pinned host keys of targets.

The host key is an Ed25519 key in ``<data_dir>/ssh_host_ed25519_key`` (or
the listener's ``host_key``), created 0600 on first start by writing a
temporary file and renaming it, so a crash never leaves half a key. Clients
pin it like any SSH server's key (``pathwarden ssh host-key`` prints the
line for known_hosts).

A target's host key is checked against its connection's ``known_hosts``
entries and ``known_hosts_file`` only: never the gateway user's
``~/.ssh/known_hosts``, never trust on first use.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import asyncssh

from ..config import ConfigError, SshConnection

__all__ = ["HOST_KEY_FILE", "load_or_create_host_key", "pinned_known_hosts"]

HOST_KEY_FILE = "ssh_host_ed25519_key"


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The private host key at ``path``; an Ed25519 key is created there when absent."""
    if path.exists():
        try:
            return asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise ConfigError(f"SSH host key {path} cannot be read: {exc}") from None
    key = asyncssh.generate_private_key("ssh-ed25519", comment="pathwarden host key")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key.export_private_key())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it first
    except FileExistsError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return asyncssh.read_private_key(str(path))
    tmp.unlink()
    with contextlib.suppress(OSError):
        path.with_suffix(".pub").write_bytes(key.export_public_key())
    return key


def pinned_known_hosts(name: str, conn: SshConnection) -> asyncssh.SSHKnownHosts:
    """The host keys connection ``name`` accepts, from its configuration only.

    A bare public key (``ssh-ed25519 AAAA...``) pins that key for this
    connection whatever address it is dialled at; a full known_hosts line keeps
    its host patterns.
    """
    lines = []
    for entry in conn.known_hosts:
        first = entry.split(" ", 1)[0]
        lines.append(f"* {entry}" if _is_key_type(first) else entry)
    if conn.known_hosts_file is not None:
        try:
            lines.append(Path(conn.known_hosts_file).read_text())
        except OSError as exc:
            raise ConfigError(f"connections.{name}.known_hosts_file: cannot read "
                              f"{conn.known_hosts_file}: {exc}") from None
    try:
        return asyncssh.import_known_hosts("\n".join(lines) + "\n")
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise ConfigError(f"connections.{name}.known_hosts: not a valid known_hosts entry: "
                          f"{exc}") from None


def _is_key_type(word: str) -> bool:
    return word.startswith(("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-", "rsa-sha2-"))
