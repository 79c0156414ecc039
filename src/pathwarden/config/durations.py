"""Human durations (``15m``, ``1h30m``, ``200ms``) for configuration and the CLI.

Grammar: one or more ``<number><unit>`` parts with units ``d``, ``h``, ``m``,
``s`` and ``ms``, each unit at most once and from largest to smallest, so that
``1m1h`` (almost certainly a typo) is refused rather than summed. Numbers may
have a fraction (``1.5h``). In the schema a bare integer means seconds.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

__all__ = ["Duration", "format_duration", "parse_duration"]

_MICROS = {
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_ORDER = ("d", "h", "m", "s", "ms")
# "ms" must be tried before "m" and "s".
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_HINT = "use a number followed by d, h, m, s or ms, e.g. '15m', '1h30m', '200ms'"


def parse_duration(text: str) -> timedelta:
    """Parse ``"15m"``, ``"1h30m"``, ``"200ms"`` ... into a timedelta.

    Raises ``ValueError`` with a message that quotes the input and shows the
    accepted forms.
    """
    source = text.strip()
    if not source:
        raise ValueError(f"empty duration; {_HINT}")
    pos = 0
    last_rank = -1
    micros = Decimal(0)
    while pos < len(source):
        match = _PART.match(source, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}; {_HINT}")
        number, unit = match.groups()
        rank = _ORDER.index(unit)
        if rank <= last_rank:
            raise ValueError(
                f"invalid duration {text!r}: units must appear once each, largest first "
                f"(d, h, m, s, ms)"
            )
        last_rank = rank
        try:
            micros += Decimal(number) * _MICROS[unit]
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f"invalid duration {text!r}; {_HINT}") from exc
        pos = match.end()
    try:
        return timedelta(microseconds=int(micros))
    except OverflowError as exc:
        raise ValueError(f"duration {text!r} is too long") from exc


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the grammar :func:`parse_duration` reads (``1h30m``)."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micros == 0:
        return "0s"
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, micros = divmod(micros, _MICROS[unit])
        if count:
            parts.append(f"{count}{unit}")
    if micros:
        # Milliseconds keep any sub-millisecond fraction exactly (1.5ms) so
        # that parse_duration(format_duration(x)) == x.
        parts.append(f"{Decimal(micros) / 1000}ms")
    return sign + "".join(parts)


def _validate_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):  # bool is an int subclass; `true` is never a duration
        raise PydanticCustomError("duration_type", "expected a duration such as '15m'")
    elif isinstance(value, int):
        try:
            result = timedelta(seconds=value)
        except OverflowError:
            raise PydanticCustomError("duration", "duration is too long") from None
    elif isinstance(value, str):
        try:
            result = parse_duration(value)
        except ValueError as exc:
            raise PydanticCustomError("duration", "{detail}", {"detail": str(exc)}) from None
    else:
        raise PydanticCustomError(
            "duration_type",
            "expected a duration such as '15m', '1h30m' or a whole number of seconds",
        )
    if result <= timedelta(0):
        raise PydanticCustomError("duration", "duration must be greater than zero")
    return result


#: A positive duration field: accepts ``"15m"``-style strings, ints (seconds) and timedeltas.
Duration = Annotated[
    timedelta,
    PlainValidator(_validate_duration),
    PlainSerializer(format_duration, return_type=str),
]
