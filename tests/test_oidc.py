"""Specification of OIDC federation: which CI tokens become which identities, and why not.

Every test runs against a real HTTP issuer on 127.0.0.1 (tests/oidc_issuer.py);
times come from a fake clock shared by the exchange and its key cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import yaml
from pydantic import ValidationError

from oidc_issuer import FakeClock, OidcIssuer, forge_hs256, new_key, running_issuer, unsigned
from pathwarden.identity.oidc import (
    ExchangeError,
    ExchangeResult,
    JwksCache,
    OidcExchange,
    TrustIssuer,
)

T = TypeVar("T")
T0 = 1_900_000_000.0

DEPLOY_RULE = {
    "when": {
        "repository": "acme/shop",
        "ref": "refs/heads/main",
        "environment": "production",
        "job_workflow_ref": "acme/shop/.github/workflows/deploy.yml@*",
    },
    "identity": "ci-deploy",
    "ttl": "15m",
}
TEST_RULE = {"when": {"repository": "acme/shop"}, "identity": "ci-test", "ttl": "30m"}
GITHUB_KEPT = {
    "repository", "repository_owner", "ref", "sha", "environment", "workflow",
    "job_workflow_ref", "run_id", "run_attempt", "run_number", "actor", "event_name", "sub",
}  # fmt: skip
GITLAB_KEPT = {
    "project_path", "namespace_path", "ref", "ref_type", "ref_protected", "environment",
    "pipeline_id", "job_id", "sha", "user_login", "pipeline_source", "sub",
}  # fmt: skip


@pytest.fixture(scope="module")
def github() -> Iterator[OidcIssuer]:
    with running_issuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def gitlab() -> Iterator[OidcIssuer]:
    with running_issuer(prefix="/gitlab") as issuer:
        yield issuer


@pytest.fixture
def fresh() -> Iterator[OidcIssuer]:
    """An issuer of its own, for tests that rotate keys, count fetches or take it down."""
    with running_issuer() as issuer:
        yield issuer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def trust(source: OidcIssuer, /, **changes: Any) -> TrustIssuer:
    data: dict[str, Any] = {
        "name": "github",
        "issuer": source.url,
        "audience": "pathwarden",
        "provider": "github",
        "rules": [DEPLOY_RULE, TEST_RULE],
    }
    data.update(changes)
    return TrustIssuer.model_validate(data)


def gitlab_trust(issuer: OidcIssuer, **changes: Any) -> TrustIssuer:
    rules = [{"when": {"project_path": "acme/shop", "ref_protected": True}, "identity": "ci-deploy",
              "ttl": "10m"}]  # fmt: skip
    return trust(issuer, **{"name": "gitlab", "provider": "gitlab", "rules": rules, **changes})


class Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


def with_exchange(
    trusted: TrustIssuer | list[TrustIssuer],
    clock: FakeClock,
    body: Callable[[OidcExchange], Awaitable[T]],
    logs: Logs | None = None,
) -> T:
    """Run ``body`` with a fresh exchange (and key cache), capturing pathwarden's logs."""
    issuers = trusted if isinstance(trusted, list) else [trusted]
    handler = logs or Logs()
    logger = logging.getLogger("pathwarden")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    async def main() -> T:
        exchange = OidcExchange(issuers, clock=clock)
        try:
            return await body(exchange)
        finally:
            await exchange.aclose()

    try:
        return asyncio.run(main())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def accept(
    trusted: TrustIssuer | list[TrustIssuer], token: str, clock: FakeClock
) -> ExchangeResult:
    logs = Logs()
    result = with_exchange(trusted, clock, lambda ex: ex.exchange(token), logs)
    assert_secret(token, logs.text)
    return result


def assert_secret(token: str, *texts: str) -> None:
    """Neither the token nor any long part of it shows up in ``texts``."""
    parts = [part for part in (token, *token.split(".")) if len(part) >= 12]
    for text in texts:
        for part in parts:
            assert part not in text


def refuse(
    trusted: TrustIssuer | list[TrustIssuer], token: str, clock: FakeClock, check: str
) -> ExchangeError:
    logs = Logs()
    with pytest.raises(ExchangeError) as info:
        with_exchange(trusted, clock, lambda ex: ex.exchange(token), logs)
    assert info.value.check == check, str(info.value)
    assert f"({check})" in str(info.value)
    assert_secret(token, str(info.value), logs.text)
    return info.value


