"""Load the YAML configuration file and report problems with file:line:column.

Theory of operation: the text is *composed* first (``yaml.compose``-style,
SafeLoader), which yields a node tree where every node remembers its start
mark; the same node tree is then constructed into plain Python data and
validated by :class:`~pathwarden.config.schema.GatewayConfig`. Each pydantic
error has a ``loc`` tuple (``("connections", "test-db", "port")``) which is
walked down the node tree to find the line and column of the offending value.
Elements of ``loc`` that are not in the YAML (pydantic's internal union or
validator labels) are skipped; a missing field points at its parent mapping,
an unknown key at the key itself. Duplicate keys, which PyYAML would silently
collapse into the last one, are refused.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pathwarden.config.errors import ConfigError
from pathwarden.config.schema import GatewayConfig
from pathwarden.config.secrets import Secret

__all__ = ["load_config", "parse_config"]

_MAX_INPUT_REPR = 60
# pydantic error types whose message does not already quote the input.
_ECHO_INPUT = frozenset(
    {
        "bool_parsing",
        "bool_type",
        "dict_type",
        "float_parsing",
        "greater_than_equal",
        "int_from_float",
        "int_parsing",
        "int_type",
        "less_than_equal",
        "list_type",
        "literal_error",
        "mapping_type",
        "model_attributes_type",
        "model_type",
        "string_too_short",
        "string_type",
    }
)


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the config file at ``path``; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; pass the right path with --config"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not valid UTF-8 (byte {exc.start})") from None
    return parse_config(text, source=str(path), base_dir=path.parent.resolve())


def parse_config(
    text: str, *, source: str = "<config>", base_dir: Path | None = None
) -> GatewayConfig:
    """Validate config ``text``.

    ``source`` names the text in errors; ``base_dir`` anchors relative paths.
    """
    root, data = _compose(text, source)
    if data is None:  # an empty file means "all defaults"
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}:1:1: expected a mapping of settings at the top level, got {_describe(data)}"
        )
    context = {"config_dir": base_dir} if base_dir is not None else None
    try:
        config = GatewayConfig.model_validate(data, context=context)
    except ValidationError as exc:
        problems = [_format_error(source, root, error) for error in exc.errors(include_url=False)]
        raise ConfigError("\n".join(problems), problems=problems) from None
    for loc, secret in _secrets(config, ()):
        mark, path = _locate(root, loc, keep_unresolved=True)
        secret.bind_location(f"{source}:{mark[0]}:{mark[1]}: {path}")
    return config


def _compose(text: str, source: str) -> tuple[Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_duplicate_keys(root, source)
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that would quote the file's
        # text, which may hold an inline secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {type(exc).__name__}") from None
    finally:
        loader.dispose()


def _check_duplicate_keys(node: Node, source: str) -> None:
    if isinstance(node, MappingNode):
        seen: dict[str, Node] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                if key.value in seen:
                    first = seen[key.value].start_mark.line + 1
                    raise ConfigError(
                        f"{source}:{key.start_mark.line + 1}:{key.start_mark.column + 1}: "
                        f"duplicate key {key.value!r} (first defined on line {first})"
                    )
                seen[key.value] = key
            _check_duplicate_keys(value, source)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, source)


def _locate(
    root: Node | None, loc: Sequence[str | int], *, keep_unresolved: bool, at_key: bool = False
) -> tuple[tuple[int, int], str]:
    """Map a pydantic ``loc`` to ((line, column), dotted path), both 1-based.

    ``keep_unresolved`` keeps loc elements absent from the YAML in the path: they
    are real field names for a missing field or a defaulted value.
    """
    if root is None:
        return (1, 1), ".".join(str(part) for part in loc)
    node: Node = root
    key_node: Node | None = None
    mark = root.start_mark
    path = ""
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        child: Node | None = None
        if part == "[key]" and key_node is not None:
            mark = key_node.start_mark  # the key itself is what failed validation
            continue
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == str(part):
                    key_node, child = key, value
                    break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            child, key_node = node.value[part], None
        if child is not None:
            node = child
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
            mark = key_node.start_mark if (last and at_key and key_node) else child.start_mark
        elif keep_unresolved:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        # Anything else is a pydantic-internal label, not a YAML location.
    return (mark.line + 1, mark.column + 1), path.lstrip(".") or "(top level)"


#: Tags of the connection union (config/schema.py ConnectionConfig).
_CONNECTION_TAGS = frozenset({"postgres", "ssh", "unknown"})


def _format_error(source: str, root: Node | None, error: Mapping[str, Any]) -> str:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    if len(loc) > 2 and loc[0] == "connections" and loc[2] in _CONNECTION_TAGS:
        loc = loc[:2] + loc[3:]  # the protocol union's tag is not a YAML key
    ctx = error.get("ctx") or {}
    at = ctx.get("at")
    if isinstance(at, tuple):
        loc = loc + at
    kind = error["type"]
    (line, column), path = _locate(
        root,
        loc,
        keep_unresolved=kind == "missing" or isinstance(at, tuple),
        at_key=kind == "extra_forbidden",
    )
    message = str(error["msg"]).removeprefix("Value error, ")
    # "..., unable to parse string as an integer" restates what "(got 'abc')" shows.
    message = message.split(", unable to parse", 1)[0]
    if kind == "missing":
        message = "required field is missing"
    elif kind == "extra_forbidden":
        message = _unknown_field_message(loc)
    elif kind in _ECHO_INPUT and not _is_secret_field(loc):
        # Type and range errors read better with the value; never for a
        # secret field, where the value may be a credential.
        message += f" (got {_describe(error.get('input'))})"
    return f"{source}:{line}:{column}: {path}: {message}"


_CREDENTIALS_IN_URL = re.compile(r"://[^/@\s]*:[^/@\s]*@|password\s*=", re.IGNORECASE)


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str) and _CREDENTIALS_IN_URL.search(value):
        # Never repeat what looks like a connection string with a password.
        return "a string that looks like a connection string with credentials (not shown)"
    text = repr(value)
    if len(text) > _MAX_INPUT_REPR:
        text = text[: _MAX_INPUT_REPR - 3] + "..."
    return text


def _unknown_field_message(loc: Sequence[str | int]) -> str:
    name = str(loc[-1])
    model = _type_at(GatewayConfig, loc[:-1])
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return f"unknown field {name!r}"
    fields = sorted(model.model_fields)
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {name!r}{hint} (valid fields: {', '.join(fields)})"


def _is_secret_field(loc: Sequence[str | int]) -> bool:
    return _type_at(GatewayConfig, loc) is Secret


def _type_at(annotation: Any, loc: Sequence[str | int]) -> Any:
    """Follow ``loc`` through model fields and container types; None when lost."""
    current = _unwrap(annotation)
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _unwrap(field.annotation)
        elif typing.get_origin(current) is dict:
            current = _unwrap(typing.get_args(current)[1])
        elif typing.get_origin(current) is list:
            current = _unwrap(typing.get_args(current)[0])
        else:
            return None
    return current


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the interesting type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _secrets(
    value: object, loc: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], Secret]]:
    if isinstance(value, Secret):
        yield loc, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name), (*loc, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secrets(item, (*loc, index))
