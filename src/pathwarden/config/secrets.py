"""Secrets in configuration: where a value comes from, never the value itself.

In YAML a secret is ``{env: VAR}``, ``{file: path}`` or a plain string (an
inline literal: accepted, but it puts the secret in the config file). The value
is read only when :meth:`Secret.reveal` is called, so loading a config never
needs the secrets and a missing one is reported by whoever needs it, naming
the field (``pathwarden.yaml:12:15: connections.test-db.password: ...``).

``repr``/``str``/``model_dump`` show the source (``Secret(env=PGPASS)``), and
for an inline literal only ``Secret(<inline>)`` / ``"**********"``, so logging
a config object can never leak a credential.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from pathwarden.config.errors import ConfigError

__all__ = ["Secret"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MASK = "**********"
_SHAPE = "expected {env: VAR}, {file: path} or a quoted string"


class Secret:
    """A reference to a secret value: an environment variable, a file or an inline literal."""

    __slots__ = ("_kind", "_literal", "_ref", "_where")

    def __init__(
        self, kind: Literal["env", "file", "inline"], ref: str, *, literal: str | None = None
    ) -> None:
        self._kind = kind
        self._ref = ref
        self._literal = literal
        self._where = f"secret {self!r}"

    @classmethod
    def from_env(cls, name: str) -> Secret:
        """A secret read from environment variable ``name``."""
        return cls("env", name)

    @classmethod
    def from_file(cls, path: Path | str) -> Secret:
        """A secret read from a file (one trailing newline stripped)."""
        return cls("file", str(path))

    @classmethod
    def inline(cls, value: str) -> Secret:
        """A secret given literally."""
        return cls("inline", "", literal=value)

    @property
    def kind(self) -> Literal["env", "file", "inline"]:
        return self._kind

    @property
    def source(self) -> str:
        """Where the value comes from, safe to show: ``env PGPASS``, ``file /x``, ``inline``."""
        return "inline" if self._kind == "inline" else f"{self._kind} {self._ref}"

    def bind_location(self, where: str) -> None:
        """Set the prefix used in errors (``file:line:col: dotted.path``); done by the loader."""
        self._where = where

    def reveal(self) -> str:
        """Return the secret value, reading the environment or the file now.

        Raises :class:`ConfigError` naming the config field when the variable is
        unset or empty, or the file cannot be read or is empty.
        """
        if self._kind == "inline":
            assert self._literal is not None
            return self._literal
        if self._kind == "env":
            value = os.environ.get(self._ref)
            if value is None:
                raise ConfigError(
                    f"{self._where}: environment variable {self._ref} is not set; "
                    f"export it in the gateway's environment"
                )
            if not value:
                raise ConfigError(f"{self._where}: environment variable {self._ref} is empty")
            return value
        try:
            value = Path(self._ref).read_text(encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"{self._where}: cannot read secret file {self._ref}: {reason}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"{self._where}: secret file {self._ref} is not valid UTF-8"
            ) from None
        # Editors and `echo` add one newline; more than one is probably content.
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        if not value:
            raise ConfigError(f"{self._where}: secret file {self._ref} is empty")
        return value

    def __repr__(self) -> str:
        if self._kind == "inline":
            return "Secret(<inline>)"
        return f"Secret({self._kind}={self._ref})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._kind, self._ref, self._literal) == (other._kind, other._ref, other._literal)

    def __hash__(self) -> int:
        return hash((self._kind, self._ref, self._literal))

    # -- pydantic integration -------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.with_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(cls._serialize),
        )

    @classmethod
    def _validate(cls, value: object, info: core_schema.ValidationInfo) -> Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return cls.inline(value)
        if isinstance(value, int | float):
            raise PydanticCustomError(
                "secret_type", "a secret that looks like a number must be quoted in YAML"
            )
        if not isinstance(value, dict) or len(value) != 1:
            raise PydanticCustomError("secret_type", _SHAPE)
        ((key, ref),) = value.items()
        if key == "env":
            if not isinstance(ref, str) or not _ENV_NAME.fullmatch(ref):
                raise PydanticCustomError(
                    "secret_env", "env must name an environment variable, e.g. {env: PGPASSWORD}"
                )
            return cls.from_env(ref)
        if key == "file":
            if not isinstance(ref, str) or not ref:
                raise PydanticCustomError("secret_file", "file must be a path, e.g. {file: pw.txt}")
            path = Path(ref).expanduser()
            base = info.context.get("config_dir") if isinstance(info.context, dict) else None
            if isinstance(base, Path) and not path.is_absolute():
                path = base / path
            return cls.from_file(path)
        raise PydanticCustomError("secret_type", _SHAPE)

    def _serialize(self) -> str | dict[str, str]:
        if self._kind == "inline":
            return _MASK
        return {self._kind: self._ref}
