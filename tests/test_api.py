"""Specification of the HTTP API: OIDC exchange, whoami, token administration, TLS.

Every test talks real HTTP (httpx) to a real gateway (tests/gateway_harness.py)
whose API runs on the gateway's own event loop, with a local OIDC issuer
(tests/oidc_issuer.py) minting GitHub Actions-shaped tokens, and uses the
issued tokens with psql/psycopg through the gateway.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_harness import (
    GatewayHarness,
    api_settings,
    running_gateway,
    standard_config,
    wait_until,
    write_config,
)
from oidc_issuer import OidcIssuer, new_key, running_issuer, unsigned
from pathwarden.api.server import is_loopback
from pgserver import PgServer, free_port

DEPLOY_RULE = {
    "when": {"repository": "acme/shop", "ref": "refs/heads/main",
             "environment": "production"},
    "identity": "ci-deploy", "ttl": "10m",
}
BUILD_RULE = {"when": {"repository": "acme/shop", "workflow": "build"},
              "identity": "ci-build", "ttl": "1h"}
TEST_RULE = {"when": {"repository": "acme/shop"}, "identity": "ci-test", "ttl": "30m"}


def _trust(issuer: OidcIssuer) -> list[dict[str, Any]]:
    return [{"name": "github", "issuer": issuer.url, "audience": "pathwarden",
             "provider": "github", "rules": [DEPLOY_RULE, BUILD_RULE, TEST_RULE]}]


def _config(pg: PgServer, base: Path, issuer: OidcIssuer | None,
            **changes: Any) -> dict[str, Any]:
    os.environ["PW_TEST_SCRAM"] = "scram-secret"
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg, base / "data", free_port())
    config["identities"]["ops-admin"] = {"admin": True}
    config["api"] = api_settings()
    if issuer is not None:
        config["trust"] = _trust(issuer)
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with running_issuer() as source:
        yield source


@pytest.fixture(scope="module")
def gw(pg_server: PgServer, issuer: OidcIssuer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("api")
    with running_gateway(base, _config(pg_server, base, issuer)) as harness:
        yield harness


@pytest.fixture
def api(gw: GatewayHarness) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.api_url(), timeout=10) as client:
        yield client


def _exchange(api: httpx.Client, token: str, **body: Any) -> httpx.Response:
    return api.post("/v1/token/exchange", json={"oidc_token": token, **body})


def _gh(issuer: OidcIssuer, **overrides: Any) -> str:
    """A GitHub Actions job token that lives an hour (longer than every rule's ttl)."""
    return issuer.github_token(time.time(), 3600, **overrides)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _expires_in(body: dict[str, Any]) -> float:
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (expires - datetime.now(UTC)).total_seconds()


def _psql(gw: GatewayHarness, identity: str, token: str, dbname: str,
          sql: str) -> subprocess.CompletedProcess[str]:
    conninfo = (f"host=127.0.0.1 port={gw.port} user={identity} dbname={dbname} "
                "sslmode=disable")
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-c", sql, conninfo],
                          env={**os.environ, "PGPASSWORD": token}, capture_output=True,
                          text=True, timeout=30)


# -- health -------------------------------------------------------------------------------


def test_healthz_answers_ok(api: httpx.Client) -> None:
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_endpoints_answer_json_errors(api: httpx.Client) -> None:
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    response = api.get("/v1/token/exchange")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


# -- exchange -----------------------------------------------------------------------------


def test_github_token_is_exchanged_and_the_token_works_with_psql(
        gw: GatewayHarness, api: httpx.Client, issuer: OidcIssuer) -> None:
    oidc = _gh(issuer)
    response = _exchange(api, oidc)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["identity"] == "ci-deploy"
    assert body["connections"] is None
    assert set(body) == {"token", "token_ref", "identity", "expires_at", "connections", "claims"}
    assert body["claims"]["repository"] == "acme/shop"
    assert body["claims"]["environment"] == "production"
    assert body["claims"]["trust_issuer"] == "github"
    assert body["claims"]["trust_rule"] == "1"
    assert 9 * 60 < _expires_in(body) <= 10 * 60  # the rule's 10m
    marker = f"exchanged-{time.monotonic_ns()}"
    proc = _psql(gw, "ci-deploy", body["token"], "test-db", f"select '{marker}'")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == marker
    session = wait_until(lambda: next(
        (s for s in gw.sessions(identity="ci-deploy") if s.token_ref == body["token_ref"]
         and s.ended_at is not None), None), what="the psql session in the store")
    assert session.claims["repository"] == "acme/shop"
    assert session.claims["run_id"] == "8765432109"
    assert session.claims["trust_issuer"] == "github"


