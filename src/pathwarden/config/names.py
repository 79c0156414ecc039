"""Names used as YAML keys and on the wire (identities, connections, issuers)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

__all__ = ["Name", "check_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_name(value: str) -> str:
    """``value`` if it is a valid name; a validation error saying what a name may hold."""
    if not _NAME.fullmatch(value):
        raise PydanticCustomError(
            "name",
            "invalid name '{name}': use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            {"name": value},
        )
    return value


#: A name used as a YAML key and on the wire (dbname / user): at most 63 characters
#: because PostgreSQL truncates identifiers there.
Name = Annotated[str, AfterValidator(check_name)]
