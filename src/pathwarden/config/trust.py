"""Trusted OIDC issuers and the rules that map a CI job's claims to a pathwarden identity.

Theory of operation: a gateway trusts a list of issuers (``trust:`` in the
YAML). Each :class:`TrustIssuer` names the issuer URL its tokens carry in
``iss``, the audience they must be minted for, and an ordered list of
:class:`TrustRule`. A verified token's claims are compared with each rule's
``when`` in order; the first rule whose every condition holds decides the
identity and the upper bound of the lifetime of the pathwarden token.

A condition value is an exact string, or a glob (:func:`fnmatch.fnmatchcase`,
where ``*`` also matches ``/``) when it contains ``*``, ``?`` or ``[``; a list
matches when any element matches. A claim the token lacks never matches.
Claims that are not strings are compared by their JSON form (``true``, ``42``).

Because github.com and gitlab.com mint tokens for every repository on them,
a rule for those providers must pin the owner: GitHub rules must constrain
``repository``, ``repository_owner``, ``repository_id`` or
``repository_owner_id``, GitLab rules ``project_path``, ``namespace_path``,
``project_id`` or ``namespace_id``, in each case with an owner segment (the
part before the first ``/``) that has no wildcard. Without that, a rule such
as ``{ref: refs/heads/main}`` would admit any repository in the world.

Issuer and JWKS URLs must be ``https``; plain ``http`` is accepted only for
``127.0.0.1``, ``::1`` and ``localhost`` (a local test issuer).

This module depends only on pydantic and :mod:`pathwarden.config.durations`
so that the configuration schema can import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from pathwarden.config.durations import Duration
from pathwarden.config.names import Name

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "KEPT_CLAIMS",
    "Algorithm",
    "Provider",
    "TrustIssuer",
    "TrustRule",
    "claim_text",
    "guess_provider",
    "kept_claims",
    "match_rule",
    "url_problem",
]

Provider = Literal["github", "gitlab", "generic"]
#: Asymmetric JWS algorithms an issuer may be configured to use. ``none`` and the
#: HMAC family are absent on purpose: a shared secret cannot come from a JWKS URL.
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(get_args(Algorithm))
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "ES256",
    "ES384",
    "EdDSA",
)

#: The claims that identify a pipeline run, by provider; these are carried into
#: the pathwarden token (and so into audit records) when present.
KEPT_CLAIMS: Mapping[Provider, tuple[str, ...]] = {
    "github": (
        "repository",
        "repository_owner",
        "ref",
        "sha",
        "environment",
        "workflow",
        "job_workflow_ref",
        "run_id",
        "run_attempt",
        "run_number",
        "actor",
        "event_name",
        "sub",
    ),
    "gitlab": (
        "project_path",
        "namespace_path",
        "ref",
        "ref_type",
        "ref_protected",
        "environment",
        "pipeline_id",
        "job_id",
        "sha",
        "user_login",
        "pipeline_source",
        "sub",
    ),
    "generic": ("sub",),
}

# Claims that pin the owner of the repository/project, per multi-tenant provider.
_OWNER_CLAIMS: Mapping[Provider, tuple[str, ...]] = {
    "github": ("repository", "repository_owner", "repository_id", "repository_owner_id"),
    "gitlab": ("project_path", "namespace_path", "project_id", "namespace_id"),
}
_GLOB_CHARS = frozenset("*?[")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


def claim_text(value: object) -> str | None:
    """A claim value as the string rules compare against; None for a missing (null) claim."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _condition_matches(expected: str | Sequence[str], actual: str) -> bool:
    patterns = [expected] if isinstance(expected, str) else expected
    return any(
        fnmatchcase(actual, pattern) if _is_glob(pattern) else actual == pattern
        for pattern in patterns
    )


# -- config models --------------------------------------------------------------------


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be used to fetch OIDC metadata or keys, or None when it may."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises for a port that is not a number
    except ValueError:
        return f"{url!r} is not a valid URL"
    if parts.scheme not in ("https", "http") or not host:
        return f"{url!r} is not an https URL such as https://token.example.com"
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS:
        return (
            f"{url!r} uses plain http; OIDC keys must be fetched over https "
            f"(http is accepted only for 127.0.0.1, ::1 and localhost, for tests)"
        )
    if parts.username is not None or parts.password is not None:
        return f"{url!r} must not contain credentials"
    if parts.query or parts.fragment:
        return f"{url!r} must not have a query or fragment"
    return None


def _check_url(value: str) -> str:
    problem = url_problem(value)
    if problem is not None:
        raise PydanticCustomError("url", "{detail}", {"detail": problem})
    return value


def _scalars_as_text(value: object) -> object:
    """Let YAML write ``run_attempt: 1`` or ``ref_protected: true`` in a condition."""
    if not isinstance(value, dict):
        return value

    def text(item: object) -> object:
        if isinstance(item, bool | int | float):
            return claim_text(item)
        return item

    return {
        key: [text(v) for v in item] if isinstance(item, list) else text(item)
        for key, item in value.items()
    }


