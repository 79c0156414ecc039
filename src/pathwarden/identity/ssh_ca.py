"""SSH user certificates signed by the gateway's own certificate authority.

Theory of operation: the gateway holds one Ed25519 CA key in
``<data_dir>/ssh_ca_ed25519`` (OpenSSH private key format, mode 0600,
created atomically on first use like the token signing key). A certificate it
signs is an ordinary OpenSSH user certificate:

- principals: exactly the identity it was issued to;
- key id: ``pathwarden:<token_ref>``: each certificate is backed by a token
  record in the store (the token itself is discarded), so ``pathwarden token
  revoke``, token expiry and ``pathwarden token list`` treat certificates
  exactly like tokens;
- validity: the token's (from 30 s before it was issued, for clocks that lag,
  to its expiry);
- extensions: ``permit-pty`` only (no agent, port or X11 forwarding permits,
  no user rc), and a ``source-address`` critical option when asked for.

Clients present the certificate to the gateway's SSH listener (``ssh -i key``
with ``key-cert.pub`` beside it). asyncssh checks the CA signature, the
certificate type, its validity window and ``source-address``, and the
client's signature with the certified key. asyncssh compares the SSH user name
with the principals, but the user name here is a connection name
(``shop-host``) or ``identity+connection``: :meth:`SshCertificateAuthority.trust_for`
therefore trusts the CA through an authorized-keys ``cert-authority`` line with
a ``principals=`` option naming the identity part (``*`` when the user name has
none), which makes asyncssh match principals against that instead of the user
name. asyncssh does not hand the certificate to the server object, so
:class:`CertificateLogin` wraps the connection's public key check: after
asyncssh accepted a signed certificate it reads key id, principals and
validity (:meth:`SshCertificateAuthority.read_certificate`) and asks pathwarden
(``Authenticator.authenticate_ssh_certificate``) whether the token behind it
is still good, for that connection, before the login succeeds.

Only ssh-ed25519, ECDSA (NIST P-256/384/521) and RSA keys of 2048 bits or more
are certified; certificates and other key types are refused with
:class:`SshKeyError`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pathwarden.identity.keyfiles import LooseKeyFile, create_secret_file, read_secret_file

if TYPE_CHECKING:
    from pathwarden.model import Identity

__all__ = [
    "CA_COMMENT",
    "CA_KEY_FILE",
    "KEY_ID_PREFIX",
    "MIN_RSA_BITS",
    "CertificateCheck",
    "CertificateLogin",
    "LoginName",
    "PresentedCertificate",
    "SshCaError",
    "SshCertificateAuthority",
    "SshKeyError",
    "key_id_for",
    "parse_login_name",
    "parse_user_public_key",
    "token_ref_of",
]

log = logging.getLogger(__name__)

CA_KEY_FILE = "ssh_ca_ed25519"
CA_COMMENT = "pathwarden-ca"
KEY_ID_PREFIX = "pathwarden:"
MIN_RSA_BITS = 2048
#: The longest public key line accepted (a 16384-bit RSA key is ~2.8 KB).
MAX_KEY_LINE = 8192
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "ssh-rsa")
_CERT_SUFFIX = "-cert-v01@openssh.com"
_TOKEN_REF = re.compile(r"[0-9a-f]{16}")
# A configured identity or connection name (pathwarden.config.names).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class SshCaError(Exception):
    """The CA key could not be read, created or trusted."""


class SshKeyError(ValueError):
    """A public key cannot be certified; the message says why and what to use instead."""


@dataclass(frozen=True, slots=True)
class PresentedCertificate:
    """What a client's certificate (signed by this CA) says."""

    key_id: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    serial: int
    key_fingerprint: str  # SHA256:... of the certified key, as ssh-keygen -l prints it

    @property
    def token_ref(self) -> str | None:
        return token_ref_of(self.key_id)


@dataclass(frozen=True, slots=True)
class LoginName:
    """An SSH user name: ``connection``, or ``identity+connection``."""

    identity: str | None
    connection: str


def key_id_for(token_ref: str) -> str:
    """The key id of the certificate backed by token ``token_ref``."""
    return KEY_ID_PREFIX + token_ref


def token_ref_of(key_id: str) -> str | None:
    """The token ref in a ``pathwarden:<ref>`` key id; None for any other key id."""
    if not key_id.startswith(KEY_ID_PREFIX):
        return None
    ref = key_id[len(KEY_ID_PREFIX):]
    return ref if _TOKEN_REF.fullmatch(ref) else None