# -- accepted tokens: rules --------------------------------------------------------------


def test_deploy_job_on_main_in_production_gets_the_first_rule(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0, lifetime=3600)

    result = accept(trust(github), token, clock)

    assert (result.issuer_name, result.identity, result.rule_number) == ("github", "ci-deploy", 1)
    assert result.ttl == timedelta(minutes=15)


def test_rules_are_tried_in_order_and_the_first_match_wins(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0, lifetime=3600)

    result = accept(trust(github, rules=[TEST_RULE, DEPLOY_RULE]), token, clock)

    assert (result.identity, result.rule_number) == ("ci-test", 1)


def test_a_feature_branch_falls_through_to_the_broader_rule(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0, lifetime=3600, ref="refs/heads/feature/x")

    result = accept(trust(github), token, clock)

    assert (result.identity, result.rule_number) == ("ci-test", 2)
    assert result.ttl == timedelta(minutes=30)


def test_glob_conditions_match_any_workflow_ref_but_not_another_workflow(
    github: OidcIssuer, clock: FakeClock
) -> None:
    tagged = github.github_token(
        T0, job_workflow_ref="acme/shop/.github/workflows/deploy.yml@refs/tags/v1.2.0"
    )
    other = github.github_token(
        T0, job_workflow_ref="acme/shop/.github/workflows/test.yml@refs/heads/main"
    )

    assert accept(trust(github), tagged, clock).identity == "ci-deploy"
    assert accept(trust(github), other, clock).identity == "ci-test"


def test_a_list_condition_matches_any_of_its_values(github: OidcIssuer, clock: FakeClock) -> None:
    rule = {"when": {"repository": "acme/shop", "environment": ["staging", "production"]},
            "identity": "ci-deploy", "ttl": "15m"}  # fmt: skip
    trusted = trust(github, rules=[rule, TEST_RULE])

    assert accept(trusted, github.github_token(T0, environment="staging"), clock).rule_number == 1
    assert accept(trusted, github.github_token(T0, environment="dev"), clock).rule_number == 2


def test_a_missing_claim_never_matches_not_even_a_bare_wildcard(
    github: OidcIssuer, clock: FakeClock
) -> None:
    rule = {"when": {"repository": "acme/shop", "environment": "*"}, "identity": "ci-deploy",
            "ttl": "15m"}  # fmt: skip
    trusted = trust(github, rules=[rule, TEST_RULE])
    token = github.github_token(T0, environment=None)

    assert accept(trusted, token, clock).identity == "ci-test"


def test_non_string_claims_are_compared_by_their_json_form(
    gitlab: OidcIssuer, clock: FakeClock
) -> None:
    rule = {"when": {"project_path": "acme/*", "runner_id": 17}, "identity": "ci-build",
            "ttl": "5m"}  # fmt: skip
    trusted = gitlab_trust(gitlab, rules=[rule])

    result = accept(trusted, gitlab.gitlab_token(T0), clock)

    assert result.identity == "ci-build"
    assert result.claims["runner_id"] == "17"


# -- accepted tokens: lifetime and claims ------------------------------------------------


def test_ttl_is_the_remaining_life_of_the_provider_token_when_shorter(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0, lifetime=300)
    clock.advance(100.4)

    assert accept(trust(github), token, clock).ttl == timedelta(seconds=199)


def test_ttl_is_the_rule_ttl_when_the_token_lives_longer(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0, lifetime=7200)

    assert accept(trust(github), token, clock).ttl == timedelta(minutes=15)


def test_github_tokens_keep_the_pipeline_identifying_claims(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0)

    claims = dict(accept(trust(github), token, clock).claims)

    assert set(claims) == GITHUB_KEPT
    assert claims["repository"] == "acme/shop"
    assert claims["sub"] == "repo:acme/shop:environment:production"
    assert claims["run_id"] == "8765432109"


