"""What every ``pathwarden`` sub-command shares: error exits and loading the configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from ..config import ConfigError, GatewayConfig, load_config, parse_duration
from ..store import Store, StoreError, open_store, store_url_for

T = TypeVar("T")

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="PATHWARDEN_CONFIG",
                 help="Gateway configuration file.", show_default=True),
]
DEFAULT_CONFIG = Path("pathwarden.yaml")

EXIT_USAGE = 2
# soft_wrap: an error line is never broken, whatever the terminal (or CI log) width.
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the returned Exit."""
    err.print(f"[bold red]error:[/] {message}", markup=True)
    return typer.Exit(code)


def load(path: Path) -> GatewayConfig:
    """The configuration at ``path``, or exit 2 with the file:line:field problem."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def with_store(config: GatewayConfig, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``fn`` with the configuration's store open; exit 1 on store errors."""
    async def go() -> T:
        store = await open_store(store_url_for(config))
        try:
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except (StoreError, ConfigError) as exc:
        raise fail(str(exc)) from None


def moment(value: str | None, option: str) -> datetime | None:
    """A duration back from now (``2d``) or an ISO date/time (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: expected a duration (1h, 2d) or an ISO date, got {value!r}",
                   EXIT_USAGE) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
