"""``pathwarden ssh cert`` and ``pathwarden ssh ca``: SSH user certificates from the gateway's CA.

Theory of operation: a certificate is backed by a token record (see
:mod:`pathwarden.identity.ssh_ca`), so issuing one is issuing a token whose
secret is thrown away and whose key id and validity go into the certificate.

- **local** (``pathwarden ssh cert IDENTITY --key id_ed25519.pub``): on the
  gateway host, like ``token issue``: the configuration names the data
  directory (the CA key) and the store (the token record). Whoever can read
  them can issue.
- **remote** (``pathwarden ssh cert --key id_ed25519.pub --gateway URL``):
  what a pipeline runs. The pathwarden token in ``PATHWARDEN_TOKEN`` (or
  ``--token-env VAR``, or ``--token -`` on standard input) is the credential;
  the certificate is for the token's identity, inherits its claims and scope,
  and expires no later than the token.

Either way the certificate is written to ``<key>-cert.pub`` beside the key,
where ``ssh -i <key>`` finds it by itself (``-o -`` prints it instead), and
the path, token ref and expiry go to stderr. ``pathwarden ssh ca`` prints the
CA's public key line, for hosts that want to trust it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .common import DEFAULT_CONFIG, EXIT_USAGE, ConfigOpt, err, load, with_store
from .pipeline_cmd import (
    ENV_CACERT,
    ENV_GATEWAY,
    ENV_TOKEN,
    _api_url,
    _request,
    _verify,
    die,
)

__all__ = ["ssh_app"]

ssh_app = typer.Typer(no_args_is_help=True,
                      help="SSH user certificates signed by the gateway's SSH CA.")


def default_output(key: Path) -> Path:
    """``id_ed25519.pub`` -> ``id_ed25519-cert.pub``: where OpenSSH looks for the certificate."""
    stem = key.name[: -len(".pub")] if key.name.endswith(".pub") else key.name
    return key.with_name(stem + "-cert.pub")


def _read_key(key: Path) -> str:
    try:
        return key.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        die(f"--key {key}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)


def _write(output: Path, certificate: str) -> str:
    """Write the certificate line to ``output`` (``-``: stdout); what was written to."""
    if str(output) == "-":
        sys.stdout.write(certificate + "\n")
        sys.stdout.flush()
        return "standard output"
    temp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(certificate + "\n")
        os.replace(temp, output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        die(f"cannot write the certificate to {output}: {exc.strerror or exc}")
    return str(output)


def _report(where: str, body: dict[str, Any]) -> None:
    scope = body.get("connections")
    reach = ", ".join(map(str, scope)) if scope else "any allowed connection"
    err.print(escape(f"certificate for {body.get('identity')} written to {where}: token "
                     f"{body.get('token_ref')}, expires {body.get('expires_at')}, "
                     f"scope: {reach}"), highlight=False)


@ssh_app.command("cert")
def ssh_cert(
    ctx: typer.Context,
    key: Annotated[Path, typer.Option(
        "--key", help="The public key to certify (e.g. ~/.ssh/id_ed25519.pub).",
        show_default=False)],
    identity: Annotated[str | None, typer.Argument(
        help="On the gateway host: the identity to certify. Omit it with --gateway (the "
             "token's identity is certified).", show_default=False)] = None,
    ttl: Annotated[str | None, typer.Option(
        help="Lifetime, e.g. 15m (capped like tokens; remotely also by the token's "
             "remaining life).")] = None,
    connection: Annotated[list[str] | None, typer.Option(
        "--connection", help="Scope the certificate to this connection (repeatable).")
    ] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Where to write the certificate (default: <key>-cert.pub "
                               "beside the key; - prints it).", show_default=False)] = None,
    source_address: Annotated[list[str] | None, typer.Option(
        "--source-address", metavar="CIDR",
        help="Local issuing: accept the certificate only from this address or network "
             "(repeatable).")] = None,
    gateway: Annotated[str | None, typer.Option(
        "--gateway", envvar=ENV_GATEWAY, show_envvar=True,
        help="Remote issuing: the gateway's HTTP API base URL, such as "
             "https://gateway:15480.")] = None,
    token_env: Annotated[str, typer.Option(
        "--token-env", metavar="VAR",
        help="Remote issuing: the variable holding the pathwarden token.")] = ENV_TOKEN,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="-",
        help="Remote issuing: '-' reads the pathwarden token from standard input.")] = None,
    cacert: Annotated[Path | None, typer.Option(
        "--cacert", envvar=ENV_CACERT, show_envvar=True,
        help="Remote issuing: the gateway's certificate (self-signed) or its CA.")] = None,
    timeout: Annotated[float, typer.Option(
        help="Remote issuing: seconds to wait for the answer.")] = 30,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Get an SSH user certificate for a key, signed by the gateway's SSH CA.

    pathwarden ssh cert ci-deploy --key ~/.ssh/id_ed25519.pub --ttl 15m     (gateway host)

    pathwarden ssh cert --key id_ed25519.pub --gateway https://gw:15480     (pipeline)

    Then: ssh -i id_ed25519 shop-host@gw -p 2222 (OpenSSH picks up id_ed25519-cert.pub).
    """
    target = output if output is not None else default_output(key)
    remote = gateway is not None and identity is None
    source = ctx.get_parameter_source("gateway")
    if identity is not None and gateway is not None and (
            source is not None and source.name == "COMMANDLINE"):
        die("IDENTITY is for issuing on the gateway host; with --gateway the certificate is "
            "for the token's identity: drop one of them", EXIT_USAGE)
    if remote:
        if source_address:
            die("--source-address applies to issuing on the gateway host", EXIT_USAGE)
        assert gateway is not None
        body = _remote(gateway, key, ttl, connection, token_env, token, cacert, timeout)
    else:
        if identity is None:
            die("name the IDENTITY to certify (on the gateway host), or pass --gateway URL "
                f"(or set {ENV_GATEWAY}) to get a certificate for your token's identity",
                EXIT_USAGE)
        if token is not None:
            die("--token applies to remote issuing (--gateway)", EXIT_USAGE)
        body = _local(config, identity, key, ttl, connection, source_address)
    certificate = body.get("certificate")
    if not isinstance(certificate, str) or "-cert-v01@openssh.com " not in certificate:
        die("the gateway's answer holds no SSH certificate")
    _report(_write(target, certificate.strip()), body)