def parse_login_name(username: str) -> LoginName | None:
    """``shop-host`` or ``ci-deploy+shop-host``; None when it is neither.

    Names hold only letters, digits, ``_``, ``.`` and ``-``, so ``+`` separates
    them unambiguously, and a user name that parses can go into an
    authorized-keys option without quoting problems.
    """
    identity, plus, connection = username.partition("+")
    if not plus:
        identity, connection = "", username
    elif not _NAME.fullmatch(identity):
        return None
    if not _NAME.fullmatch(connection):
        return None
    return LoginName(identity or None, connection)


def parse_user_public_key(text: str) -> asyncssh.SSHKey:
    """The one OpenSSH public key line in ``text`` (``ssh-ed25519 AAAA... comment``).

    Raises :class:`SshKeyError` for anything else: a certificate, a private
    key, several keys, a security-key (``sk-``) or DSA key, RSA under
    :data:`MIN_RSA_BITS` bits.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise SshKeyError("the public key is empty; pass the .pub file of an SSH key")
    if len(lines) > 1 or len(lines[0]) > MAX_KEY_LINE:
        if "PRIVATE KEY" in text:
            raise SshKeyError("this is a private key; pass its .pub file (the public key) "
                              "instead, and keep the private key where it is")
        raise SshKeyError("expected one OpenSSH public key line ('ssh-ed25519 AAAA... "
                          "comment'); this holds several lines or is too long")
    line = lines[0]
    algorithm = line.split()[0]
    if algorithm.endswith(_CERT_SUFFIX):
        raise SshKeyError(f"this is a certificate ({algorithm}), not a public key; pass the "
                          f"key's .pub file (the certificate is what you get back)")
    if algorithm not in _KEY_TYPES:
        raise SshKeyError(
            f"key type {algorithm[:40]!r} cannot be certified; use ssh-ed25519 (ssh-keygen "
            f"-t ed25519), ECDSA or RSA of {MIN_RSA_BITS} bits or more")
    try:
        checked = serialization.load_ssh_public_key(line.encode())
        key = asyncssh.import_public_key(line)
    except (ValueError, asyncssh.KeyImportError, UnsupportedAlgorithm):
        raise SshKeyError(f"the {algorithm} public key does not decode; pass the .pub file "
                          f"ssh-keygen wrote") from None
    if isinstance(checked, rsa.RSAPublicKey) and checked.key_size < MIN_RSA_BITS:
        raise SshKeyError(f"RSA key of {checked.key_size} bits is too weak; use ssh-keygen "
                          f"-t ed25519 (or RSA of {MIN_RSA_BITS} bits or more)")
    if key.get_algorithm() != algorithm:
        raise SshKeyError(f"the key says {algorithm} but holds a {key.get_algorithm()} key")
    return key


def _fingerprint(public_blob: bytes) -> str:
    digest = hashlib.sha256(public_blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("certificate times must be timezone-aware")
    return max(0, int(moment.timestamp()))


def _moment(value: int) -> datetime:
    # OpenSSH encodes "forever" as 2**64-1; datetime stops at year 9999.
    return datetime.fromtimestamp(min(value, 253402300799), UTC)


class SshCertificateAuthority:
    """Signs SSH user certificates with the gateway's Ed25519 CA key."""

    def __init__(self, private_key: asyncssh.SSHKey) -> None:
        if private_key.get_algorithm() != "ssh-ed25519":
            raise SshCaError(f"the SSH CA key is a {private_key.get_algorithm()} key, "
                             f"expected ssh-ed25519")
        self._key = private_key
        self._public = private_key.convert_to_public()
        self._public.set_comment(CA_COMMENT)
        self._public_blob = self._public.public_data

    # -- construction ---------------------------------------------------------

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SshCertificateAuthority:
        """Load ``<data_dir>/ssh_ca_ed25519``, creating it on first use.

        Creation is atomic and race-free: the key is written to a private temp
        file and hard-linked into place, which fails if another process got
        there first, in which case that process's key is loaded instead.
        """
        path = Path(data_dir) / CA_KEY_FILE
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SshCaError(f"cannot create directory {path.parent}: {exc.strerror}") from None
        if not path.exists():
            _create_key_file(path)
        return cls(_read_private_key(path))

    # -- what others need to know ---------------------------------------------

    @property
    def ca_public_key(self) -> asyncssh.SSHKey:
        """The CA's public key (what a host trusts with ``TrustedUserCAKeys``)."""
        return self._public

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self._public_blob)

    def public_key_line(self) -> str:
        """``ssh-ed25519 AAAA... pathwarden-ca`` (no newline)."""
        return self._public.export_public_key("openssh").decode("ascii").strip()

    def trust_for(self, username: str) -> asyncssh.SSHAuthorizedKeys | None:
        """What an SSH server trusts for certificate logins as ``username``.

        A ``cert-authority`` entry for this CA whose ``principals=`` option is
        the identity named in the user name (``*`` when it names only a
        connection), so that asyncssh checks principals against the identity
        rather than the whole user name. None when the user name is not a
        pathwarden login name: then no certificate is accepted.
        """
        login = parse_login_name(username)
        if login is None:
            return None
        principals = login.identity or "*"
        return asyncssh.SSHAuthorizedKeys(
            f'cert-authority,principals="{principals}" {self.public_key_line()}')

    # -- signing --------------------------------------------------------------

    def sign(
        self,
        user_key: asyncssh.SSHKey,
        *,
        identity: str,
        key_id: str,
        valid_after: datetime,
        valid_before: datetime,
        source_address: Sequence[str] | None = None,
    ) -> asyncssh.SSHCertificate:
        """A user certificate for ``user_key``: principal ``identity``, ``permit-pty`` only.

        ``source_address``: CIDR networks (``10.0.0.0/8``, ``192.0.2.7``) the
        certificate may be used from; None means anywhere.
        """
        if valid_before <= valid_after:
            raise ValueError("valid_before must be after valid_after")
        addresses: list[str] | None = None
        if source_address is not None:
            addresses = []
            for entry in source_address:
                try:
                    addresses.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
                except ValueError:
                    raise SshKeyError(f"source address {entry[:60]!r} is not an IP address "
                                      f"or network (CIDR, e.g. 10.1.0.0/16)") from None
            if not addresses:
                raise SshKeyError("source_address is empty; omit it to allow any address")
        return self._key.generate_user_certificate(
            user_key.convert_to_public(),
            key_id,
            serial=secrets.randbits(64),
            principals=[identity],
            valid_after=_epoch(valid_after),
            valid_before=_epoch(valid_before),
            source_address=addresses,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_port_forwarding=False,
            permit_pty=True,
            permit_user_rc=False,
        )

    # -- reading what a client presents ---------------------------------------

    def read_certificate(self, key_data: bytes) -> PresentedCertificate | None:
        """The fields of the OpenSSH user certificate ``key_data`` (the wire blob).

        None when ``key_data`` is not an OpenSSH certificate at all (a plain
        key); raises :class:`SshKeyError` for a certificate this CA did not
        sign, whose signature does not verify, or that is not a user
        certificate.
        """
        try:
            algorithm = _first_string(key_data)
        except ValueError:
            return None
        if not algorithm.endswith(_CERT_SUFFIX.encode()):
            return None
        line = algorithm + b" " + base64.b64encode(key_data)
        try:
            cert = serialization.load_ssh_public_identity(line)
        except (ValueError, UnsupportedAlgorithm):
            raise SshKeyError("the certificate does not decode") from None
        if not isinstance(cert, serialization.SSHCertificate):
            return None
        ca_blob = _blob_of(cert.signature_key())
        if ca_blob != self._public_blob:
            raise SshKeyError(f"the certificate was signed by {_fingerprint(ca_blob)}, not by "
                              f"this gateway's CA {self.fingerprint}")
        try:
            cert.verify_cert_signature()
        except InvalidSignature:
            raise SshKeyError("the certificate's signature does not verify") from None
        if cert.type is not serialization.SSHCertificateType.USER:
            raise SshKeyError("this is a host certificate, not a user certificate")
        try:
            key_id = cert.key_id.decode("utf-8")
            principals = tuple(p.decode("utf-8") for p in cert.valid_principals)
        except UnicodeDecodeError:
            raise SshKeyError("the certificate's key id or principals are not UTF-8") from None
        return PresentedCertificate(
            key_id=key_id,
            principals=principals,
            valid_after=_moment(cert.valid_after),
            valid_before=_moment(cert.valid_before),
            serial=cert.serial,
            key_fingerprint=_fingerprint(_blob_of(cert.public_key())),
        )