def test_gitlab_tokens_keep_the_pipeline_identifying_claims(
    gitlab: OidcIssuer, clock: FakeClock
) -> None:
    result = accept(gitlab_trust(gitlab), gitlab.gitlab_token(T0), clock)

    assert result.identity == "ci-deploy"
    assert set(result.claims) == GITLAB_KEPT
    assert result.claims["project_path"] == "acme/shop"
    assert result.claims["ref_protected"] == "true"


def test_generic_tokens_keep_sub_and_the_claims_the_rule_tested(
    github: OidcIssuer, clock: FakeClock
) -> None:
    rule = {"when": {"repository_owner": "acme", "workflow": "deploy"}, "identity": "ci-deploy",
            "ttl": "5m"}  # fmt: skip
    trusted = trust(github, provider="generic", rules=[rule])

    claims = dict(accept(trusted, github.github_token(T0), clock).claims)

    assert claims == {
        "sub": "repo:acme/shop:environment:production",
        "repository_owner": "acme",
        "workflow": "deploy",
    }


# -- accepted tokens: keys ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec", "ed25519"])
def test_ec_and_eddsa_keys_verify(kind: str, fresh: OidcIssuer, clock: FakeClock) -> None:
    fresh.rotate(kind, keep_old=True)  # type: ignore[arg-type]

    assert accept(trust(fresh), fresh.github_token(T0), clock).identity == "ci-deploy"


def test_a_token_without_kid_uses_the_only_key_of_its_type(
    github: OidcIssuer, clock: FakeClock
) -> None:
    # The issuer publishes one RSA and one EC key: an RS256 token can only mean the RSA one.
    token = github.mint(github.github_claims(T0), kid=None)

    assert accept(trust(github), token, clock).identity == "ci-deploy"


def test_a_token_without_kid_is_refused_when_several_keys_could_fit(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    fresh.rotate("rsa", keep_old=True)
    token = fresh.mint(fresh.github_claims(T0), kid=None)

    error = refuse(trust(fresh), token, clock, "unknown_key")
    assert "no key id" in str(error)


def test_keys_are_found_by_discovery_and_cached(fresh: OidcIssuer, clock: FakeClock) -> None:
    async def body(exchange: OidcExchange) -> None:
        for _ in range(3):
            await exchange.exchange(fresh.github_token(T0))

    with_exchange(trust(fresh), clock, body)

    assert (fresh.discovery_fetches, fresh.jwks_fetches) == (1, 1)


def test_a_configured_jwks_url_skips_discovery(fresh: OidcIssuer, clock: FakeClock) -> None:
    accept(trust(fresh, jwks_url=fresh.jwks_url), fresh.github_token(T0), clock)

    assert (fresh.discovery_fetches, fresh.jwks_fetches) == (0, 1)


@pytest.mark.parametrize(
    ("cache_control", "fresh_for", "stale_at"),
    [
        ("public, max-age=600", 599, 601),
        (None, 599, 601),  # default 10 minutes
        ("max-age=5", 59, 61),  # at least a minute
        ("no-store", 59, 61),
        ("max-age=86400", 3599, 3601),  # at most an hour
    ],
)
def test_keys_are_refetched_when_the_cache_control_max_age_bounded_to_1m_1h_passes(
    fresh: OidcIssuer, clock: FakeClock, cache_control: str | None, fresh_for: int, stale_at: int
) -> None:
    fresh.cache_control = cache_control
    token = fresh.github_token(T0, lifetime=7200)

    async def body(exchange: OidcExchange) -> list[int]:
        counts = []
        for moment in (0, fresh_for, stale_at):
            clock.now = T0 + moment
            await exchange.exchange(token)
            counts.append(fresh.jwks_fetches)
        return counts

    assert with_exchange(trust(fresh), clock, body) == [1, 1, 2]


# -- refusals ----------------------------------------------------------------------------


def test_a_token_from_an_untrusted_issuer_is_refused(github: OidcIssuer, clock: FakeClock) -> None:
    token = github.github_token(T0, iss="https://token.evil.example.com")

    error = refuse(trust(github), token, clock, "unknown_issuer")
    assert "https://token.evil.example.com" in str(error)


def test_the_issuer_must_match_exactly(github: OidcIssuer, clock: FakeClock) -> None:
    token = github.github_token(T0, iss=github.url + "/")

    refuse(trust(github), token, clock, "issuer")


@pytest.mark.parametrize("aud", ["sts.amazonaws.com", ["other", "another"], None])
def test_a_token_for_another_audience_is_refused(
    github: OidcIssuer, clock: FakeClock, aud: object
) -> None:
    error = refuse(trust(github), github.github_token(T0, aud=aud), clock, "audience")
    assert "audience" in str(error)


def test_an_audience_list_containing_ours_is_accepted(github: OidcIssuer, clock: FakeClock) -> None:
    token = github.github_token(T0, aud=["sts.amazonaws.com", "pathwarden"])

    assert accept(trust(github), token, clock).identity == "ci-deploy"


def test_an_expired_token_is_refused_without_clock_skew(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0, lifetime=300)
    clock.advance(300)

    error = refuse(trust(github), token, clock, "expired")
    assert "request a fresh token" in str(error)


def test_a_token_with_less_than_a_second_left_is_refused(
    github: OidcIssuer, clock: FakeClock
) -> None:
    token = github.github_token(T0, lifetime=300)
    clock.advance(299.5)

    refuse(trust(github), token, clock, "expired")


def test_a_token_without_exp_is_refused(github: OidcIssuer, clock: FakeClock) -> None:
    refuse(trust(github), github.github_token(T0, exp=None), clock, "malformed")


def test_not_before_allows_the_clock_skew_and_no_more(github: OidcIssuer, clock: FakeClock) -> None:
    within = github.github_token(T0, nbf=int(T0) + 50, iat=int(T0))
    beyond = github.github_token(T0, nbf=int(T0) + 120, iat=int(T0))

    assert accept(trust(github), within, clock).identity == "ci-deploy"
    error = refuse(trust(github), beyond, clock, "not_yet_valid")
    assert "check the clocks" in str(error)


def test_a_token_issued_in_the_future_is_refused(github: OidcIssuer, clock: FakeClock) -> None:
    token = github.github_token(T0, nbf=None, iat=int(T0) + 120)

    refuse(trust(github), token, clock, "issued_in_future")
    assert accept(trust(github, clock_skew="3m"), token, clock).identity == "ci-deploy"


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    github: OidcIssuer, clock: FakeClock
) -> None:
    impostor = new_key("rsa", kid=github.key("rsa").kid)

    refuse(trust(github), github.mint(github.github_claims(T0), key=impostor), clock, "signature")