def _local(config: Path, identity: str, key: Path, ttl: str | None,
           connection: list[str] | None, source_address: list[str] | None) -> dict[str, Any]:
    from ..config import parse_duration
    from ..identity import (
        Authenticator,
        IssuedCertificate,
        IssueError,
        SigningKeyError,
        SshCaError,
        SshCertificateAuthority,
        SshKeyError,
        TokenAuthority,
    )
    from ..store import Store

    cfg = load(config)
    try:
        lifetime = parse_duration(ttl) if ttl else None
    except ValueError as exc:
        die(f"--ttl: {exc}", EXIT_USAGE)
    public_key = _read_key(key)
    data_dir = Path(cfg.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        authority = TokenAuthority.load_or_create(data_dir)
        ca = SshCertificateAuthority.load_or_create(data_dir)
    except (OSError, SigningKeyError, SshCaError) as exc:
        die(str(exc))

    async def go(store: Store) -> IssuedCertificate:
        auth = Authenticator(cfg, authority, store)
        return await auth.issue_ssh_certificate(
            ca, identity=identity, public_key=public_key, ttl=lifetime,
            connections=tuple(connection) if connection else None,
            source_address=source_address or None)

    try:
        issued = with_store(cfg, go)
    except SshKeyError as exc:
        die(f"--key {key}: {exc}", EXIT_USAGE)
    except IssueError as exc:
        die(str(exc))
    return {
        "certificate": issued.certificate,
        "token_ref": issued.token_ref,
        "identity": issued.identity,
        "expires_at": f"{issued.expires_at:%Y-%m-%dT%H:%M:%SZ}",
        "connections": list(issued.connections) if issued.connections is not None else None,
    }


def _remote(gateway: str, key: Path, ttl: str | None, connection: list[str] | None,
            token_env: str, token: str | None, cacert: Path | None,
            timeout: float) -> dict[str, Any]:
    from ..identity import SshKeyError
    from ..identity.ssh_ca import parse_user_public_key

    public_key = _read_key(key)
    try:
        parse_user_public_key(public_key)  # a clear answer before any network traffic
    except SshKeyError as exc:
        die(f"--key {key}: {exc}", EXIT_USAGE)
    if token is not None:
        if token != "-":  # noqa: S105 - the stdin marker
            die("--token takes only '-' (read the token from standard input): a token on "
                "the command line is visible in the process list; use --token-env", EXIT_USAGE)
        value = sys.stdin.readline().strip()
        if not value:
            die("--token -: standard input holds no token", EXIT_USAGE)
    else:
        value = os.environ.get(token_env, "").strip()
        if not value:
            die(f"no token in ${token_env}; get one with: export {token_env}=$(pathwarden "
                f"login --gateway URL --github) (or pass --token -)", EXIT_USAGE)
    request: dict[str, Any] = {"public_key": public_key.strip()}
    if ttl is not None:
        request["ttl"] = ttl
    if connection:
        request["connections"] = list(connection)
    return _request("POST", _api_url(gateway, "/v1/ssh/certificates"),
                    "the certificate request", _verify(cacert), timeout, json=request,
                    headers={"Authorization": f"Bearer {value}"})


@ssh_app.command("ca")
def ssh_ca(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Print the SSH CA's public key line (created on first use).

    A host that should accept these certificates directly trusts it with
    sshd's TrustedUserCAKeys; the gateway trusts it by itself.
    """
    from ..identity import SshCaError, SshCertificateAuthority

    cfg = load(config)
    try:
        ca = SshCertificateAuthority.load_or_create(Path(cfg.data_dir))
    except SshCaError as exc:
        die(str(exc))
    sys.stdout.write(ca.public_key_line() + "\n")


@ssh_app.command("host-key")
def ssh_host_key(
    config: ConfigOpt = DEFAULT_CONFIG,
    host: Annotated[str | None, typer.Option(
        help="the name clients use for the gateway (default: each ssh listener's address)")]
    = None,
) -> None:
    """Print a known_hosts line per ssh listener, for clients to pin the gateway.

    The key is the listener's host_key, or the one generated in the data
    directory (created here on first use, as the gateway would).
    """
    from ..config import ConfigError
    from ..ssh.keys import HOST_KEY_FILE, load_or_create_host_key

    cfg = load(config)
    listeners = [lc for lc in cfg.listeners if lc.protocol == "ssh"]
    if not listeners:
        die(f"{config}: no listener has protocol: ssh")
    for lc in listeners:
        path = Path(lc.host_key or Path(cfg.data_dir) / HOST_KEY_FILE)
        try:
            key = load_or_create_host_key(path)
        except ConfigError as exc:
            die(str(exc))
        name = host or lc.host
        where = name if lc.port == 22 else f"[{name}]:{lc.port}"
        sys.stdout.write(f"{where} {key.export_public_key().decode().strip()}\n")
