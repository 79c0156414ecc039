"""Specification of SSH user certificates signed by the gateway's CA.

Covers the CA key file, which keys are certified and what a certificate says
(checked with ``ssh-keygen -L``), issuing and authenticating through the
token record behind each certificate (revocation, expiry, principals, scope),
``pathwarden ssh cert`` and ``ssh ca`` on the gateway host and against the
HTTP API, ``POST /v1/ssh/certificates`` on a running gateway, and logins with
a certificate to an asyncssh server wired up the way the gateway's SSH
listener is (:class:`CertificateServer` below), from asyncssh and from the
real OpenSSH ``ssh`` client.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway_harness import GatewayHarness, api_settings, running_gateway
from pathwarden.config import GatewayConfig, parse_config
from pathwarden.identity import (
    Authenticator,
    AuthError,
    CertificateLogin,
    IssuedCertificate,
    IssueError,
    LoginName,
    PresentedCertificate,
    SshCaError,
    SshCertificateAuthority,
    SshKeyError,
    TokenAuthority,
    parse_login_name,
)
from pathwarden.identity.ssh_ca import CA_KEY_FILE, parse_user_public_key
from pathwarden.model import Identity
from pathwarden.store import SqlStore, open_store
from pgserver import free_port

T = TypeVar("T")

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]
SSH = "/usr/bin/ssh"

CONNECTIONS = {
    "shop-host": {"host": "127.0.0.1", "port": 1, "database": "shop", "user": "app"},
    "shop-db": {"host": "127.0.0.1", "port": 1, "database": "shop", "user": "app"},
    "billing-host": {"host": "127.0.0.1", "port": 1, "database": "billing", "user": "app"},
}
IDENTITIES = {
    "ci-deploy": {"groups": ["deployers"], "labels": {"stage": "deploy"},
                  "connections": ["shop-host", "shop-db"], "max_token_ttl": "30m"},
    "ci-test": {"groups": ["ci"]},
}
CONFIG = {"connections": CONNECTIONS, "identities": IDENTITIES,
          "tokens": {"default_ttl": "15m", "max_ttl": "2h"}}


def keygen(directory: Path, name: str = "id_ed25519", kind: str = "ed25519",
           bits: int | None = None) -> Path:
    """A new OpenSSH key pair without passphrase; returns the private key's path."""
    path = directory / name
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(path)]
    if bits is not None:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return path


def pub(key: Path) -> str:
    return Path(f"{key}.pub").read_text()


def keygen_list(cert: Path | str) -> str:
    """``ssh-keygen -L`` of a certificate file (fails the test when OpenSSH rejects it)."""
    proc = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, f"ssh-keygen -L refused the certificate: {proc.stderr}"
    return proc.stdout


def principals_of(listing: str) -> list[str]:
    block = listing.split("Principals:", 1)[1].split("Critical Options:", 1)[0]
    return block.split()


def validity_of(listing: str) -> tuple[datetime, datetime]:
    """The ``Valid: from A to B`` of ``ssh-keygen -L`` (local time) as aware datetimes."""
    match = re.search(r"Valid: from (\S+) to (\S+)", listing)
    assert match, listing
    start, end = (datetime.fromisoformat(t).astimezone(UTC) for t in match.groups())
    return start, end


def presented(ca: SshCertificateAuthority, issued: IssuedCertificate) -> PresentedCertificate:
    """What the certificate says, read from its wire form as the SSH server receives it."""
    blob = asyncssh.import_certificate(issued.certificate).public_data
    cert = ca.read_certificate(blob)
    assert cert is not None
    return cert


@dataclass
class Env:
    auth: Authenticator
    ca: SshCertificateAuthority
    store: SqlStore
    config: GatewayConfig
    keys: Path


def run_env(tmp_path: Path, body: Callable[[Env], Awaitable[T]],
            config: dict[str, Any] | None = None) -> T:
    """Run ``body`` with a fresh store, token key, SSH CA and an ed25519 client key."""
    cfg = parse_config(_yaml(config or CONFIG))
    authority = TokenAuthority.from_private_key(Ed25519PrivateKey.generate())
    ca = SshCertificateAuthority.load_or_create(tmp_path / "data")
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    if not (keys / "id_ed25519").exists():
        keygen(keys)

    async def main() -> T:
        store = await open_store(f"sqlite:///{tmp_path / 'pw.db'}")
        try:
            return await body(Env(Authenticator(cfg, authority, store), ca, store, cfg, keys))
        finally:
            await store.close()

    return asyncio.run(main())


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


async def issue(env: Env, identity: str = "ci-deploy", **changes: Any) -> IssuedCertificate:
    args: dict[str, Any] = {"identity": identity, "public_key": pub(env.keys / "id_ed25519"),
                            "ttl": timedelta(minutes=10), "connections": None}
    args.update(changes)
    return await env.auth.issue_ssh_certificate(env.ca, **args)


