"""What a masker is configured with: plain values, no configuration library.

The gateway's configuration (``masking:`` at the top level and per
connection) is validated by pydantic in :mod:`pathwarden.config.schema` and
turned into a :class:`MaskOptions`; the ``pathwarden mask`` command builds one
from its flags. The engine compiles one pattern database per distinct
options value (they are hashable) and caches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Style = Literal["label", "keep-last-4", "fixed"]

#: Optional personal-data detectors, off unless named in ``pii``.
PII_DETECTORS = frozenset({"email", "payment-card", "iban"})


@dataclass(frozen=True, slots=True)
class MaskOptions:
    """Which detectors run, how a secret is replaced, and what is exempt."""

    enabled: bool = True
    #: None: every built-in secret detector; otherwise only these names.
    detectors: frozenset[str] | None = None
    #: Built-in detectors switched off (applied after ``detectors``).
    disabled: frozenset[str] = frozenset()
    #: Personal-data detectors switched on (names from :data:`PII_DETECTORS`).
    pii: frozenset[str] = frozenset()
    style: Style = "label"
    #: The replacement when ``style`` is ``fixed``.
    fixed_text: str = "[MASKED]"
    #: Column names and JSON/YAML keys whose whole value is masked, added to the defaults.
    sensitive_keys: frozenset[str] = frozenset()
    #: Names never treated as sensitive keys (e.g. ``password_changed_at`` if a default caught it).
    exempt_keys: frozenset[str] = frozenset()
    #: Exact values never masked (e.g. a vendor's documented example key).
    exempt_values: frozenset[str] = frozenset()
    #: Exact secrets always masked wherever they appear (configured literals;
    #: the gateway adds every credential it injects).
    literals: frozenset[str] = frozenset()
