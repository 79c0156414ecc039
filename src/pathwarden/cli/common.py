"""What every ``pathwarden`` sub-command shares: error exits and loading the configuration."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..config import ConfigError, GatewayConfig, load_config

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