async def login(env: Env, cert: PresentedCertificate, connection: str = "shop-host",
                user_identity: str | None = None, **changes: Any) -> Identity:
    args: dict[str, Any] = {"key_id": cert.key_id, "principals": cert.principals,
                            "valid_before": cert.valid_before, "connection": connection,
                            "user_identity": user_identity}
    args.update(changes)
    return await env.auth.authenticate_ssh_certificate(**args)


def refused(tmp_path: Path, body: Callable[[Env], Awaitable[object]]) -> AuthError:
    with pytest.raises(AuthError) as info:
        run_env(tmp_path, body)
    return info.value


# -- the CA key file --------------------------------------------------------------------------


def test_ca_key_is_created_private_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = SshCertificateAuthority.load_or_create(data)
    path = data / CA_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    line = first.public_key_line()
    assert re.fullmatch(r"ssh-ed25519 AAAA[A-Za-z0-9+/=]+ pathwarden-ca", line)
    again = SshCertificateAuthority.load_or_create(data)
    assert again.public_key_line() == line
    assert again.ca_public_key == first.ca_public_key
    # ssh-keygen reads the key file too (an operator can inspect or use it).
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()[:2]
    assert derived == line.split()[:2]


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines: list[str] = []

    def load() -> None:
        lines.append(SshCertificateAuthority.load_or_create(data).public_key_line())

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines) == 8 and len(set(lines)) == 1
    assert [p.name for p in data.iterdir()] == [CA_KEY_FILE]  # no temp files left


def test_ca_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    SshCertificateAuthority.load_or_create(data)
    (data / CA_KEY_FILE).chmod(0o644)
    with pytest.raises(SshCaError, match=r"accessible by other users \(mode 0644\); run: chmod"):
        SshCertificateAuthority.load_or_create(data)


def test_ca_key_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / CA_KEY_FILE
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(SshCaError, match="not an unencrypted OpenSSH private key"):
        SshCertificateAuthority.load_or_create(data)


# -- which keys are certified, and what a certificate says --------------------------------


@pytest.mark.parametrize(("kind", "bits"), [("ed25519", None), ("ecdsa", 256), ("ecdsa", 521),
                                            ("rsa", 2048)])
def test_supported_keys_are_accepted(tmp_path: Path, kind: str, bits: int | None) -> None:
    key = keygen(tmp_path, f"id_{kind}", kind, bits)
    parsed = parse_user_public_key(pub(key))
    assert parsed.export_public_key().split()[:2] == pub(key).encode().split()[:2]


def test_weak_rsa_keys_certificates_and_private_keys_are_refused(tmp_path: Path) -> None:
    small = asyncssh.generate_private_key("ssh-rsa", key_size=1024)
    with pytest.raises(SshKeyError, match="RSA key of 1024 bits is too weak"):
        parse_user_public_key(small.export_public_key().decode())
    key = keygen(tmp_path)
    with pytest.raises(SshKeyError, match=r"this is a private key; pass its \.pub file"):
        parse_user_public_key(key.read_text())
    ca = SshCertificateAuthority.load_or_create(tmp_path / "data")
    now = datetime.now(UTC)
    cert = ca.sign(parse_user_public_key(pub(key)), identity="ci-test", key_id="x",
                   valid_after=now, valid_before=now + timedelta(minutes=1))
    with pytest.raises(SshKeyError, match="this is a certificate"):
        parse_user_public_key(cert.export_certificate().decode())
    with pytest.raises(SshKeyError, match="cannot be certified; use ssh-ed25519"):
        parse_user_public_key("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5z"
                              "c2guY29tAAAAIHq2 user@host")
    with pytest.raises(SshKeyError, match="does not decode"):
        parse_user_public_key("ssh-ed25519 AAAAnotbase64!! user@host")
    with pytest.raises(SshKeyError, match="one OpenSSH public key line"):
        parse_user_public_key(pub(key) + pub(key))
    with pytest.raises(SshKeyError, match="empty"):
        parse_user_public_key("  \n")


def test_certificate_fields_as_openssh_reads_them(tmp_path: Path) -> None:
    ca = SshCertificateAuthority.load_or_create(tmp_path / "data")
    key = keygen(tmp_path)
    start = datetime.now(UTC).replace(microsecond=0)
    cert = ca.sign(parse_user_public_key(pub(key)), identity="ci-deploy",
                   key_id="pathwarden:0123456789abcdef", valid_after=start,
                   valid_before=start + timedelta(minutes=15),
                   source_address=["10.1.0.0/16", "192.0.2.7"])
    path = tmp_path / "id_ed25519-cert.pub"
    path.write_bytes(cert.export_certificate())
    listing = keygen_list(path)
    assert "user certificate" in listing
    assert 'Key ID: "pathwarden:0123456789abcdef"' in listing
    assert principals_of(listing) == ["ci-deploy"]
    assert validity_of(listing) == (start, start + timedelta(minutes=15))
    options = listing.split("Critical Options:", 1)[1].split("Extensions:", 1)[0].split()
    assert options == ["source-address", "10.1.0.0/16,192.0.2.7/32"]
    assert listing.split("Extensions:", 1)[1].split() == ["permit-pty"]
    assert ca.fingerprint in listing  # Signing CA
    with pytest.raises(SshKeyError, match="not an IP address"):
        ca.sign(parse_user_public_key(pub(key)), identity="ci-deploy", key_id="k",
                valid_after=start, valid_before=start + timedelta(minutes=1),
                source_address=["shop.example"])


