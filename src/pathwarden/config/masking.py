"""The ``masking:`` configuration block (top level, per connection, per policy).

Its fields and their validation; :func:`pathwarden.masking.settings.mask_options`
merges the levels that apply to a session into a :class:`MaskOptions`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from pathwarden.config.errors import ConfigError
from pathwarden.config.secrets import Secret
from pathwarden.masking.options import PII_DETECTORS, MaskOptions, Style

__all__ = ["MIN_LITERAL_LENGTH", "MaskingSettings", "known_detectors"]

#: Shorter exact secrets would mask ordinary words; they are refused in the
#: configuration and skipped among injected credentials.
MIN_LITERAL_LENGTH = 6


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