def test_a_tampered_token_is_refused(github: OidcIssuer, clock: FakeClock) -> None:
    header, _, signature = github.github_token(T0).split(".")
    forged_claims = github.mint(github.github_claims(T0, repository="acme/vault")).split(".")[1]

    refuse(trust(github), f"{header}.{forged_claims}.{signature}", clock, "signature")


def test_a_token_with_an_unknown_kid_is_refused(github: OidcIssuer, clock: FakeClock) -> None:
    token = github.mint(github.github_claims(T0), kid="no-such-key")

    error = refuse(trust(github), token, clock, "unknown_key")
    assert "'no-such-key'" in str(error)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_tokens_are_refused(github: OidcIssuer, clock: FakeClock, alg: str) -> None:
    token = unsigned(github.github_claims(T0), kid=github.key("rsa").kid, alg=alg)

    refuse(trust(github), token, clock, "algorithm")


def test_hs256_signed_with_the_public_key_pem_is_refused(
    github: OidcIssuer, clock: FakeClock
) -> None:
    key = github.key("rsa")
    token = forge_hs256(github.github_claims(T0), key.public_pem(), key.kid)

    error = refuse(trust(github), token, clock, "algorithm")
    assert "'HS256'" in str(error)


def test_an_algorithm_outside_the_issuers_allow_list_is_refused(
    github: OidcIssuer, clock: FakeClock
) -> None:
    refuse(trust(github, algorithms=["ES256"]), github.github_token(T0), clock, "algorithm")


def test_an_algorithm_that_does_not_fit_the_key_is_refused(
    github: OidcIssuer, clock: FakeClock
) -> None:
    # Signed with the EC key but naming the RSA key: ES256 with an RSA key must not verify.
    claims = github.github_claims(T0)
    token = github.mint(claims, key=github.key("ec"), kid=github.key("rsa").kid)

    error = refuse(trust(github), token, clock, "algorithm")
    assert "not a key for ES256" in str(error)