def test_certificates_of_another_ca_or_tampered_ones_are_not_read(tmp_path: Path) -> None:
    ca = SshCertificateAuthority.load_or_create(tmp_path / "ours")
    other = SshCertificateAuthority.load_or_create(tmp_path / "theirs")
    user_key = parse_user_public_key(pub(keygen(tmp_path)))
    now = datetime.now(UTC)
    cert = other.sign(user_key, identity="ci-deploy", key_id="pathwarden:0123456789abcdef",
                      valid_after=now, valid_before=now + timedelta(minutes=5))
    with pytest.raises(SshKeyError, match="not by this gateway's CA"):
        ca.read_certificate(cert.public_data)
    ours = ca.sign(user_key, identity="ci-deploy", key_id="pathwarden:0123456789abcdef",
                   valid_after=now, valid_before=now + timedelta(minutes=5))
    blob = ours.public_data
    forged = blob.replace(b"ci-deploy", b"ci-depl0y")
    with pytest.raises(SshKeyError, match="signature does not verify"):
        ca.read_certificate(forged)
    assert ca.read_certificate(user_key.public_data) is None  # a plain key: not a certificate
    read = ca.read_certificate(blob)
    assert read is not None and read.principals == ("ci-deploy",)
    assert read.token_ref == "0123456789abcdef"


@pytest.mark.parametrize(("username", "expected"), [
    ("shop-host", LoginName(None, "shop-host")),
    ("ci-deploy+shop-host", LoginName("ci-deploy", "shop-host")),
    ('ci"x+shop-host', None),
    ("ci-deploy+", None),
    ("+shop-host", None),
    ("a+b+c", None),
    ("*", None),
    ("", None),
])
def test_login_names(username: str, expected: LoginName | None) -> None:
    assert parse_login_name(username) == expected


# -- issuing and authenticating through the token record -------------------------------------


def test_issue_records_a_token_and_authenticate_yields_the_identity(tmp_path: Path) -> None:
    async def body(env: Env) -> tuple[IssuedCertificate, Identity, Any, str]:
        issued = await issue(env, claims={"run_id": "42"}, connections=["shop-host"])
        who = await login(env, presented(env.ca, issued))
        record = await env.store.token_status(issued.token_ref)
        path = env.keys / "id_ed25519-cert.pub"
        path.write_text(issued.certificate + "\n")
        return issued, who, record, keygen_list(path)

    issued, who, record, listing = run_env(tmp_path, body)
    assert issued.certificate.startswith("ssh-ed25519-cert-v01@openssh.com AAAA")
    assert issued.identity == "ci-deploy" and issued.connections == ("shop-host",)
    assert who.name == "ci-deploy" and who.groups == ("deployers",)
    assert dict(who.labels) == {"stage": "deploy"}
    assert who.token_ref == issued.token_ref
    assert who.expires_at == issued.expires_at
    assert who.claims["run_id"] == "42"
    assert who.claims["ssh_key"].startswith("SHA256:")
    assert record.identity == "ci-deploy" and record.connections == ("shop-host",)
    assert record.expires_at == issued.expires_at
    assert f'Key ID: "pathwarden:{issued.token_ref}"' in listing
    assert principals_of(listing) == ["ci-deploy"]
    start, end = validity_of(listing)
    assert end == issued.expires_at
    assert end - start == timedelta(minutes=10, seconds=30)  # 30 s leeway for lagging clocks
    assert who.claims["ssh_key"] in listing


def test_user_name_naming_the_identity_is_checked(tmp_path: Path) -> None:
    async def ok(env: Env) -> Identity:
        issued = await issue(env)
        return await login(env, presented(env.ca, issued), user_identity="ci-deploy")

    assert run_env(tmp_path, ok).name == "ci-deploy"

    async def other(env: Env) -> Identity:
        issued = await issue(env)
        return await login(env, presented(env.ca, issued), user_identity="ci-test")

    error = refused(tmp_path, other)
    assert error.reason == "identity_mismatch"
    assert "was issued for ci-deploy, not ci-test" in str(error)


def test_revoked_token_refuses_its_certificate(tmp_path: Path) -> None:
    async def body(env: Env) -> Identity:
        issued = await issue(env)
        await env.store.revoke_token(issued.token_ref, "key leaked")
        return await login(env, presented(env.ca, issued))

    error = refused(tmp_path, body)
    assert error.reason == "revoked"
    assert re.search(r"token [0-9a-f]{16} was revoked at 20\S+ \(key leaked\)", str(error))


