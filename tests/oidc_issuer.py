"""A local OIDC issuer for tests: key pairs, a JWKS and a discovery document over real HTTP.

``OidcIssuer()`` starts a ThreadingHTTPServer on 127.0.0.1 (a daemon thread)
serving ``/.well-known/openid-configuration`` and ``/jwks``. It holds RSA, EC
and Ed25519 key pairs, can rotate and retire them, counts fetches, can play
dead (HTTP 503), and mints GitHub Actions- and GitLab CI-shaped tokens with
the claim sets those providers document, overridable per test (an override of
None removes the claim).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KeyKind = Literal["rsa", "ec", "ed25519"]
_ALGORITHMS: dict[KeyKind, str] = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class IssuerKey:
    kid: str
    kind: KeyKind
    private: Any
    algorithm: str

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        pem: bytes = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        entry: dict[str, Any] = json.loads(algorithm.to_jwk(self.public))
        entry.update({"kid": self.kid, "use": "sig", "alg": self.algorithm})
        return entry


def new_key(kind: KeyKind = "rsa", kid: str | None = None) -> IssuerKey:
    private: Any
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return IssuerKey(kid or secrets.token_hex(8), kind, private, _ALGORITHMS[kind])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        issuer = self.server.issuer
        path = self.path.split("?", 1)[0]
        with issuer.lock:
            if path == issuer.prefix + "/.well-known/openid-configuration":
                issuer.discovery_fetches += 1
                body: object = issuer.discovery_document()
            elif path == issuer.prefix + "/jwks":
                issuer.jwks_fetches += 1
                body = issuer.jwks_document()
            else:
                self.send_error(404)
                return
            available, cache_control = issuer.available, issuer.cache_control
        if not available:
            self.send_error(503)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if cache_control is not None:
            self.send_header("cache-control", cache_control)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    issuer: OidcIssuer


class OidcIssuer:
    """A running issuer at ``url``; call :meth:`stop` (or use :func:`running_issuer`)."""

    def __init__(self, *, prefix: str = "", kinds: tuple[KeyKind, ...] = ("rsa", "ec")) -> None:
        self.prefix = prefix
        self.lock = threading.Lock()
        self.keys: list[IssuerKey] = [new_key(kind) for kind in kinds]
        self.active = self.keys[0]
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.available = True
        self.cache_control: str | None = "public, max-age=600"
        self.jwks_override: dict[str, Any] | None = None
        self.discovery_override: dict[str, Any] | None = None
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.issuer = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{prefix}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- documents --------------------------------------------------------------------

    def discovery_document(self) -> dict[str, Any]:
        if self.discovery_override is not None:
            return self.discovery_override
        return {
            "issuer": self.url,
            "jwks_uri": self.jwks_url,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
        }

    def jwks_document(self) -> dict[str, Any]:
        if self.jwks_override is not None:
            return self.jwks_override
        return {"keys": [key.jwk() for key in self.keys]}

    # -- keys -------------------------------------------------------------------------

    def rotate(self, kind: KeyKind = "rsa", *, keep_old: bool = False) -> IssuerKey:
        """Publish a new active key; unless ``keep_old``, stop publishing the others."""
        key = new_key(kind)
        with self.lock:
            self.keys = [*self.keys, key] if keep_old else [key]
            self.active = key
        return key

    def key(self, kind: KeyKind) -> IssuerKey:
        return next(key for key in self.keys if key.kind == kind)

    # -- tokens -----------------------------------------------------------------------

    def github_claims(self, now: float, lifetime: float = 300, **overrides: Any) -> dict[str, Any]:
        """Claims as GitHub Actions puts them in a job's OIDC token (deploy to production)."""
        claims: dict[str, Any] = {
            "jti": secrets.token_hex(16),
            "sub": "repo:acme/shop:environment:production",
            "aud": "pathwarden",
            "ref": "refs/heads/main",
            "sha": "d6f5c3b2a1e0f9d8c7b6a5e4d3c2b1a0f9e8d7c6",
            "repository": "acme/shop",
            "repository_owner": "acme",
            "repository_owner_id": "1342004",
            "repository_id": "74328125",
            "repository_visibility": "private",
            "run_id": "8765432109",
            "run_number": "412",
            "run_attempt": "1",
            "runner_environment": "github-hosted",
            "actor": "octocat",
            "actor_id": "583231",
            "workflow": "deploy",
            "workflow_ref": "acme/shop/.github/workflows/deploy.yml@refs/heads/main",
            "workflow_sha": "d6f5c3b2a1e0f9d8c7b6a5e4d3c2b1a0f9e8d7c6",
            "job_workflow_ref": "acme/shop/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_sha": "d6f5c3b2a1e0f9d8c7b6a5e4d3c2b1a0f9e8d7c6",
            "head_ref": "",
            "base_ref": "",
            "event_name": "push",
            "ref_type": "branch",
            "ref_protected": "true",
            "environment": "production",
            "environment_node_id": "EN_kwDOKhTBxM8AAAABXoVfUg",
            "iss": self.url,
            "nbf": int(now) - 5,
            "iat": int(now),
            "exp": int(now + lifetime),
        }
        return _apply(claims, overrides)

    def gitlab_claims(self, now: float, lifetime: float = 300, **overrides: Any) -> dict[str, Any]:
        """Claims as GitLab CI puts them in an ``id_tokens`` token."""
        claims: dict[str, Any] = {
            "namespace_id": "72",
            "namespace_path": "acme",
            "project_id": "20",
            "project_path": "acme/shop",
            "user_id": "5",
            "user_login": "alice",
            "user_email": "alice@example.com",
            "user_access_level": "maintainer",
            "pipeline_id": "1212",
            "pipeline_source": "push",
            "job_id": "4431",
            "ref": "main",
            "ref_type": "branch",
            "ref_path": "refs/heads/main",
            "ref_protected": "true",
            "environment": "production",
            "environment_protected": "true",
            "deployment_tier": "production",
            "runner_id": 17,
            "runner_environment": "self-hosted",
            "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "project_visibility": "private",
            "ci_config_ref_uri": "gitlab.example.com/acme/shop//.gitlab-ci.yml@refs/heads/main",
            "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "jti": secrets.token_hex(16),
            "iss": self.url,
            "iat": int(now),
            "nbf": int(now) - 5,
            "exp": int(now + lifetime),
            "sub": "project_path:acme/shop:ref_type:branch:ref:main",
            "aud": "pathwarden",
        }
        return _apply(claims, overrides)

    def mint(
        self,
        claims: dict[str, Any],
        *,
        key: IssuerKey | None = None,
        algorithm: str | None = None,
        kid: str | None = "",
    ) -> str:
        """Sign ``claims``; ``kid=""`` means the signing key's id, None omits the header."""
        key = key or self.active
        headers: dict[str, Any] = {"typ": "JWT"}
        if kid is not None:
            headers["kid"] = kid or key.kid
        return jwt.encode(
            claims, key.private, algorithm=algorithm or key.algorithm, headers=headers
        )

    def github_token(self, now: float, lifetime: float = 300, **overrides: Any) -> str:
        return self.mint(self.github_claims(now, lifetime, **overrides))

    def gitlab_token(self, now: float, lifetime: float = 300, **overrides: Any) -> str:
        return self.mint(self.gitlab_claims(now, lifetime, **overrides))


def _apply(claims: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def forge_hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token whose HMAC secret is ``secret`` (PyJWT refuses PEM secrets, we do not)."""
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def unsigned(claims: dict[str, Any], kid: str | None = None, alg: str = "none") -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{b64json(header)}.{b64json(claims)}."


@contextmanager
def running_issuer(**kwargs: Any) -> Iterator[OidcIssuer]:
    issuer = OidcIssuer(**kwargs)
    try:
        yield issuer
    finally:
        issuer.stop()


class FakeClock:
    """UNIX seconds that move only when a test says so."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
