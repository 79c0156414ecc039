"""Dialing an SSH target with credentials only the gateway holds.

:func:`dial` logs in as the connection's ``user`` with its private key and/or
password and accepts only a host key pinned in the configuration
(:func:`.keys.pinned_known_hosts`). Nothing of the gateway user's own SSH
setup is used: no ``~/.ssh/config``, no agent, no default keys. Every
failure is an :class:`SshUpstreamError` whose message is safe to show the
client (it never contains a credential) and says what to fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from ..config import ConfigError, SshConnection, SshSettings
from ..config.schema import SSH_CIPHERS
from .keys import pinned_known_hosts

__all__ = ["SshTarget", "SshUpstreamError", "build_ssh_target", "dial"]


class SshUpstreamError(Exception):
    """The target could not be reached or refused the gateway; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class SshTarget:
    """How to reach one configured SSH connection (secrets read only when dialing)."""

    name: str
    host: str
    port: int
    user: str
    password: Callable[[], str | None]
    private_key: Callable[[], str | None]
    passphrase: Callable[[], str | None]
    known_hosts: Callable[[], asyncssh.SSHKnownHosts]
    connect_timeout: float
    keepalive_interval: float
    keepalive_count_max: int
    # Preferred first; the host picks from the rest only if it has none of the fast ones.
    ciphers: tuple[str, ...] = ()


def build_ssh_target(name: str, conn: SshConnection, settings: SshSettings) -> SshTarget:
    def reveal(secret: object) -> Callable[[], str | None]:
        def get() -> str | None:
            return secret.reveal() if secret is not None else None  # type: ignore[attr-defined]
        return get

    return SshTarget(
        name=name, host=conn.host, port=conn.port, user=conn.user,
        password=reveal(conn.password), private_key=reveal(conn.private_key),
        passphrase=reveal(conn.private_key_passphrase),
        known_hosts=lambda: pinned_known_hosts(name, conn),
        connect_timeout=conn.connect_timeout.total_seconds(),
        keepalive_interval=settings.keepalive_interval.total_seconds(),
        keepalive_count_max=settings.keepalive_count_max,
        ciphers=tuple(dict.fromkeys([*settings.ciphers, *SSH_CIPHERS])),
    )


async def dial(target: SshTarget) -> asyncssh.SSHClientConnection:
    """Connect and log in to ``target``; raises :class:`SshUpstreamError`."""
    where = f"{target.host}:{target.port}"
    try:
        known_hosts = target.known_hosts()
        key_text = target.private_key()
        keys = ([asyncssh.import_private_key(key_text, target.passphrase())]
                if key_text else [])
        password = target.password()
    except ConfigError as exc:
        raise SshUpstreamError("config", f"connection {target.name} is misconfigured: "
                                         f"{exc}") from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise SshUpstreamError(
            "config", f"connections.{target.name}.private_key cannot be loaded "
            f"({type(exc).__name__}: {exc}); check the key and its passphrase") from None
    try:
        return await asyncio.wait_for(asyncssh.connect(
            target.host, target.port, username=target.user, password=password,
            client_keys=keys, known_hosts=known_hosts, config=None, agent_path=None,
            agent_forwarding=False, x509_trusted_certs=None, ignore_encrypted=True,
            preferred_auth="publickey,password" if password else "publickey",
            keepalive_interval=target.keepalive_interval or None,
            keepalive_count_max=target.keepalive_count_max,
            encryption_algs=list(target.ciphers),
        ), target.connect_timeout)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise SshUpstreamError(
            "host_key", f"the host key of {target.name} ({where}) is not one of the pinned "
            f"keys in connections.{target.name}.known_hosts; refusing to connect (a changed "
            f"key may mean an attack; if it changed legitimately, update the pin) [{exc}]"
        ) from None
    except asyncssh.PermissionDenied:
        raise SshUpstreamError(
            "auth", f"{target.name} ({where}) refused the gateway's credentials for user "
            f"{target.user}; check connections.{target.name}.private_key/password") from None
    except TimeoutError:
        raise SshUpstreamError(
            "timeout", f"cannot reach {target.name} at {where}: no answer within "
            f"{target.connect_timeout:g}s") from None
    except OSError as exc:
        raise SshUpstreamError(
            "unreachable", f"cannot reach {target.name} at {where}: "
            f"{exc.strerror or exc}") from None
    except asyncssh.Error as exc:
        raise SshUpstreamError(
            "protocol", f"SSH to {target.name} at {where} failed: {exc.reason}") from None
