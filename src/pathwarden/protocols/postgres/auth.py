"""Client-side password authentication for the upstream leg, sans I/O.

SCRAM-SHA-256 follows RFC 5802/7677 as PostgreSQL implements it (documentation
section "SASL Authentication"): the user name in the client-first message is
empty (the server uses the startup packet's), no channel binding is offered
(``n,,``). The salted password is the expensive step (PBKDF2 with the server's
iteration count, 4096 by default); it is cached per (password, salt,
iterations) so reconnecting sessions pay it once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

from .errors import RemoteProtocolError

SCRAM_SHA_256 = "SCRAM-SHA-256"


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The response to AuthenticationMD5Password (``md5`` + hex, NUL-terminated)."""
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()  # noqa: S324
    outer = hashlib.md5(inner.encode() + salt).hexdigest()  # noqa: S324
    return b"md5" + outer.encode() + b"\0"


# PostgreSQL's default is 4096; a server asking for far more is either
# misconfigured or trying to stall the gateway (PBKDF2 runs per login).
MAX_ITERATIONS = 1_000_000


@lru_cache(maxsize=256)
def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA256: the expensive step, cached; callers may run it in a thread."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def server_first_parameters(server_first: bytes) -> tuple[str, bytes, int]:
    """(nonce, salt, iterations) of a server-first message; RemoteProtocolError if malformed."""
    try:
        text = server_first.decode("utf-8")
        attrs = dict(item.split("=", 1) for item in text.split(","))
        nonce = attrs["r"]
        salt = base64.b64decode(attrs["s"], validate=True)
        iterations = int(attrs["i"])
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed SCRAM server-first message ({exc})") from None
    if iterations < 1 or iterations > MAX_ITERATIONS:
        raise RemoteProtocolError(f"SCRAM iteration count {iterations} out of range "
                                  f"(1 to {MAX_ITERATIONS})")
    return nonce, salt, iterations


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class ScramClient:
    """One SCRAM-SHA-256 exchange; call the three steps in order."""

    def __init__(self, password: str, nonce: str | None = None) -> None:
        self._password = password
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._client_first_bare = f"n=,r={self._nonce}"
        self._server_signature: bytes | None = None

    def initial_response(self) -> bytes:
        """Payload of SASLInitialResponse: mechanism, length and client-first message."""
        first = ("n,," + self._client_first_bare).encode()
        return (SCRAM_SHA_256.encode() + b"\0" + len(first).to_bytes(4, "big") + first)

    def final_response(self, server_first: bytes) -> bytes:
        """Payload of SASLResponse for the server-first message."""
        nonce, salt, iterations = server_first_parameters(server_first)
        text = server_first.decode("utf-8")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise RemoteProtocolError("SCRAM server nonce does not extend the client nonce")
        salted = salted_password(self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{final_bare}".encode()
        client_sig = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig, strict=True))
        server_key = _hmac(salted, b"Server Key")
        self._server_signature = _hmac(server_key, auth_message)
        return f"{final_bare},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        """Check the server's signature; raises RemoteProtocolError if it is wrong."""
        if self._server_signature is None:
            raise RemoteProtocolError("SCRAM server-final received before server-first")
        text = server_final.decode("utf-8", "replace")
        if text.startswith("e="):
            raise RemoteProtocolError(f"SCRAM authentication failed: {text[2:]}")
        if not text.startswith("v="):
            raise RemoteProtocolError("malformed SCRAM server-final message")
        try:
            sig = base64.b64decode(text[2:].split(",", 1)[0], validate=True)
        except ValueError:
            raise RemoteProtocolError("malformed SCRAM server signature") from None
        if not hmac.compare_digest(sig, self._server_signature):
            raise RemoteProtocolError("SCRAM server signature mismatch: the upstream server "
                                      "does not know the configured password")
