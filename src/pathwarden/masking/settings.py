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

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pathwarden.config.errors import ConfigError
from pathwarden.config.masking import MIN_LITERAL_LENGTH, MaskingSettings, known_detectors
from pathwarden.masking.options import MaskOptions

__all__ = [
    "MIN_LITERAL_LENGTH",
    "MaskingError",
    "MaskingSettings",
    "known_detectors",
    "mask_options",
]

class MaskingError(Exception):
    """Masking for a session cannot be set up (a literal's source is unreadable ...)."""


def _escaped_forms(value: str) -> set[str]:
    forms = {
        value.replace("\\", "\\\\"),  # COPY text format, E'' strings
        json.dumps(value)[1:-1],  # JSON strings (to_json, row_to_json, API bodies)
        json.dumps(value, ensure_ascii=False)[1:-1],
        value.replace("'", "''"),  # SQL string literals
        value.replace("\\", "\\\\").replace("'", "''"),  # quote_literal(): E'...'
        value.replace('"', '""'),  # CSV and composite-value quoting
    }
    forms.discard(value)
    return forms


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
    # The forms a value takes once escaped by COPY text, JSON or SQL quoting.
    literals |= {form for value in list(literals) for form in _escaped_forms(value)}
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