def test_a_later_rule_maps_other_jobs_of_the_repository(
        api: httpx.Client, issuer: OidcIssuer) -> None:
    oidc = _gh(issuer, environment="staging")
    response = _exchange(api, oidc)
    assert response.status_code == 200, response.text
    assert response.json()["identity"] == "ci-test"
    assert response.json()["claims"]["trust_rule"] == "3"


def _refusals(issuer: OidcIssuer) -> dict[str, str]:
    now = time.time()
    stranger = new_key("rsa", kid=issuer.active.kid)  # same kid, another key
    return {
        "audience": issuer.github_token(now, aud="someone-else"),
        "expired": issuer.github_token(now - 3600),
        "signature": issuer.mint(issuer.github_claims(now), key=stranger),
        "no_matching_rule": issuer.github_token(now, repository="evil/shop",
                                                repository_owner="evil"),
        "unknown_issuer": issuer.github_token(now, iss="https://issuer.example.com"),
        "algorithm": unsigned(issuer.github_claims(now)),
        "malformed": "not-a-jwt-at-all",
    }


@pytest.mark.parametrize("check", ["audience", "expired", "signature", "no_matching_rule",
                                   "unknown_issuer", "algorithm", "malformed"])
def test_refused_oidc_tokens_answer_401_with_the_check_and_never_echo_the_token(
        api: httpx.Client, issuer: OidcIssuer, check: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = _refusals(issuer)[check]
    response = _exchange(api, token)
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == check
    assert body["message"].startswith(f"OIDC token refused ({check})")
    for part in {token, *token.split(".")} - {""}:
        if len(part) > 8:
            assert part not in response.text
            assert part not in caplog.text


def test_exchange_without_trust_answers_404(pg_server: PgServer, tmp_path: Path) -> None:
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml",
                                          _config(pg_server, tmp_path, None)))
    try:
        response = httpx.post(harness.api_url() + "/v1/token/exchange",
                              json={"oidc_token": "a.b.c"})
        assert response.status_code == 404
        assert response.json()["error"] == "no_trust"
    finally:
        harness.stop()


def test_ttl_is_clamped_to_the_request_rule_provider_token_and_identity_cap(
        api: httpx.Client, issuer: OidcIssuer) -> None:
    now = time.time()
    asked_long = _exchange(api, issuer.github_token(now, 3600), ttl="2h").json()
    assert 9 * 60 < _expires_in(asked_long) <= 10 * 60  # rule ttl 10m
    asked_short = _exchange(api, issuer.github_token(now, 3600), ttl="1m").json()
    assert 50 < _expires_in(asked_short) <= 60
    short_lived = _exchange(api, issuer.github_token(now, lifetime=90)).json()
    assert 80 < _expires_in(short_lived) <= 90  # the provider token's remaining life
    capped = _exchange(api, issuer.github_token(now, 3600, workflow="build",
                                                environment="ci")).json()
    assert capped["identity"] == "ci-build"
    assert 4 * 60 < _expires_in(capped) <= 5 * 60  # identities.ci-build.max_token_ttl


def test_a_scope_the_identity_may_not_use_is_refused_with_403(
        api: httpx.Client, issuer: OidcIssuer) -> None:
    response = _exchange(api, _gh(issuer), connections=["scram-db"])
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "scope_not_allowed"
    assert "ci-deploy may not use connection scram-db" in body["message"]
    response = _exchange(api, _gh(issuer), connections=["no-such-db"])
    assert response.status_code == 403
    assert "unknown connection 'no-such-db'" in response.json()["message"]