def test_a_token_matching_no_rule_is_refused(github: OidcIssuer, clock: FakeClock) -> None:
    token = github.github_token(T0, repository="acme/other", sub="repo:acme/other:ref:main")

    error = refuse(trust(github), token, clock, "no_matching_rule")
    assert "repo:acme/other:ref:main" in str(error)
    assert "2 rules" in str(error)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiAx.c2ln",  # iss is a number
        "eyJhbGciOiJSUzI1NiJ9.W10.c2ln",  # claims are a list
        "e30.e30.e30.e30",
    ],
)
def test_malformed_tokens_are_refused(github: OidcIssuer, clock: FakeClock, token: str) -> None:
    refuse(trust(github), token, clock, "malformed")


def test_oversize_tokens_are_refused_before_any_key_lookup(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    token = fresh.github_token(T0, padding="x" * 16 * 1024)

    error = refuse(trust(fresh), token, clock, "too_large")
    assert "16384 bytes" in str(error)
    assert fresh.jwks_fetches == fresh.discovery_fetches == 0


def test_a_down_jwks_server_refuses_tokens_when_no_keys_were_ever_fetched(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    fresh.available = False

    error = refuse(trust(fresh), fresh.github_token(T0), clock, "jwks_unavailable")
    assert "HTTP 503" in str(error)


def test_a_stopped_jwks_server_refuses_tokens_when_no_keys_were_ever_fetched(
    clock: FakeClock,
) -> None:
    issuer = OidcIssuer()
    trusted = trust(issuer)
    token = issuer.github_token(T0)
    issuer.stop()

    refuse(trusted, token, clock, "jwks_unavailable")


def test_a_down_jwks_server_is_not_retried_more_than_every_30_seconds(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    fresh.available = False
    token = fresh.github_token(T0, lifetime=3600)

    async def body(exchange: OidcExchange) -> list[str]:
        checks = []
        for moment in (0, 10, 29, 31):
            clock.now = T0 + moment
            try:
                await exchange.exchange(token)
            except ExchangeError as exc:
                checks.append(exc.check)
            if moment == 29:
                fresh.available = True
        return checks

    assert with_exchange(trust(fresh), clock, body) == ["jwks_unavailable"] * 3
    assert fresh.discovery_fetches == 2


def test_cached_keys_keep_serving_while_the_jwks_server_is_down(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    token = fresh.github_token(T0, lifetime=3600)
    logs = Logs()

    async def body(exchange: OidcExchange) -> ExchangeResult:
        await exchange.exchange(token)
        fresh.available = False
        clock.advance(700)  # past the 10-minute cache lifetime
        return await exchange.exchange(token)

    result = with_exchange(trust(fresh, jwks_url=fresh.jwks_url), clock, body, logs)

    assert result.identity == "ci-deploy"
    assert fresh.jwks_fetches == 2
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert any("still using the 2 cached" in w and "HTTP 503" in w for w in warnings)
    assert_secret(token, logs.text)


def test_the_discovery_document_must_name_the_same_issuer(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    fresh.discovery_override = {"issuer": "https://elsewhere.example", "jwks_uri": fresh.jwks_url}

    error = refuse(trust(fresh), fresh.github_token(T0), clock, "jwks_unavailable")
    assert "names issuer 'https://elsewhere.example'" in str(error)


def test_a_discovery_document_pointing_at_plain_http_elsewhere_is_refused(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    fresh.discovery_override = {"issuer": fresh.url, "jwks_uri": "http://keys.example.com/jwks"}

    error = refuse(trust(fresh), fresh.github_token(T0), clock, "jwks_unavailable")
    assert "plain http" in str(error)
    assert fresh.jwks_fetches == 0


def test_shared_secret_and_private_jwks_entries_are_ignored(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    key = fresh.key("rsa")
    secret = {"kty": "oct", "kid": key.kid, "k": "c2VjcmV0", "alg": "HS256"}
    fresh.jwks_override = {"keys": [secret]}
    token = forge_hs256(fresh.github_claims(T0), b"secret", key.kid)

    refuse(trust(fresh, algorithms=["RS256"]), token, clock, "algorithm")
    refuse(trust(fresh), fresh.github_token(T0), clock, "unknown_key")


# -- key rotation ------------------------------------------------------------------------


def test_rotated_keys_are_picked_up_and_removed_keys_stop_verifying(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    old_token = fresh.github_token(T0, lifetime=3600)

    async def body(exchange: OidcExchange) -> list[str]:
        outcomes = []
        await exchange.exchange(old_token)
        fresh.rotate("rsa")  # the old key is no longer published
        clock.advance(31)
        for token in (fresh.github_token(clock.now), old_token):
            try:
                outcomes.append((await exchange.exchange(token)).identity)
            except ExchangeError as exc:
                outcomes.append(exc.check)
        return outcomes

    assert with_exchange(trust(fresh), clock, body) == ["ci-deploy", "unknown_key"]
    assert fresh.jwks_fetches == 2


def test_unknown_kids_refetch_the_jwks_at_most_once_per_30_seconds(
    fresh: OidcIssuer, clock: FakeClock
) -> None:
    async def body(exchange: OidcExchange) -> list[int]:
        counts = []
        for step in range(6):
            clock.now = T0 + step * 10
            for attempt in range(5):
                token = fresh.mint(fresh.github_claims(clock.now), kid=f"garbage-{step}-{attempt}")
                with pytest.raises(ExchangeError) as info:
                    await exchange.exchange(token)
                assert info.value.check == "unknown_key"
            counts.append(fresh.jwks_fetches)
        return counts

    # t=0 first fetch, t=30 one refetch, then nothing until t=60.
    assert with_exchange(trust(fresh), clock, body) == [1, 1, 1, 2, 2, 2]


def test_concurrent_logins_share_one_jwks_fetch(fresh: OidcIssuer, clock: FakeClock) -> None:
    tokens = [fresh.github_token(T0) for _ in range(20)]

    async def body(exchange: OidcExchange) -> list[ExchangeResult]:
        return await asyncio.gather(*(exchange.exchange(token) for token in tokens))

    results = with_exchange(trust(fresh), clock, body)

    assert {result.identity for result in results} == {"ci-deploy"}
    assert fresh.jwks_fetches == 1


def test_one_key_cache_serves_several_exchanges(fresh: OidcIssuer, clock: FakeClock) -> None:
    async def main() -> int:
        cache = JwksCache(clock=clock)
        try:
            for _ in range(2):
                exchange = OidcExchange([trust(fresh)], jwks=cache, clock=clock)
                await exchange.exchange(fresh.github_token(T0))
                await exchange.aclose()  # does not close a cache it was given
            return fresh.jwks_fetches
        finally:
            await cache.aclose()

    assert asyncio.run(main()) == 1


def test_an_issuer_listed_twice_is_a_configuration_error(github: OidcIssuer) -> None:
    with pytest.raises(ValueError, match="listed twice"):
        OidcExchange([trust(github), trust(github, name="again", issuer=github.url + "/")])


# -- configuration -----------------------------------------------------------------------

EXAMPLE = """\
trust:
  - name: github
    issuer: https://token.actions.githubusercontent.com
    audience: pathwarden
    rules:
      - when: {repository: acme/shop, ref: refs/heads/main, environment: production,
               job_workflow_ref: "acme/shop/.github/workflows/deploy.yml@*"}
        identity: ci-deploy
        ttl: 15m
      - when: {repository: acme/shop}
        identity: ci-test
        ttl: 30m
"""


def test_the_documented_example_configuration_loads() -> None:
    (github,) = [TrustIssuer.model_validate(item) for item in yaml.safe_load(EXAMPLE)["trust"]]

    assert github.provider == "github"
    assert github.jwks_url is None
    assert github.well_known_url() == (
        "https://token.actions.githubusercontent.com/.well-known/openid-configuration"
    )
    assert github.algorithms == ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
    assert github.clock_skew == timedelta(seconds=60)
    assert [rule.ttl for rule in github.rules] == [timedelta(minutes=15), timedelta(minutes=30)]
    assert github.rules[1].when == {"repository": "acme/shop"}
    with pytest.raises(ValidationError):
        github.audience = "other"


@pytest.mark.parametrize(
    ("issuer", "provider"),
    [
        ("https://token.actions.githubusercontent.com", "github"),
        ("https://gitlab.com", "gitlab"),
        ("https://gitlab.example.com", "gitlab"),
        ("https://ci.example.com/oidc", "generic"),
    ],
)
def test_the_provider_is_guessed_from_the_issuer(issuer: str, provider: str) -> None:
    rule = {"when": {"repository": "acme/x", "project_path": "acme/x", "sub": "x"},
            "identity": "ci-test", "ttl": "5m"}  # fmt: skip
    data = {"name": "ci", "issuer": issuer, "audience": "pw", "rules": [rule]}

    assert TrustIssuer.model_validate(data).provider == provider


def config_error(**changes: Any) -> str:
    data: dict[str, Any] = {
        "name": "ci",
        "issuer": "https://ci.example.com",
        "audience": "pathwarden",
        "rules": [{"when": {"sub": "x"}, "identity": "ci-test", "ttl": "5m"}],
    }
    data.update(changes)
    with pytest.raises(ValidationError) as info:
        TrustIssuer.model_validate(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://ci.example.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080/issuer", True),
        ("http://[::1]:8080", True),
        ("http://ci.example.com", False),
        ("ftp://ci.example.com", False),
        ("ci.example.com", False),
        ("https://user:pw@ci.example.com", False),
        ("https://ci.example.com?x=1", False),
        ("https://ci.example.com:notaport", False),
    ],
)
def test_issuer_and_jwks_urls_must_be_https_except_on_loopback(url: str, accepted: bool) -> None:
    rules = [{"when": {"sub": "x"}, "identity": "ci-test", "ttl": "5m"}]
    for field in ("issuer", "jwks_url"):
        data = {"name": "ci", "issuer": "https://ci.example.com", "audience": "pw", "rules": rules,
                field: url}  # fmt: skip
        if accepted:
            TrustIssuer.model_validate(data)
        else:
            with pytest.raises(ValidationError):
                TrustIssuer.model_validate(data)
    if not accepted and url.startswith("http://"):
        assert "plain http" in config_error(issuer=url)


@pytest.mark.parametrize("algorithm", ["HS256", "none", "HS512", "rs256"])
def test_shared_secret_and_unsigned_algorithms_cannot_be_allowed(algorithm: str) -> None:
    config_error(algorithms=["RS256", algorithm])


@pytest.mark.parametrize(
    "when",
    [
        {"ref": "refs/heads/main"},
        {"repository": "*/shop"},
        {"repository": ["acme/shop", "*"]},
        {"repository_owner": "acm?"},
        {"sub": "repo:acme/shop:*"},
    ],
)
def test_github_rules_must_pin_the_repository_owner(when: dict[str, Any]) -> None:
    rules = [{"when": when, "identity": "ci-test", "ttl": "5m"}]

    message = config_error(issuer="https://token.actions.githubusercontent.com", rules=rules)
    assert "does not pin an owner" in message


def test_gitlab_rules_must_pin_the_namespace() -> None:
    rules = [{"when": {"ref": "main"}, "identity": "ci-test", "ttl": "5m"}]

    assert "project_path" in config_error(issuer="https://gitlab.com", rules=rules)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"rules": []}, "at least 1"),
        ({"rules": [{"when": {}, "identity": "ci-test", "ttl": "5m"}]}, "at least one condition"),
        ({"rules": [{"when": {"sub": []}, "identity": "ci-test", "ttl": "5m"}]}, "empty list"),
        ({"rules": [{"when": {"sub": "x"}, "identity": "ci test", "ttl": "5m"}]}, "invalid name"),
        ({"rules": [{"when": {"sub": "x"}, "identity": "ci-test", "ttl": "0s"}]}, "greater than"),
        ({"rules": [{"when": {"sub": "x"}, "identity": "ci-test"}]}, "ttl"),
        ({"clock_skew": "1h"}, "10m maximum"),
        ({"provider": "jenkins"}, "provider"),
        ({"audiences": ["x"]}, "Extra inputs"),
        ({"audience": ""}, "audience"),
    ],
)
def test_invalid_trust_configuration_is_refused(changes: dict[str, Any], expected: str) -> None:
    assert expected in config_error(**changes)
