"""The ``masking:`` configuration block (top level, per connection, per policy).

Settings merge from the top down: the top-level block, then the
connection's, then those of every policy that governs the session's identity
on that connection, in file order. A scalar set at a lower level replaces the
one above (``style``, ``enabled``, ``detectors``, ``fixed_text``); lists add
up (``disable``, ``pii``, ``columns``, ``exempt_columns``, ``exempt_values``,
``literals``), so a policy can switch a detector on or exempt a column but
cannot remove a literal that the top level masks. Only fields written in the
file take part: a connection that says nothing about ``style`` inherits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from pathwarden.config.errors import ConfigError
from pathwarden.config.secrets import Secret
from pathwarden.masking.options import PII_DETECTORS, MaskOptions, Style

__all__ = [
    "MIN_LITERAL_LENGTH",
    "MaskingError",
    "MaskingSettings",
    "known_detectors",
    "mask_options",
]

#: Shorter exact secrets would mask ordinary words; they are refused in the
#: configuration and skipped (with a warning) among injected credentials.
MIN_LITERAL_LENGTH = 6


class MaskingError(Exception):
    """Masking for a session cannot be set up (a literal's source is unreadable ...)."""


def known_detectors() -> frozenset[str]:
    """Names of every built-in detector, secret and personal-data ones."""
    from pathwarden.masking.engine import engine_for

    return frozenset(engine_for(MaskOptions(pii=PII_DETECTORS)).detector_names) | PII_DETECTORS


def _check_detectors(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    known = known_detectors()
    for index, name in enumerate(values):
        if name not in known:
            raise PydanticCustomError(
                "detector",
                "unknown detector '{name}'; known detectors: {known}",
                {"name": name, "known": ", ".join(sorted(known)), "at": (index,)},
            )
    return values


def _check_pii(values: list[str]) -> list[str]:
    for index, name in enumerate(values):
        if name not in PII_DETECTORS:
            raise PydanticCustomError(
                "pii",
                "unknown personal-data detector '{name}'; choose from {known}",
                {"name": name, "known": ", ".join(sorted(PII_DETECTORS)), "at": (index,)},
            )
    return values


def _check_literals(values: list[Secret]) -> list[Secret]:
    for index, secret in enumerate(values):
        try:
            value = secret.reveal()
        except ConfigError:
            continue  # a missing env/file secret is reported when masking is built
        if len(value) < MIN_LITERAL_LENGTH:
            raise PydanticCustomError(
                "literal",
                "a literal to mask must be at least {n} characters long (shorter ones "
                "would mask ordinary words)",
                {"n": MIN_LITERAL_LENGTH, "at": (index,)},
            )
    return values


def _lower(values: list[str]) -> list[str]:
    return [v.strip().lower() for v in values]


class MaskingSettings(BaseModel):
    """How responses and audit records are masked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # None: every built-in secret detector.
    detectors: Annotated[list[str] | None, AfterValidator(_check_detectors)] = None
    disable: Annotated[list[str], AfterValidator(_check_detectors)] = Field(
        default_factory=list)
    pii: Annotated[list[str], AfterValidator(_check_pii)] = Field(default_factory=list)
    style: Style = "label"
    fixed_text: Annotated[str, Field(min_length=1, max_length=64)] = "[MASKED]"
    # Column names / JSON keys whose whole value is masked (added to the defaults).
    columns: Annotated[list[str], AfterValidator(_lower)] = Field(default_factory=list)
    exempt_columns: Annotated[list[str], AfterValidator(_lower)] = Field(default_factory=list)
    exempt_values: list[str] = Field(default_factory=list)
    literals: Annotated[list[Secret], AfterValidator(_check_literals)] = Field(
        default_factory=list)


def mask_options(levels: Sequence[MaskingSettings | None],
                 injected: Iterable[str] = ()) -> MaskOptions:
    """The options for one session: ``levels`` merged top-down, plus injected credentials.

    ``injected`` are the credentials the gateway itself sends upstream: they
    are masked wherever they appear, whatever the settings say (short ones
    are skipped, see :data:`MIN_LITERAL_LENGTH`). A literal whose environment
    variable or file cannot be read raises :class:`MaskingError` (masking would
    otherwise silently miss it).
    """
    present = [level for level in levels if level is not None]
    defaults = MaskingSettings()

    def scalar(name: str) -> Any:
        value = getattr(defaults, name)
        for level in present:
            if name in level.model_fields_set:
                value = getattr(level, name)
        return value

    def union(name: str) -> frozenset[Any]:
        return frozenset(v for level in present for v in getattr(level, name))

    try:
        literals = {secret.reveal() for secret in union("literals")}
    except ConfigError as exc:
        raise MaskingError(f"masking.literals: {exc}") from None
    literals |= {v for v in injected if len(v) >= MIN_LITERAL_LENGTH}
    detectors = scalar("detectors")
    return MaskOptions(
        enabled=scalar("enabled"),
        detectors=frozenset(detectors) if detectors is not None else None,
        disabled=union("disable"),
        pii=union("pii"),
        style=scalar("style"),
        fixed_text=scalar("fixed_text"),
        sensitive_keys=union("columns"),
        exempt_keys=union("exempt_columns"),
        exempt_values=union("exempt_values"),
        literals=frozenset(literals),
    )
