"""Specification of Authenticator: which (user, token, connection) triples get in, and why not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pathwarden.config import GatewayConfig, parse_config
from pathwarden.identity import Authenticator, AuthError, IssueError, TokenAuthority
from pathwarden.model import Identity
from pathwarden.store import SqlStore, TokenRecord, open_store

T = TypeVar("T")

CONFIG = """\
connections:
  test-db: {host: 127.0.0.1, database: test, user: app}
  prod-db: {host: 127.0.0.1, database: prod, user: app}
identities:
  ci-build: {groups: [ci, build], labels: {stage: build}}
  ci-test: {groups: [ci], max_token_ttl: 30m, connections: [test-db]}
  ci-short: {max_token_ttl: 10m}
  ci-long: {max_token_ttl: 7d}
tokens: {default_ttl: 15m, max_ttl: 2h}
"""


@dataclass
class Env:
    auth: Authenticator
    authority: TokenAuthority
    store: SqlStore


def run(tmp_path: Path, body: Callable[[Env], Awaitable[T]]) -> T:
    """Run ``body`` against a fresh SQLite store and a fresh signing key."""
    config: GatewayConfig = parse_config(CONFIG)
    authority = TokenAuthority.from_private_key(Ed25519PrivateKey.generate())

    async def main() -> T:
        store = await open_store(f"sqlite:///{tmp_path / 'pw.db'}")
        try:
            return await body(Env(Authenticator(config, authority, store), authority, store))
        finally:
            await store.close()

    return asyncio.run(main())


def refused(tmp_path: Path, body: Callable[[Env], Awaitable[object]]) -> AuthError:
    with pytest.raises(AuthError) as info:
        run(tmp_path, body)
    return info.value


# -- authenticate -----------------------------------------------------------------------


def test_valid_token_yields_the_configured_identity(tmp_path: Path) -> None:
    async def body(env: Env) -> tuple[Identity, str]:
        issued = await env.auth.issue_token("ci-build", claims={"run": "42"})
        who = await env.auth.authenticate(user="ci-build", token=issued.token, connection="test-db")
        return who, issued.token_ref

    who, ref = run(tmp_path, body)
    assert who.name == "ci-build"
    assert who.groups == ("ci", "build")
    assert dict(who.labels) == {"stage": "build"}
    assert dict(who.claims) == {"run": "42"}
    assert who.token_ref == ref


def test_invalid_token_is_refused_with_the_token_error(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.auth.authenticate(user="ci-build", token="hunter2", connection="test-db")

    error = refused(tmp_path, body)
    assert error.reason == "malformed"
    assert str(error) == "the password is not a pathwarden token"


def test_expired_token_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        past = datetime.now(UTC) - timedelta(hours=1)
        issued = await env.auth.issue_token("ci-test", timedelta(minutes=5), now=past)
        await env.auth.authenticate(user="ci-test", token=issued.token, connection="test-db")

    error = refused(tmp_path, body)
    assert error.reason == "expired"
    assert "issue a new one with: pathwarden token issue ci-test" in str(error)


def test_login_name_must_be_the_tokens_identity(tmp_path: Path) -> None:
    refs: list[str] = []

    async def body(env: Env) -> None:
        issued = await env.auth.issue_token("ci-test")
        refs.append(issued.token_ref)
        await env.auth.authenticate(user="ci-build", token=issued.token, connection="test-db")

    error = refused(tmp_path, body)
    assert error.reason == "identity_mismatch"
    assert str(error) == (
        f"token {refs[0]} was issued for ci-test, not ci-build; "
        "connect as user ci-test or issue a token for ci-build"
    )


def test_identity_removed_from_config_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        # Issued by the same key while "ci-gone" was still configured.
        issued = env.authority.issue("ci-gone", timedelta(minutes=5))
        await env.store.record_token(
            TokenRecord(issued.token_ref, "ci-gone", issued.issued_at, issued.expires_at)
        )
        await env.auth.authenticate(user="ci-gone", token=issued.token, connection="test-db")

    error = refused(tmp_path, body)
    assert error.reason == "unknown_identity"
    assert "identity ci-gone" in str(error)
    assert "is not configured on this gateway" in str(error)


def test_token_unknown_to_the_store_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        issued = env.authority.issue("ci-build", timedelta(minutes=5))  # never recorded
        await env.auth.authenticate(user="ci-build", token=issued.token, connection="test-db")

    error = refused(tmp_path, body)
    assert error.reason == "unknown_token"
    assert "not known to this gateway's store" in str(error)


def test_revoked_token_is_refused_saying_when_and_why(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        issued = await env.auth.issue_token("ci-build")
        await env.store.revoke_token(issued.token_ref, "leaked in a build log")
        await env.auth.authenticate(user="ci-build", token=issued.token, connection="test-db")

    error = refused(tmp_path, body)
    assert error.reason == "revoked"
    assert "was revoked at 20" in str(error)
    assert str(error).endswith("Z (leaked in a build log)")


def test_unknown_connection_lists_what_the_identity_may_use(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        issued = await env.auth.issue_token("ci-test")
        await env.auth.authenticate(user="ci-test", token=issued.token, connection="tset-db")

    error = refused(tmp_path, body)
    assert error.reason == "unknown_connection"
    assert str(error) == (
        "unknown connection 'tset-db' (the database name); available to ci-test: test-db"
    )


def test_connection_outside_the_tokens_scope_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        issued = await env.auth.issue_token("ci-build", connections=["test-db"])
        await env.auth.authenticate(user="ci-build", token=issued.token, connection="prod-db")

    error = refused(tmp_path, body)
    assert error.reason == "out_of_token_scope"
    assert "is scoped to test-db, not prod-db" in str(error)
    assert "pathwarden token issue ci-build --connection prod-db" in str(error)


def test_connection_not_allowed_for_the_identity_is_refused(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        issued = await env.auth.issue_token("ci-test")  # unscoped token, restricted identity
        await env.auth.authenticate(user="ci-test", token=issued.token, connection="prod-db")

    error = refused(tmp_path, body)
    assert error.reason == "not_allowed"
    assert str(error) == "identity ci-test may not use connection prod-db (allowed: test-db)"


def test_refusals_never_contain_the_token(tmp_path: Path) -> None:
    tokens: list[str] = []
    messages: list[str] = []

    async def body(env: Env) -> None:
        issued = await env.auth.issue_token("ci-test")
        tokens.append(issued.token)
        for user, connection in [("ci-build", "test-db"), ("ci-test", "x"), ("ci-test", "prod-db")]:
            try:
                await env.auth.authenticate(user=user, token=issued.token, connection=connection)
            except AuthError as exc:
                messages.append(str(exc))

    run(tmp_path, body)
    assert len(messages) == 3
    assert all(tokens[0] not in message for message in messages)


# -- issue_token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ("ci-build", timedelta(minutes=15)),  # tokens.default_ttl
        ("ci-short", timedelta(minutes=10)),  # capped by the identity's max_token_ttl
    ],
)
def test_default_lifetime(tmp_path: Path, identity: str, expected: timedelta) -> None:
    async def body(env: Env) -> timedelta:
        issued = await env.auth.issue_token(identity)
        return issued.expires_at - issued.issued_at

    assert run(tmp_path, body) == expected


def test_issued_token_is_recorded_without_the_token(tmp_path: Path) -> None:
    async def body(env: Env) -> tuple[str, TokenRecord | None]:
        issued = await env.auth.issue_token("ci-test", timedelta(minutes=20), ["test-db"])
        return issued.token, await env.store.token_status(issued.token_ref)

    token, record = run(tmp_path, body)
    assert record is not None
    assert record.identity == "ci-test"
    assert record.connections == ("test-db",)
    assert record.expires_at - record.issued_at == timedelta(minutes=20)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("pw.db*"))
    assert token.encode() not in stored
    assert token.split(".")[2].encode() not in stored  # not even the signature


@pytest.mark.parametrize(
    ("identity", "ttl", "problem"),
    [
        (
            "ci-test",
            timedelta(minutes=45),
            "requested lifetime 45m exceeds the 30m cap for ci-test "
            "(identities.ci-test.max_token_ttl); ask for 30m or less",
        ),
        (
            "ci-long",
            timedelta(hours=3),
            "requested lifetime 3h exceeds the 2h cap for ci-long (tokens.max_ttl); "
            "ask for 2h or less",
        ),
        ("ci-build", timedelta(0), "token lifetime must be positive"),
    ],
)
def test_lifetime_caps_are_enforced(
    tmp_path: Path, identity: str, ttl: timedelta, problem: str
) -> None:
    async def body(env: Env) -> None:
        await env.auth.issue_token(identity, ttl)

    with pytest.raises(IssueError) as info:
        run(tmp_path, body)
    assert str(info.value) == problem


@pytest.mark.parametrize(
    ("identity", "connections", "problem"),
    [
        ("ci-nobody", None, "unknown identity 'ci-nobody'; configured identities: ci-build"),
        ("ci-build", ["nope"], "unknown connection 'nope'; configured connections: prod-db"),
        ("ci-test", ["prod-db"], "identity ci-test may not use connection prod-db"),
        ("ci-build", [], "a scoped token needs at least one connection"),
    ],
)
def test_issue_refuses_what_the_config_does_not_allow(
    tmp_path: Path, identity: str, connections: list[str] | None, problem: str
) -> None:
    async def body(env: Env) -> list[TokenRecord]:
        with pytest.raises(IssueError) as info:
            await env.auth.issue_token(identity, connections=connections)
        assert problem in str(info.value)
        return await env.store.list_tokens(include_expired=True)

    assert run(tmp_path, body) == []  # nothing recorded for a refused request