def test_expired_token_refuses_its_certificate(tmp_path: Path) -> None:
    async def body(env: Env) -> Identity:
        past = datetime.now(UTC) - timedelta(hours=1)
        issued = await issue(env, now=past)
        cert = presented(env.ca, issued)
        assert cert.valid_before < datetime.now(UTC)
        return await login(env, cert)

    error = refused(tmp_path, body)
    assert error.reason == "expired"
    assert "pathwarden ssh cert ci-deploy --key" in str(error)


def test_certificate_outliving_its_token_is_cut_at_the_token(tmp_path: Path) -> None:
    async def body(env: Env) -> Identity:
        issued = await issue(env)
        cert = presented(env.ca, issued)
        return await login(env, cert, valid_before=cert.valid_before + timedelta(days=1))

    who = run_env(tmp_path, body)
    assert who.expires_at is not None and who.expires_at < datetime.now(UTC) + timedelta(hours=1)


def test_unknown_token_ref_and_foreign_key_ids_are_refused(tmp_path: Path) -> None:
    async def unknown(env: Env) -> Identity:
        cert = presented(env.ca, await issue(env))
        return await login(env, cert, key_id="pathwarden:00000000000000ff")

    error = refused(tmp_path, unknown)
    assert error.reason == "unknown_token"
    assert "token 00000000000000ff is not known to this gateway's store" in str(error)

    async def foreign(env: Env) -> Identity:
        cert = presented(env.ca, await issue(env))
        return await login(env, cert, key_id="alice@laptop")

    error = refused(tmp_path, foreign)
    assert error.reason == "malformed" and "'alice@laptop' is not a pathwarden key id" in str(error)


def test_principals_without_the_tokens_identity_are_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> Identity:
        cert = presented(env.ca, await issue(env))
        return await login(env, cert, principals=("ci-test",))

    error = refused(tmp_path, body)
    assert error.reason == "principal_mismatch"
    assert "names ci-test, but the token was issued for ci-deploy" in str(error)


def test_connection_outside_the_scope_or_the_identity_is_refused(tmp_path: Path) -> None:
    async def scoped(env: Env) -> Identity:
        cert = presented(env.ca, await issue(env, connections=["shop-host"]))
        return await login(env, cert, connection="shop-db")

    error = refused(tmp_path, scoped)
    assert error.reason == "out_of_token_scope"
    assert "is scoped to shop-host, not shop-db; issue one with: pathwarden ssh cert " \
           "ci-deploy --key KEY.pub --connection shop-db" in str(error)

    async def not_allowed(env: Env) -> Identity:
        cert = presented(env.ca, await issue(env))
        return await login(env, cert, connection="billing-host")

    error = refused(tmp_path, not_allowed)
    assert error.reason == "not_allowed"
    assert str(error) == ("identity ci-deploy may not use connection billing-host "
                          "(allowed: shop-host, shop-db)")

    async def unknown(env: Env) -> Identity:
        cert = presented(env.ca, await issue(env))
        return await login(env, cert, connection="nowhere")

    error = refused(tmp_path, unknown)
    assert error.reason == "unknown_connection"
    assert "unknown connection 'nowhere' (the SSH user name)" in str(error)


def test_identity_removed_from_the_configuration_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> Identity:
        cert = presented(env.ca, await issue(env, identity="ci-test"))
        reduced = env.config.model_copy(update={"identities": {
            k: v for k, v in env.config.identities.items() if k != "ci-test"}})
        auth = Authenticator(reduced, TokenAuthority.from_private_key(
            Ed25519PrivateKey.generate()), env.store)
        return await auth.authenticate_ssh_certificate(
            key_id=cert.key_id, principals=cert.principals, valid_before=cert.valid_before,
            connection="shop-host", user_identity=None)

    error = refused(tmp_path, body)
    assert error.reason == "unknown_identity"


def test_issuing_applies_the_token_caps_and_records_nothing_when_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> dict[str, str]:
        problems: dict[str, str] = {}
        for name, changes in {
            "over_cap": {"ttl": timedelta(hours=1)},
            "scope": {"connections": ["billing-host"]},
            "unknown_identity": {"identity": "nobody"},
            "weak_key": {"public_key": asyncssh.generate_private_key(
                "ssh-rsa", key_size=1024).export_public_key().decode()},
            "expired_parent": {"not_after": datetime.now(UTC)},
        }.items():
            try:
                await issue(env, **changes)
            except (IssueError, SshKeyError) as exc:
                problems[name] = f"{type(exc).__name__}: {exc}"
        problems["recorded"] = str(len(await env.store.list_tokens(include_expired=True)))
        return problems

    problems = run_env(tmp_path, body)
    assert problems["over_cap"].startswith("IssueError: requested lifetime 1h exceeds the 30m")
    assert "may not use connection billing-host" in problems["scope"]
    assert "unknown identity 'nobody'" in problems["unknown_identity"]
    assert problems["weak_key"].startswith("SshKeyError: RSA key of 1024 bits")
    assert "a certificate cannot outlive it" in problems["expired_parent"]
    assert problems["recorded"] == "0"