def test_a_stage_token_cannot_reach_another_stages_connection(
        gw: GatewayHarness, api: httpx.Client, issuer: OidcIssuer) -> None:
    # ci-deploy's identity is restricted to test-db.
    deploy = _exchange(api, _gh(issuer)).json()
    refused = _psql(gw, "ci-deploy", deploy["token"], "scram-db", "select 1")
    assert refused.returncode != 0
    assert "may not use connection scram-db" in refused.stderr
    # ci-test may use anything, but this token is scoped to test-db.
    test = _exchange(api, _gh(issuer, environment="staging"),
                     connections=["test-db"]).json()
    assert test["connections"] == ["test-db"]
    refused = _psql(gw, "ci-test", test["token"], "scram-db", "select 1")
    assert refused.returncode != 0
    assert "scoped to test-db" in refused.stderr
    allowed = _psql(gw, "ci-test", test["token"], "test-db", "select 'in scope'")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "in scope"


@pytest.mark.parametrize(("payload", "detail"), [
    (b"{not json", "not valid JSON"),
    (b'{"connections": ["test-db"]}', "oidc_token: Field required"),
    (b'{"oidc_token": "a.b.c", "scope": "x"}', "scope: Extra inputs are not permitted"),
    (b'{"oidc_token": "a.b.c", "ttl": "forever"}', "ttl: invalid duration"),
    (b'{"oidc_token": "a.b.c", "ttl": "0s"}', "at least 1s"),
    (b'["a.b.c"]', "body"),
])
def test_malformed_exchange_bodies_answer_400(api: httpx.Client, payload: bytes,
                                              detail: str) -> None:
    response = api.post("/v1/token/exchange", content=payload,
                        headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert detail in response.json()["message"]


def test_a_non_string_token_is_refused_without_echoing_it(api: httpx.Client) -> None:
    response = api.post("/v1/token/exchange", json={"oidc_token": {"secret": "s3cr3t-value"}})
    assert response.status_code == 400
    assert "s3cr3t-value" not in response.text


def test_oversized_bodies_answer_413(api: httpx.Client) -> None:
    response = api.post("/v1/token/exchange", json={"oidc_token": "x" * 70_000})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
        yield b'{"oidc_token": "'
        for _ in range(10):
            yield b"y" * 10_000
        yield b'"}'

    response = api.post("/v1/token/exchange", content=chunks(),
                        headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_failed_authentications_are_rate_limited_with_retry_after(
        pg_server: PgServer, issuer: OidcIssuer, tmp_path: Path) -> None:
    config = _config(pg_server, tmp_path, issuer,
                     auth_limits={"failures_per_source": 3, "failures_per_identity": 50,
                                  "window": "1m"})
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        with httpx.Client(base_url=harness.api_url(), timeout=10) as api:
            bad = _gh(issuer, aud="someone-else")
            for _ in range(2):
                assert _exchange(api, bad).status_code == 401
            # A bad bearer token counts in the same limiter.
            assert api.get("/v1/whoami", headers=_bearer("a.b.c")).status_code == 401
            blocked = _exchange(api, _gh(issuer))  # a valid token
            assert blocked.status_code == 429
            assert blocked.json()["error"] == "rate_limited"
            assert 1 <= int(blocked.headers["Retry-After"]) <= 60
            assert "retry in" in blocked.json()["message"]
            whoami = api.get("/v1/whoami", headers=_bearer(harness.token("ci-test")))
            assert whoami.status_code == 429
            assert api.get("/healthz").status_code == 200
    finally:
        harness.stop()


# -- whoami -------------------------------------------------------------------------------


def test_whoami_describes_the_bearer_token(gw: GatewayHarness, api: httpx.Client,
                                           issuer: OidcIssuer) -> None:
    token = gw.token("ci-test", connections=("test-db", "md5-db"))
    response = api.get("/v1/whoami", headers=_bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["identity"] == "ci-test"
    assert body["groups"] == ["ci"]
    assert body["connections"] == ["md5-db", "test-db"]
    assert body["token_scope"] == ["test-db", "md5-db"]
    assert body["admin"] is False
    assert len(body["token_ref"]) == 16
    assert 14 * 60 < _expires_in(body) <= 15 * 60
    deploy = _exchange(api, _gh(issuer)).json()
    body = api.get("/v1/whoami", headers=_bearer(deploy["token"])).json()
    assert body["identity"] == "ci-deploy"
    assert body["connections"] == ["test-db"]  # what the identity allows
    assert body["token_scope"] is None
    assert body["claims"]["repository"] == "acme/shop"


def test_whoami_refuses_missing_bad_and_revoked_tokens(gw: GatewayHarness,
                                                       api: httpx.Client) -> None:
    response = api.get("/v1/whoami")
    assert response.status_code == 401
    assert response.json()["error"] == "missing_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = api.get("/v1/whoami", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert response.json()["error"] == "missing_token"
    response = api.get("/v1/whoami", headers=_bearer("not-a-token"))
    assert response.status_code == 401
    assert response.json()["error"] == "malformed"
    token = gw.token("ci-test")
    ref = api.get("/v1/whoami", headers=_bearer(token)).json()["token_ref"]
    gw.call(gw.gateway.store.revoke_token(ref, "test"))
    response = api.get("/v1/whoami", headers=_bearer(token))
    assert response.status_code == 401
    assert response.json()["error"] == "revoked"
    assert token not in response.text


# -- administration -----------------------------------------------------------------------


def test_an_admin_issues_lists_and_revokes_tokens(gw: GatewayHarness,
                                                  api: httpx.Client) -> None:
    admin = _bearer(gw.token("ops-admin"))
    response = api.post("/v1/tokens", headers=admin,
                        json={"identity": "ci-test", "ttl": "10m", "connections": ["test-db"]})
    assert response.status_code == 200, response.text
    issued = response.json()
    assert issued["identity"] == "ci-test"
    assert issued["connections"] == ["test-db"]
    assert issued["claims"] == {"issued_by": "ops-admin"}
    assert 9 * 60 < _expires_in(issued) <= 10 * 60
    proc = _psql(gw, "ci-test", issued["token"], "test-db", "select 'admin-issued'")
    assert proc.returncode == 0, proc.stderr

    listing = api.get("/v1/tokens", headers=admin, params={"identity": "ci-test"})
    assert listing.status_code == 200
    rows = {row["token_ref"]: row for row in listing.json()["tokens"]}
    assert rows[issued["token_ref"]]["state"] == "valid"
    assert rows[issued["token_ref"]]["connections"] == ["test-db"]
    assert all(row["identity"] == "ci-test" for row in rows.values())
    assert issued["token"] not in listing.text
    assert "token" not in rows[issued["token_ref"]]

    response = api.post(f"/v1/tokens/{issued['token_ref']}/revoke", headers=admin,
                        json={"reason": "job finished"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "revoked"
    assert response.json()["revoked_reason"] == "job finished"
    proc = _psql(gw, "ci-test", issued["token"], "test-db", "select 1")
    assert proc.returncode != 0
    assert "was revoked" in proc.stderr and "job finished" in proc.stderr


def test_admin_issuing_keeps_the_configured_caps(gw: GatewayHarness,
                                                 api: httpx.Client) -> None:
    admin = _bearer(gw.token("ops-admin"))
    over = api.post("/v1/tokens", headers=admin, json={"identity": "ci-build", "ttl": "1h"})
    assert over.status_code == 403
    assert over.json()["error"] == "not_allowed"
    assert "5m" in over.json()["message"]
    unknown = api.post("/v1/tokens", headers=admin, json={"identity": "nobody"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_identity"
    # An admin token minting admin tokens would never have to expire.
    itself = api.post("/v1/tokens", headers=admin, json={"identity": "ops-admin"})
    assert itself.status_code == 403
    assert itself.json()["error"] == "admin_token_refused"
    assert "pathwarden token issue ops-admin" in itself.json()["message"]


def test_revoking_by_an_unknown_or_invalid_ref(gw: GatewayHarness, api: httpx.Client) -> None:
    admin = _bearer(gw.token("ops-admin"))
    response = api.post("/v1/tokens/0123456789abcdef/revoke", headers=admin)
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_token"
    response = api.post("/v1/tokens/abc/revoke", headers=admin)
    assert response.status_code == 400


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/tokens", {"identity": "ci-test"}),
    ("GET", "/v1/tokens", None),
    ("POST", "/v1/tokens/0123456789abcdef/revoke", None),
])
def test_admin_endpoints_refuse_other_identities_with_403(
        gw: GatewayHarness, api: httpx.Client, method: str, path: str,
        body: dict[str, Any] | None) -> None:
    response = api.request(method, path, json=body, headers=_bearer(gw.token("ci-test")))
    assert response.status_code == 403
    assert response.json()["error"] == "not_admin"
    assert "ci-test" in response.json()["message"]
    response = api.request(method, path, json=body)
    assert response.status_code == 401


# -- TLS ----------------------------------------------------------------------------------


def test_tls_uses_the_gateways_certificate_and_loopback_may_use_plain_http(
        gw: GatewayHarness) -> None:
    cert = Path(gw.config.data_dir) / "tls" / "gateway.crt"
    response = httpx.get(gw.api_url("https") + "/healthz", verify=_trusting(cert))
    assert response.status_code == 200
    assert httpx.get(gw.api_url() + "/healthz").status_code == 200


def test_plain_http_is_refused_when_not_allowed(pg_server: PgServer, tmp_path: Path) -> None:
    config = _config(pg_server, tmp_path, None,
                     api=api_settings(allow_plaintext_loopback=False))
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        response = httpx.get(harness.api_url() + "/v1/whoami",
                             headers=_bearer(harness.token("ci-test")))
        assert response.status_code == 403
        assert response.json()["error"] == "tls_required"
        assert "https://127.0.0.1:" in response.json()["message"]
        cert = Path(harness.config.data_dir) / "tls" / "gateway.crt"
        response = httpx.get(harness.api_url("https") + "/healthz", verify=_trusting(cert))
        assert response.status_code == 200
    finally:
        harness.stop()


def _trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if is_loopback(address) or address == "0.0.0.0" else address


def test_plain_http_from_a_non_loopback_client_is_refused(pg_server: PgServer,
                                                          tmp_path: Path) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_port()
    config = _config(pg_server, tmp_path, None,
                     api=api_settings(port, bind=f"0.0.0.0:{port}"))
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        response = httpx.get(f"http://{address}:{port}/healthz")
        assert response.status_code == 403
        assert response.json()["error"] == "tls_required"
        response = httpx.get(f"https://{address}:{port}/healthz", verify=False)
        assert response.status_code == 200
    finally:
        harness.stop()


def test_a_client_that_sends_nothing_does_not_hold_the_api(gw: GatewayHarness) -> None:
    idle = socket.create_connection(("127.0.0.1", gw.gateway.api.port))  # type: ignore[union-attr]
    try:
        assert httpx.get(gw.api_url() + "/healthz", timeout=5).status_code == 200
    finally:
        idle.close()


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize("address", ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "", "x"])
def test_non_loopback_addresses(address: str) -> None:
    assert not is_loopback(address)


def test_expiry_of_exchanged_tokens_is_reported_in_utc(api: httpx.Client,
                                                      issuer: OidcIssuer) -> None:
    body = _exchange(api, _gh(issuer)).json()
    assert body["expires_at"].endswith("Z")
    parsed = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert parsed - datetime.now(UTC) < timedelta(minutes=11)


def test_a_reload_applies_new_trust_rules_to_the_next_exchange(
        pg_server: PgServer, issuer: OidcIssuer, tmp_path: Path) -> None:
    config = _config(pg_server, tmp_path, issuer)
    path = write_config(tmp_path / "pathwarden.yaml", config)
    harness = GatewayHarness(path)
    try:
        url = harness.api_url() + "/v1/token/exchange"
        assert httpx.post(url, json={"oidc_token": _gh(issuer)}).json()["identity"] == "ci-deploy"
        config["trust"][0]["rules"] = [{**DEPLOY_RULE, "identity": "ci-build"}]
        write_config(path, config)

        async def reload() -> bool:
            return harness.gateway.reload()

        assert harness.call(reload())
        assert httpx.post(url, json={"oidc_token": _gh(issuer)}).json()["identity"] == "ci-build"
        config.pop("trust")
        write_config(path, config)
        assert harness.call(reload())
        assert httpx.post(url, json={"oidc_token": _gh(issuer)}).json()["error"] == "no_trust"
    finally:
        harness.stop()
