"""SSH keys the gateway keeps: its host key, and the pinned host keys of targets.

The host key is an Ed25519 key in ``<data_dir>/ssh_host_ed25519_key`` (or
the listener's ``host_key``), created 0600 on first start like the gateway's
other keys (:mod:`pathwarden.identity.keyfiles`: a crash never leaves half a
key, and a key file other users can read is refused). Clients
pin it like any SSH server's key (``pathwarden ssh host-key`` prints the
line for known_hosts).

A target's host key is checked against its connection's ``known_hosts``
entries and ``known_hosts_file`` only: never the gateway user's
``~/.ssh/known_hosts``, never trust on first use.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import asyncssh

from ..config import ConfigError, SshConnection
from ..identity.keyfiles import LooseKeyFile, create_secret_file, read_secret_file

__all__ = ["HOST_KEY_FILE", "load_or_create_host_key", "pinned_known_hosts"]

HOST_KEY_FILE = "ssh_host_ed25519_key"


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The private host key at ``path``; an Ed25519 key is created there when absent."""
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="pathwarden host key")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            create_secret_file(path, key.export_private_key())
        except OSError as exc:
            raise ConfigError(f"cannot create the SSH host key {path}: {exc.strerror}") from None
    try:
        key = asyncssh.import_private_key(read_secret_file(path))
    except LooseKeyFile as exc:
        raise ConfigError(f"SSH host key {exc}") from None
    except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise ConfigError(f"SSH host key {path} cannot be read: {exc}") from None
    pub = path.with_suffix(".pub")
    if not pub.exists():
        with contextlib.suppress(OSError):
            pub.write_bytes(key.export_public_key())
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