def test_not_after_shortens_the_lifetime(tmp_path: Path) -> None:
    async def body(env: Env) -> tuple[IssuedCertificate, datetime]:
        limit = datetime.now(UTC) + timedelta(minutes=2)
        return await issue(env, ttl=timedelta(minutes=20), not_after=limit), limit

    issued, limit = run_env(tmp_path, body)
    assert issued.expires_at <= limit
    assert issued.expires_at > limit - timedelta(seconds=5)


# -- an asyncssh server as the gateway's SSH listener uses it ----------------------------------


@dataclass
class Served:
    port: int
    host_key: asyncssh.SSHKey
    refusals: list[str] = field(default_factory=list)


class CertificateServer(asyncssh.SSHServer):
    """The certificate half of the gateway's front leg: trust the CA, check the token.

    ``connection_made`` attaches a :class:`CertificateLogin`, ``begin_auth``
    trusts the CA for the user name, the check calls
    ``authenticate_ssh_certificate``; an exec request is answered with who
    logged in (identity, connection, token ref, certificate serial).
    """

    def __init__(self, auth: Authenticator, ca: SshCertificateAuthority,
                 served: Served) -> None:
        self._auth = auth
        self._served = served
        self.certs = CertificateLogin(ca, self._check)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.certs.attach(conn)

    def begin_auth(self, username: str) -> bool:
        self.certs.begin_auth(username)
        return True

    async def _check(self, cert: PresentedCertificate, login: LoginName) -> Identity:
        try:
            return await self._auth.authenticate_ssh_certificate(
                key_id=cert.key_id, principals=cert.principals,
                valid_before=cert.valid_before, connection=login.connection,
                user_identity=login.identity)
        except AuthError as exc:
            self._served.refusals.append(exc.reason)
            raise


async def _answer(process: asyncssh.SSHServerProcess[str]) -> None:
    server = process.channel.get_connection().get_owner()
    assert isinstance(server, CertificateServer)
    who, cert, login = server.certs.identity, server.certs.certificate, server.certs.login
    assert who is not None and cert is not None and login is not None
    process.stdout.write(f"identity={who.name} connection={login.connection} "
                         f"token={who.token_ref} serial={cert.serial} "
                         f"command={process.command}\n")
    process.exit(0)


@asynccontextmanager
async def serving(env: Env) -> AsyncIterator[Served]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    served = Served(0, host_key)
    acceptor = await asyncssh.listen(
        "127.0.0.1", 0, server_factory=lambda: CertificateServer(env.auth, env.ca, served),
        server_host_keys=[host_key], process_factory=_answer, login_timeout=20)
    served.port = acceptor.get_port()
    try:
        yield served
    finally:
        acceptor.close()
        await acceptor.wait_closed()


async def asyncssh_login(served: Served, user: str, key: Path, cert: str | None) -> str:
    """Run ``hello`` as ``user`` with the key (and certificate); its output or ``refused``."""
    private = asyncssh.read_private_key(str(key))
    keys: list[Any] = [(private, asyncssh.import_certificate(cert))] if cert else [private]
    try:
        async with asyncssh.connect(
                "127.0.0.1", served.port, username=user, client_keys=keys, known_hosts=None,
                agent_path=None, password=None, preferred_auth="publickey") as conn:
            result = await conn.run("hello", check=True)
            return str(result.stdout).strip()
    except asyncssh.PermissionDenied:
        return "refused"


