"""Specification of gateway tokens: signing key handling, issuing and verification."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pathwarden.identity import SigningKeyError, TokenAuthority, TokenError
from pathwarden.identity.tokens import KEY_FILE, _create_key_file

T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority.from_private_key(Ed25519PrivateKey.generate())


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def refusal(authority: TokenAuthority, token: str, now: datetime = T0) -> TokenError:
    with pytest.raises(TokenError) as info:
        authority.verify(token, now=now)
    assert token not in str(info.value) or len(token) < 8
    return info.value


# -- issue and verify ------------------------------------------------------------------


def test_issued_token_verifies_to_the_same_claims(authority: TokenAuthority) -> None:
    issued = authority.issue(
        "ci-test", timedelta(minutes=15), ["test-db"], {"repo": "org/app"}, now=T0
    )
    claims = authority.verify(issued.token, now=T0 + timedelta(minutes=1))

    assert claims.identity == issued.identity == "ci-test"
    assert claims.token_ref == issued.token_ref
    assert claims.issued_at == issued.issued_at == T0
    assert claims.expires_at == issued.expires_at == T0 + timedelta(minutes=15)
    assert claims.connections == issued.connections == ("test-db",)
    assert dict(claims.claims) == dict(issued.claims) == {"repo": "org/app"}


def test_token_is_an_eddsa_jwt_with_the_documented_claims(authority: TokenAuthority) -> None:
    issued = authority.issue("ci-build", timedelta(hours=1), now=T0)
    header = jwt.get_unverified_header(issued.token)
    payload = jwt.decode(issued.token, options={"verify_signature": False})

    assert header["alg"] == "EdDSA"
    assert header["kid"] == authority.key_id
    assert payload["iss"] == "pathwarden"
    assert payload["sub"] == "ci-build"
    assert payload["iat"] == payload["nbf"] == int(T0.timestamp())
    assert payload["exp"] == int(T0.timestamp()) + 3600
    assert len(base64.urlsafe_b64decode(payload["jti"] + "==")) == 16
    # Unscoped and claim-less tokens carry neither claim at all.
    assert "cns" not in payload
    assert "clm" not in payload


def test_token_ref_is_a_sha256_prefix_of_the_jti(authority: TokenAuthority) -> None:
    issued = authority.issue("ci", timedelta(minutes=5), now=T0)
    jti = jwt.decode(issued.token, options={"verify_signature": False})["jti"]
    assert issued.token_ref == hashlib.sha256(jti.encode()).hexdigest()[:16]


def test_each_token_is_unique(authority: TokenAuthority) -> None:
    refs = {authority.issue("ci", timedelta(minutes=5), now=T0).token_ref for _ in range(50)}
    assert len(refs) == 50


def test_issued_token_repr_hides_the_token(authority: TokenAuthority) -> None:
    issued = authority.issue("ci", timedelta(minutes=5), now=T0)
    assert issued.token not in repr(issued)
    assert issued.token_ref in repr(issued)


def test_issue_refuses_a_non_positive_ttl(authority: TokenAuthority) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        authority.issue("ci", timedelta(0), now=T0)


# -- time window -------------------------------------------------------------------------


def test_expired_token_is_refused_with_a_helpful_message(authority: TokenAuthority) -> None:
    issued = authority.issue("ci-test", timedelta(minutes=15), now=T0)
    error = refusal(authority, issued.token, now=T0 + timedelta(minutes=27))

    assert error.reason == "expired"
    assert str(error) == (
        f"token {issued.token_ref} expired at 2026-11-26T10:15:00Z (12 minutes ago); "
        "issue a new one with: pathwarden token issue ci-test"
    )


def test_thirty_seconds_of_clock_skew_are_tolerated(authority: TokenAuthority) -> None:
    issued = authority.issue("ci", timedelta(minutes=1), now=T0)
    end = T0 + timedelta(minutes=1)

    authority.verify(issued.token, now=end + timedelta(seconds=30))
    authority.verify(issued.token, now=T0 - timedelta(seconds=30))
    assert refusal(authority, issued.token, end + timedelta(seconds=31)).reason == "expired"
    early = refusal(authority, issued.token, T0 - timedelta(seconds=31))
    assert early.reason == "not_yet_valid"
    assert "not valid until 2026-11-26T10:00:00Z" in str(early)


def test_naive_now_is_a_programming_error(authority: TokenAuthority) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        authority.issue("ci", timedelta(minutes=1), now=datetime(2026, 1, 1))


# -- forgeries and garbage ----------------------------------------------------------


@pytest.mark.parametrize("garbage", ["", "hunter2", "a.b.c", "x" * 9000, "..", "a.b"])
def test_garbage_is_malformed(authority: TokenAuthority, garbage: str) -> None:
    assert refusal(authority, garbage).reason == "malformed"


def test_tampered_payload_fails_the_signature(authority: TokenAuthority) -> None:
    issued = authority.issue("ci-build", timedelta(minutes=5), now=T0)
    header, payload, signature = issued.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "ci-deploy"
    forged = f"{header}.{b64(claims)}.{signature}"

    assert refusal(authority, forged).reason == "bad_signature"


def test_token_from_another_gateway_is_an_unknown_key(authority: TokenAuthority) -> None:
    other = TokenAuthority.from_private_key(Ed25519PrivateKey.generate())
    token = other.issue("ci", timedelta(minutes=5), now=T0).token
    error = refusal(authority, token)
    assert error.reason == "unknown_key"
    assert "different gateway key" in str(error)


def test_other_key_posing_with_our_kid_fails_the_signature(authority: TokenAuthority) -> None:
    impostor = Ed25519PrivateKey.generate()
    payload = {"iss": "pathwarden", "sub": "ci", "iat": 0, "nbf": 0, "exp": 2**40, "jti": "x"}
    token = jwt.encode(payload, impostor, algorithm="EdDSA", headers={"kid": authority.key_id})
    assert refusal(authority, token).reason == "bad_signature"


def test_unsigned_token_is_refused(authority: TokenAuthority) -> None:
    payload = {"iss": "pathwarden", "sub": "ci", "iat": 0, "nbf": 0, "exp": 2**40, "jti": "x"}
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': authority.key_id})}.{b64(payload)}."
    error = refusal(authority, token)
    assert error.reason == "bad_signature"
    assert "only EdDSA tokens" in str(error)


def test_hmac_with_the_public_key_as_secret_is_refused(authority: TokenAuthority) -> None:
    # The classic algorithm-confusion forgery: HS256 keyed with the public key.
    payload = {"iss": "pathwarden", "sub": "ci", "iat": 0, "nbf": 0, "exp": 2**40, "jti": "x"}
    signing_input = f"{b64({'alg': 'HS256', 'kid': authority.key_id})}.{b64(payload)}"
    import hmac

    mac = hmac.new(authority.public_key_pem(), signing_input.encode(), "sha256").digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert refusal(authority, token).reason == "bad_signature"


def test_wrong_issuer_is_refused(authority: TokenAuthority) -> None:
    key = Ed25519PrivateKey.generate()
    mine = TokenAuthority.from_private_key(key)
    payload = {"iss": "someone", "sub": "ci", "iat": 0, "nbf": 0, "exp": 2**40, "jti": "x"}
    token = jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": mine.key_id})
    assert refusal(mine, token).reason == "wrong_issuer"


@pytest.mark.parametrize(
    "change",
    [
        {"jti": None},
        {"exp": None},
        {"sub": 5},
        {"exp": "tomorrow"},
        {"cns": "test-db"},
        {"clm": {"run": 5}},
    ],
)
def test_missing_or_mistyped_claims_are_malformed(change: dict[str, object]) -> None:
    key = Ed25519PrivateKey.generate()
    authority = TokenAuthority.from_private_key(key)
    payload: dict[str, object] = {
        "iss": "pathwarden",
        "sub": "ci",
        "iat": 0,
        "nbf": 0,
        "exp": 2**40,
        "jti": "x",
    }
    for name, value in change.items():
        if value is None:
            del payload[name]
        else:
            payload[name] = value
    token = jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": authority.key_id})
    assert refusal(authority, token).reason == "malformed"


# -- signing key on disk --------------------------------------------------------------


def test_key_is_created_private_and_reused(tmp_path: Path) -> None:
    first = TokenAuthority.load_or_create(tmp_path / "data")
    key_file = tmp_path / "data" / KEY_FILE

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    second = TokenAuthority.load_or_create(tmp_path / "data")
    assert second.key_id == first.key_id
    token = first.issue("ci", timedelta(minutes=5)).token
    assert second.verify(token).identity == "ci"
    assert [p.name for p in key_file.parent.iterdir()] == [key_file.name]  # no temp leftovers


def test_losing_a_creation_race_keeps_the_winners_key(tmp_path: Path) -> None:
    winner = TokenAuthority.load_or_create(tmp_path)
    key_file = tmp_path / KEY_FILE
    before = key_file.read_bytes()

    _create_key_file(key_file)  # a second process that saw no file a moment ago

    assert key_file.read_bytes() == before
    assert TokenAuthority.load_or_create(tmp_path).key_id == winner.key_id


def _key_id_in_new_process(data_dir: str) -> str:
    return TokenAuthority.load_or_create(Path(data_dir)).key_id


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=6) as pool:
        key_ids = set(pool.map(_key_id_in_new_process, [str(tmp_path)] * 12))
    assert len(key_ids) == 1


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    TokenAuthority.load_or_create(tmp_path)
    key_file = tmp_path / KEY_FILE
    os.chmod(key_file, 0o644)
    with pytest.raises(SigningKeyError) as info:
        TokenAuthority.load_or_create(tmp_path)
    assert str(info.value) == (
        f"token signing key {key_file} is accessible by other users (mode 0644); "
        f"run: chmod 600 {key_file}"
    )


def test_corrupt_key_file_is_explained(tmp_path: Path) -> None:
    key_file = tmp_path / KEY_FILE
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(b"not a key")
    key_file.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not a valid unencrypted PEM private key"):
        TokenAuthority.load_or_create(tmp_path)


def test_verify_only_authority_verifies_but_cannot_issue(authority: TokenAuthority) -> None:
    token = authority.issue("ci", timedelta(minutes=5), now=T0).token
    verifier = TokenAuthority.from_public_key(authority.public_key_pem())

    assert verifier.key_id == authority.key_id
    assert verifier.verify(token, now=T0).identity == "ci"
    with pytest.raises(SigningKeyError, match="can only verify"):
        verifier.issue("ci", timedelta(minutes=5))


def test_public_key_pem_of_another_type_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

    pem = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        TokenAuthority.from_public_key(pem)