def _first_string(data: bytes) -> bytes:
    if len(data) < 4:
        raise ValueError("short")
    size = int.from_bytes(data[:4], "big")
    if size > 64 or len(data) < 4 + size:
        raise ValueError("not an algorithm name")
    return data[4 : 4 + size]


def _blob_of(key: serialization.SSHPublicKeyTypes) -> bytes:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


# -- plugging certificate logins into an asyncssh server -------------------------------------

#: Decides a certificate login: returns who logs in, or raises ``AuthError``.
CertificateCheck = Callable[[PresentedCertificate, LoginName], Awaitable["Identity"]]


class CertificateLogin:
    """Certificate logins for one asyncssh server connection.

    An :class:`asyncssh.SSHServer` creates one per connection and calls
    :meth:`attach` from ``connection_made`` and :meth:`begin_auth` from
    ``begin_auth``. ``check`` (typically a wrapper of
    ``Authenticator.authenticate_ssh_certificate`` that also counts failures)
    runs once the client proved it holds the certified key; a refusal
    (``AuthError``) fails that attempt and its message reaches the client as
    an authentication banner. After ``auth_completed``, :attr:`identity` and
    :attr:`certificate` say who logged in with which certificate (None when
    the login used another method).

    The server must not trust the CA any other way (``validate_ca_key``
    returning True, ``authorized_client_keys``): asyncssh would then compare
    the principals with the whole user name. Wiring, as in tests/test_ssh_ca.py::

        class Server(asyncssh.SSHServer):
            def __init__(self, gateway):
                self.certs = CertificateLogin(gateway.ssh_ca, self._check)
            def connection_made(self, conn):
                self.certs.attach(conn)
            def begin_auth(self, username):
                self.certs.begin_auth(username)
                return True
            async def _check(self, cert, login):
                return await authenticator.authenticate_ssh_certificate(
                    key_id=cert.key_id, principals=cert.principals,
                    valid_before=cert.valid_before, connection=login.connection,
                    user_identity=login.identity)
    """

    def __init__(self, ca: SshCertificateAuthority, check: CertificateCheck) -> None:
        self._ca = ca
        self._check = check
        self._conn: asyncssh.SSHServerConnection | None = None
        self.identity: Identity | None = None
        self.certificate: PresentedCertificate | None = None
        self.login: LoginName | None = None

    def attach(self, conn: asyncssh.SSHServerConnection) -> None:
        """Hook into ``conn``'s public key check (call from ``connection_made``)."""
        original = conn.validate_public_key

        async def validate_public_key(username: str, key_data: bytes, msg: bytes,
                                      signature: bytes) -> bool:
            if not await original(username, key_data, msg, signature):
                return False
            return await self._accepted(username, key_data, bool(msg))

        # asyncssh hands the presented certificate to nothing the server object
        # can override; wrapping the connection's own check is the one place
        # where the certificate (and whether asyncssh accepted it) is known.
        setattr(conn, "validate_public_key", validate_public_key)  # noqa: B010
        self._conn = conn

    def begin_auth(self, username: str) -> None:
        """Trust the CA for ``username`` (call from ``SSHServer.begin_auth``)."""
        if self._conn is None:
            raise RuntimeError("CertificateLogin.attach(conn) was not called")
        self._conn.set_authorized_keys(self._ca.trust_for(username))

    async def _accepted(self, username: str, key_data: bytes, signed: bool) -> bool:
        """Whether an attempt asyncssh accepted may log in (``signed``: key possession shown)."""
        try:
            cert = self._ca.read_certificate(key_data)
        except SshKeyError as exc:
            log.info("SSH certificate login as %s refused: %s", username, exc)
            return False
        if cert is None:
            return True  # a plain key the server itself accepted: not ours to decide
        login = parse_login_name(username)
        if login is None:
            return False
        if not signed:
            return True  # asyncssh asks whether the key would do; the check runs when signed
        from pathwarden.identity.authenticate import AuthError  # it imports this module

        try:
            identity = await self._check(cert, login)
        except AuthError as exc:
            self._banner(f"pathwarden: {exc}")
            return False
        except Exception:
            log.exception("SSH certificate login as %s failed (certificate %s)", username,
                          cert.key_id)
            self._banner("pathwarden: the gateway could not check the certificate; retry "
                         "in a moment")
            return False
        self.identity, self.certificate, self.login = identity, cert, login
        return True

    def _banner(self, text: str) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(OSError):
            self._conn.send_auth_banner(text.rstrip() + "\r\n")


# -- the key file -----------------------------------------------------------------------------


def _create_key_file(path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=CA_COMMENT)
    try:
        create_secret_file(path, key.export_private_key("openssh"))
    except OSError as exc:
        raise SshCaError(f"cannot create the SSH CA key {path}: {exc.strerror}") from None


def _read_private_key(path: Path) -> asyncssh.SSHKey:
    try:
        data = read_secret_file(path)
    except LooseKeyFile as exc:
        raise SshCaError(f"SSH CA key {exc}") from None
    except OSError as exc:
        raise SshCaError(f"cannot read the SSH CA key {path}: {exc.strerror}") from None
    try:
        key = asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError):
        raise SshCaError(
            f"{path} is not an unencrypted OpenSSH private key; move it aside to generate "
            f"a new CA (certificates issued so far will stop working, and hosts that trust "
            f"the old CA must be given the new one: pathwarden ssh ca)"
        ) from None
    if key.get_algorithm() != "ssh-ed25519":
        raise SshCaError(f"{path} holds a {key.get_algorithm()} key, expected ssh-ed25519")
    return key