async def openssh_login(served: Served, user: str, key: Path, *extra: str,
                        command: str = "hello") -> tuple[int, str, str]:
    """The real ``ssh`` client with only this key (and its ``-cert.pub``), host key pinned."""
    known = key.parent / "known_hosts"
    line = served.host_key.export_public_key().decode().split()
    known.write_text(f"[127.0.0.1]:{served.port} {line[0]} {line[1]}\n")
    proc = await asyncio.create_subprocess_exec(
        SSH, "-F", "/dev/null", "-i", str(key), *extra, "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known}", "-o", "PreferredAuthentications=publickey",
        "-o", "ConnectTimeout=10", "-p", str(served.port), f"{user}@127.0.0.1", command,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip(), err.decode()


needs_ssh = pytest.mark.skipif(not os.path.exists(SSH), reason="OpenSSH client not installed")


def test_asyncssh_client_logs_in_with_a_certificate(tmp_path: Path) -> None:
    async def body(env: Env) -> dict[str, str]:
        issued = await issue(env, connections=["shop-host"])
        key = env.keys / "id_ed25519"
        async with serving(env) as served:
            results = {user: await asyncssh_login(served, user, key, issued.certificate)
                       for user in ("shop-host", "ci-deploy+shop-host", "ci-test+shop-host",
                                    "shop-db", "billing-host")}
            results["plain key"] = await asyncssh_login(served, "shop-host", key, None)
            results["refusals"] = ",".join(served.refusals)
            results["ref"] = issued.token_ref
            return results

    results = run_env(tmp_path, body)
    ref = results["ref"]
    assert re.fullmatch(rf"identity=ci-deploy connection=shop-host token={ref} serial=\d+ "
                        r"command=hello", results["shop-host"])
    assert results["ci-deploy+shop-host"].startswith("identity=ci-deploy connection=shop-host")
    # The user name names another identity: the principal check refuses it.
    assert results["ci-test+shop-host"] == "refused"
    # Outside the token's scope (the scope is checked before the identity's list).
    assert results["shop-db"] == "refused"
    assert results["billing-host"] == "refused"
    assert results["plain key"] == "refused"  # keys without a certificate do not log in
    assert results["refusals"] == "out_of_token_scope,out_of_token_scope"


def test_certificates_of_another_ca_do_not_log_in(tmp_path: Path) -> None:
    async def body(env: Env) -> str:
        other = SshCertificateAuthority.load_or_create(tmp_path / "other")
        issued = await issue(env)
        key = env.keys / "id_ed25519"
        now = datetime.now(UTC)
        forged = other.sign(parse_user_public_key(pub(key)), identity="ci-deploy",
                            key_id=f"pathwarden:{issued.token_ref}",
                            valid_after=now - timedelta(minutes=1),
                            valid_before=now + timedelta(minutes=5))
        async with serving(env) as served:
            return await asyncssh_login(served, "shop-host", key,
                                        forged.export_certificate().decode())

    assert run_env(tmp_path, body) == "refused"


@needs_ssh
def test_openssh_client_logs_in_with_the_certificate_beside_the_key(tmp_path: Path) -> None:
    async def body(env: Env) -> dict[str, Any]:
        issued = await issue(env)
        key = env.keys / "id_ed25519"
        (env.keys / "id_ed25519-cert.pub").write_text(issued.certificate + "\n")
        async with serving(env) as served:
            return {
                "ref": issued.token_ref,
                # OpenSSH finds id_ed25519-cert.pub by itself ...
                "auto": await openssh_login(served, "shop-host", key, command="whoami"),
                # ... or is pointed at it.
                "explicit": await openssh_login(
                    served, "ci-deploy+shop-db", key, "-o",
                    f"CertificateFile={env.keys / 'id_ed25519-cert.pub'}"),
                "other_identity": await openssh_login(served, "ci-test+shop-host", key),
                "not_allowed": await openssh_login(served, "billing-host", key),
                "refusals": list(served.refusals),
            }

    results = run_env(tmp_path, body)
    ref = results["ref"]
    code, out, err = results["auto"]
    assert code == 0, err
    assert re.fullmatch(rf"identity=ci-deploy connection=shop-host token={ref} serial=\d+ "
                        r"command=whoami", out)
    code, out, err = results["explicit"]
    assert code == 0, err
    assert out.startswith("identity=ci-deploy connection=shop-db")
    code, out, err = results["other_identity"]
    assert code == 255 and out == "" and "Permission denied (publickey)" in err
    code, out, err = results["not_allowed"]
    assert code == 255 and out == ""
    # The reason reaches the person at the terminal as an authentication banner.
    assert "pathwarden: identity ci-deploy may not use connection billing-host" in err
    assert results["refusals"] == ["not_allowed"]


@needs_ssh
def test_openssh_login_with_a_revoked_or_expired_certificate_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> dict[str, Any]:
        key = env.keys / "id_ed25519"
        cert_file = env.keys / "id_ed25519-cert.pub"
        revoked = await issue(env)
        await env.store.revoke_token(revoked.token_ref, "rotated")
        async with serving(env) as served:
            cert_file.write_text(revoked.certificate + "\n")
            after_revoke = await openssh_login(served, "shop-host", key)
            expired = await issue(env, now=datetime.now(UTC) - timedelta(hours=1))
            cert_file.write_text(expired.certificate + "\n")
            after_expiry = await openssh_login(served, "shop-host", key)
            fresh = await issue(env)
            cert_file.write_text(fresh.certificate + "\n")
            renewed = await openssh_login(served, "shop-host", key)
            return {"revoked": after_revoke, "expired": after_expiry, "renewed": renewed,
                    "refusals": list(served.refusals), "ref": revoked.token_ref}

    results = run_env(tmp_path, body)
    code, out, err = results["revoked"]
    assert code == 255 and out == ""
    assert f"pathwarden: token {results['ref']} was revoked at" in err and "(rotated)" in err
    code, out, err = results["expired"]
    assert code == 255 and out == ""  # asyncssh refuses it before pathwarden is asked
    code, out, err = results["renewed"]
    assert code == 0 and out.startswith("identity=ci-deploy"), err
    assert results["refusals"] == ["revoked"]


# -- the CLI ------------------------------------------------------------------------------------


def cli(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*PATHWARDEN, *args]
    if config is not None:
        cmd += ["--config", str(config)]
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PATHWARDEN_GATEWAY", "PATHWARDEN_TOKEN", "PATHWARDEN_CACERT")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=stdin,
                          env={**environ, **(env or {})})