def _check_when(value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
    if not value:
        raise PydanticCustomError(
            "when",
            "a rule needs at least one condition in 'when' (an empty rule would admit "
            "every token of the issuer)",
        )
    for key, expected in value.items():
        if not key:
            raise PydanticCustomError("when", "a condition needs a claim name")
        if isinstance(expected, list) and not expected:
            raise PydanticCustomError(
                "when",
                "condition '{claim}' has an empty list, which matches nothing",
                {"claim": key},
            )
    return value


Url = Annotated[str, AfterValidator(_check_url)]
Conditions = Annotated[
    dict[str, str | list[str]],
    BeforeValidator(_scalars_as_text),
    AfterValidator(_check_when),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrustRule(_Model):
    """Tokens whose claims satisfy every condition in ``when`` become ``identity``."""

    when: Conditions
    identity: Name
    ttl: Duration

    def matches(self, claims: Mapping[str, Any]) -> bool:
        """True when every condition holds for ``claims`` (a missing claim never matches)."""
        for key, expected in self.when.items():
            actual = claim_text(claims.get(key))
            if actual is None or not _condition_matches(expected, actual):
                return False
        return True


def guess_provider(issuer: str) -> Provider:
    """The provider conventions an issuer URL suggests: GitHub Actions, GitLab, or generic."""
    host = (urlsplit(issuer).hostname or "").lower()
    if host == "token.actions.githubusercontent.com":
        return "github"
    if host == "gitlab.com" or host.startswith("gitlab."):
        return "gitlab"
    return "generic"


class TrustIssuer(_Model):
    """An OIDC issuer whose tokens CI jobs may exchange for pathwarden tokens.

    ``provider`` defaults to :func:`guess_provider` of ``issuer``; ``jwks_url``
    defaults to the ``jwks_uri`` of ``<issuer>/.well-known/openid-configuration``.
    """

    name: Name
    issuer: Url
    audience: Annotated[str, Field(min_length=1)]
    jwks_url: Url | None = None
    provider: Provider = "generic"
    algorithms: Annotated[list[Algorithm], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS)
    )
    clock_skew: Duration = Field(default_factory=lambda: _seconds(60))
    rules: Annotated[list[TrustRule], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _default_provider(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("provider") is None:
            issuer = data.get("issuer")
            data = {**data, "provider": guess_provider(issuer if isinstance(issuer, str) else "")}
        return data

    @model_validator(mode="after")
    def _check_rules(self) -> TrustIssuer:
        if self.clock_skew > _seconds(600):
            raise PydanticCustomError(
                "clock_skew",
                "clock_skew of trust issuer {name} is above the 10m maximum",
                {"name": self.name},
            )
        owners = _OWNER_CLAIMS.get(self.provider)
        if owners is None:
            return self
        for number, rule in enumerate(self.rules, start=1):
            if not any(_pins_owner(rule.when.get(claim)) for claim in owners):
                raise PydanticCustomError(
                    "unpinned_rule",
                    "rule {number} of trust issuer {name} does not pin an owner: {provider} "
                    "issues tokens for every repository, so each rule must constrain one of "
                    "{claims} without a wildcard in the owner part (e.g. 'acme/shop' or 'acme/*')",
                    {
                        "number": number,
                        "name": self.name,
                        "provider": self.provider,
                        "claims": ", ".join(owners),
                    },
                )
        return self

    def well_known_url(self) -> str:
        """Where OIDC discovery (RFC 8414 / OpenID Connect Discovery 1.0) finds this issuer."""
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _pins_owner(expected: str | list[str] | None) -> bool:
    if expected is None:
        return False
    patterns = [expected] if isinstance(expected, str) else expected
    return all(p and not _is_glob(p.split("/", 1)[0]) for p in patterns)


def _seconds(count: int) -> timedelta:
    return timedelta(seconds=count)


# -- matching -------------------------------------------------------------------------


def match_rule(issuer: TrustIssuer, claims: Mapping[str, Any]) -> tuple[int, TrustRule] | None:
    """The first rule of ``issuer`` that ``claims`` satisfy, with its 1-based number."""
    for number, rule in enumerate(issuer.rules, start=1):
        if rule.matches(claims):
            return number, rule
    return None


def kept_claims(
    provider: Provider, rule: TrustRule | None, claims: Mapping[str, Any]
) -> dict[str, str]:
    """The pipeline-identifying claims carried into the pathwarden token.

    The provider's conventional set (:data:`KEPT_CLAIMS`) plus every claim the
    matching rule tested, so an audit record shows why the rule matched.
    """
    names = list(KEPT_CLAIMS[provider])
    if rule is not None:
        names.extend(key for key in rule.when if key not in names)
    kept: dict[str, str] = {}
    for name in names:
        text = claim_text(claims.get(name))
        if text is not None:
            kept[name] = text
    return kept