def write_config(tmp_path: Path, **changes: Any) -> Path:
    config = {"data_dir": str(tmp_path / "data"), **CONFIG, **changes}
    path = tmp_path / "pathwarden.yaml"
    path.write_text(_yaml(config))
    return path


def test_cli_local_issuing_writes_the_certificate_beside_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    key = keygen(tmp_path)
    proc = cli("ssh", "cert", "ci-deploy", "--key", f"{key}.pub", "--ttl", "10m",
               "--connection", "shop-host", config=config)
    assert proc.returncode == 0, proc.stderr
    cert = tmp_path / "id_ed25519-cert.pub"
    assert proc.stdout == ""
    ref = re.search(r"token ([0-9a-f]{16})", proc.stderr)
    assert ref, proc.stderr
    assert f"written to {cert}" in proc.stderr
    assert "expires 20" in proc.stderr and "scope: shop-host" in proc.stderr
    listing = keygen_list(cert)
    assert principals_of(listing) == ["ci-deploy"]
    assert f'Key ID: "pathwarden:{ref.group(1)}"' in listing
    start, end = validity_of(listing)
    now = datetime.now(UTC)
    assert start <= now <= end
    assert timedelta(minutes=9) < end - now <= timedelta(minutes=10)
    # The token behind it is an ordinary token: listed, and revocable.
    listed = cli("token", "list", "--identity", "ci-deploy", config=config)
    assert ref.group(1) in listed.stdout
    # `ssh ca` prints the CA that signed it.
    ca_line = cli("ssh", "ca", config=config).stdout.strip()
    assert ca_line.endswith(" pathwarden-ca")
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=ca_line, text=True,
                                 capture_output=True, check=True).stdout.split()[1]
    assert f"Signing CA: ED25519 {fingerprint}" in listing


def test_cli_local_issuing_to_stdout_and_refusals(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    key = keygen(tmp_path)
    printed = cli("ssh", "cert", "ci-test", "--key", f"{key}.pub", "-o", "-", config=config)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert not (tmp_path / "id_ed25519-cert.pub").exists()
    over = cli("ssh", "cert", "ci-deploy", "--key", f"{key}.pub", "--ttl", "1h", config=config)
    assert over.returncode == 1 and "exceeds the 30m cap" in over.stderr
    private = cli("ssh", "cert", "ci-deploy", "--key", str(key), config=config)
    assert private.returncode == 2 and "this is a private key" in private.stderr
    missing = cli("ssh", "cert", "--key", f"{key}.pub", config=config)
    assert missing.returncode == 2 and "name the IDENTITY" in missing.stderr
    both = cli("ssh", "cert", "ci-deploy", "--key", f"{key}.pub", "--gateway",
               "http://127.0.0.1:1", config=config)
    assert both.returncode == 2 and "drop one of them" in both.stderr
    assert not (tmp_path / "id_ed25519-cert.pub").exists()


# -- the HTTP API and remote issuing ------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("ssh-api")
    config = {
        "data_dir": str(base / "data"),
        "listeners": [{"name": "pg", "protocol": "postgres", "bind": f"127.0.0.1:{free_port()}",
                       "allow_plaintext_loopback": True}],
        **CONFIG,
        "auth_limits": {"failures_per_source": 100000, "failures_per_identity": 100000},
        "api": api_settings(),
    }
    with running_gateway(base, config) as harness:
        yield harness


def _bearer(gw: GatewayHarness, identity: str = "ci-deploy", ttl: str = "15m",
            connections: tuple[str, ...] | None = None,
            claims: dict[str, str] | None = None) -> tuple[str, str, datetime]:
    from pathwarden.config import parse_duration

    issued = gw.call(gw.gateway.authenticator.issue_token(
        identity, parse_duration(ttl), connections, claims=claims))
    return issued.token, issued.token_ref, issued.expires_at


def _post(gw: GatewayHarness, token: str | None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(gw.api_url() + "/v1/ssh/certificates", json=body, headers=headers,
                      timeout=10)


def test_api_issues_a_certificate_for_the_bearer_identity(gw: GatewayHarness,
                                                          tmp_path: Path) -> None:
    key = keygen(tmp_path)
    token, parent, _ = _bearer(gw, claims={"repository": "acme/shop"})
    response = _post(gw, token, public_key=pub(key), ttl="5m")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"certificate", "token_ref", "expires_at", "identity", "connections"}
    assert body["identity"] == "ci-deploy" and body["connections"] is None
    cert = tmp_path / "id_ed25519-cert.pub"
    cert.write_text(body["certificate"] + "\n")
    listing = keygen_list(cert)
    assert principals_of(listing) == ["ci-deploy"]
    assert f'Key ID: "pathwarden:{body["token_ref"]}"' in listing
    assert validity_of(listing)[1] == datetime.strptime(
        body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    record = gw.call(gw.gateway.store.token_status(body["token_ref"]))
    assert record is not None and record.identity == "ci-deploy"
    # The certificate's token inherits the bearer's claims and names the bearer token.
    assert record.claims["repository"] == "acme/shop"
    assert record.claims["issued_with"] == parent
    assert record.claims["ssh_key"].startswith("SHA256:")


def test_api_certificate_cannot_outlive_the_bearer_token(gw: GatewayHarness,
                                                         tmp_path: Path) -> None:
    key = keygen(tmp_path)
    token, _, bearer_expiry = _bearer(gw, ttl="2m")
    body = _post(gw, token, public_key=pub(key), ttl="20m").json()
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expires <= bearer_expiry
    assert expires > bearer_expiry - timedelta(seconds=5)
    # Without a ttl: the default (15m) is also cut at the bearer's expiry.
    body = _post(gw, token, public_key=pub(key)).json()
    assert datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC) <= bearer_expiry
    # Over the identity's cap: refused, as for tokens.
    long_token, _, _ = _bearer(gw, ttl="30m")
    over = _post(gw, long_token, public_key=pub(key), ttl="1h")
    assert over.status_code == 403 and over.json()["error"] == "not_allowed"
    assert "exceeds the 30m cap" in over.json()["message"]


def test_api_certificate_narrows_but_never_widens_the_scope(gw: GatewayHarness,
                                                            tmp_path: Path) -> None:
    key = keygen(tmp_path)
    scoped, ref, _ = _bearer(gw, connections=("shop-host",))
    inherited = _post(gw, scoped, public_key=pub(key)).json()
    assert inherited["connections"] == ["shop-host"]
    wider = _post(gw, scoped, public_key=pub(key), connections=["shop-host", "shop-db"])
    assert wider.status_code == 403 and wider.json()["error"] == "scope_not_allowed"
    assert f"token {ref} is scoped to shop-host" in wider.json()["message"]
    assert "cannot reach shop-db" in wider.json()["message"]
    unscoped, _, _ = _bearer(gw)
    narrowed = _post(gw, unscoped, public_key=pub(key), connections=["shop-db"]).json()
    assert narrowed["connections"] == ["shop-db"]
    outside = _post(gw, unscoped, public_key=pub(key), connections=["billing-host"])
    assert outside.status_code == 403 and outside.json()["error"] == "not_allowed"
    assert "may not use connection billing-host" in outside.json()["message"]


def test_api_refusals(gw: GatewayHarness, tmp_path: Path) -> None:
    key = keygen(tmp_path)
    token, ref, _ = _bearer(gw)
    missing = _post(gw, None, public_key=pub(key))
    assert missing.status_code == 401 and missing.json()["error"] == "missing_token"
    bad_key = _post(gw, token, public_key=key.read_text())
    assert bad_key.status_code == 400 and bad_key.json()["error"] == "invalid_request"
    assert bad_key.json()["message"].startswith("public_key: this is a private key")
    assert "PRIVATE KEY" not in bad_key.text  # the body is never echoed
    bad_ttl = _post(gw, token, public_key=pub(key), ttl="soon")
    assert bad_ttl.status_code == 400 and bad_ttl.json()["message"].startswith("ttl:")
    extra = _post(gw, token, public_key=pub(key), identity="ci-test")
    assert extra.status_code == 400
    gw.call(gw.gateway.store.revoke_token(ref, "done"))
    revoked = _post(gw, token, public_key=pub(key))
    assert revoked.status_code == 401 and revoked.json()["error"] == "revoked"


def test_cli_remote_issuing_through_the_api(gw: GatewayHarness, tmp_path: Path) -> None:
    key = keygen(tmp_path)
    token, _, bearer_expiry = _bearer(gw, ttl="10m", connections=("shop-host",))
    proc = cli("ssh", "cert", "--key", f"{key}.pub", "--gateway", gw.api_url(), "--ttl", "5m",
               env={"PATHWARDEN_TOKEN": token})
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stderr + proc.stdout
    cert = tmp_path / "id_ed25519-cert.pub"
    assert f"written to {cert}" in proc.stderr and "scope: shop-host" in proc.stderr
    listing = keygen_list(cert)
    assert principals_of(listing) == ["ci-deploy"]
    assert validity_of(listing)[1] <= bearer_expiry
    ref = re.search(r'Key ID: "pathwarden:([0-9a-f]{16})"', listing)
    assert ref and f"token {ref.group(1)}" in proc.stderr
    # The token on standard input, and the certificate on stdout.
    printed = cli("ssh", "cert", "--key", f"{key}.pub", "--gateway", gw.api_url(),
                  "--token", "-", "-o", "-", stdin=token + "\n")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("ssh-ed25519-cert-v01@openssh.com ")
    # Refusals of the gateway are reported with its reason.
    wider = cli("ssh", "cert", "--key", f"{key}.pub", "--gateway", gw.api_url(),
                "--connection", "shop-db", env={"PATHWARDEN_TOKEN": token})
    assert wider.returncode == 1 and "scope_not_allowed" in wider.stderr
    no_token = cli("ssh", "cert", "--key", f"{key}.pub", "--gateway", gw.api_url())
    assert no_token.returncode == 2 and "no token in $PATHWARDEN_TOKEN" in no_token.stderr
