"""``pathwarden mask``: the gateway's masking engine as a filter, stdin to stdout.

It cleans any CI log with the same detectors the gateway applies to
responses, and it is the way to try a masking configuration: with
``--config`` it uses the file's ``masking:`` settings (and a connection's,
with ``--connection``), including every credential the gateway injects.
Input is streamed (a secret split across reads is still masked); output is
written as it is released, so a long-running producer's log keeps flowing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from .common import EXIT_USAGE, err, fail, load

_CHUNK = 64 * 1024


def _chunks(streams: Iterable[BinaryIO]) -> Iterator[bytes]:
    for stream in streams:
        while True:
            data = stream.read1(_CHUNK) if hasattr(stream, "read1") else stream.read(_CHUNK)
            if not data:
                break
            yield data


def mask_command(
    files: Annotated[list[Path] | None, typer.Argument(
        help="Files to mask, in order (default: standard input).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", envvar="PATHWARDEN_CONFIG",
        help="Use this gateway configuration's masking settings and injected credentials.",
    )] = None,
    connection: Annotated[str | None, typer.Option(
        help="With --config: add this connection's masking settings.")] = None,
    detector: Annotated[list[str] | None, typer.Option(
        "--detector", help="Run only these detectors (repeatable).")] = None,
    disable: Annotated[list[str] | None, typer.Option(
        "--disable", help="Switch a detector off (repeatable).")] = None,
    pii: Annotated[list[str] | None, typer.Option(
        "--pii", help="Also mask personal data: email, payment-card, iban (repeatable).")] = None,
    style: Annotated[str | None, typer.Option(
        help="Replacement: label ([MASKED:<detector>]), keep-last-4 or fixed.")] = None,
    literal_env: Annotated[list[str] | None, typer.Option(
        "--literal-env", metavar="VAR",
        help="Always mask the value of this environment variable (repeatable; the value "
             "never appears on the command line).")] = None,
    stats: Annotated[bool, typer.Option(
        "--stats", help="Print what was masked, per detector, on stderr.")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit with status 1 if anything was masked (a gate for CI logs).")] = False,
) -> None:
    """Mask secrets in text: standard input (or FILES) to standard output."""
    from ..masking import engine_for
    from ..masking.settings import MaskingError, MaskingSettings, mask_options

    overrides: dict[str, object] = {}
    if detector:
        overrides["detectors"] = detector
    if disable:
        overrides["disable"] = disable
    if pii:
        overrides["pii"] = pii
    if style:
        overrides["style"] = style
    literals: list[dict[str, str]] = []
    for name in literal_env or ():
        if name not in os.environ:
            raise fail(f"--literal-env {name}: the environment variable is not set", EXIT_USAGE)
        literals.append({"env": name})
    if literals:
        overrides["literals"] = literals
    try:
        flags = MaskingSettings.model_validate(overrides)
    except Exception as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else None
        where = "--" + str(first["loc"][0]) if first and first["loc"] else "options"
        message = first["msg"] if first else str(exc)
        raise fail(f"{where}: {message}", EXIT_USAGE) from None

    levels: list[MaskingSettings | None] = []
    injected: list[str] = []
    if config is not None:
        from ..proxy.gateway import injected_credentials

        cfg = load(config)
        levels.append(cfg.masking)
        if connection is not None:
            conn = cfg.connections.get(connection)
            if conn is None:
                raise fail(f"--connection: no connection named {connection!r} in {config}; "
                           f"defined: {', '.join(sorted(cfg.connections)) or '(none)'}",
                           EXIT_USAGE)
            levels.append(conn.masking)
        injected = injected_credentials(cfg)
    elif connection is not None:
        raise fail("--connection needs --config", EXIT_USAGE)
    levels.append(flags)
    try:
        options = mask_options(levels, injected)
    except MaskingError as exc:
        raise fail(str(exc)) from None
    if not options.enabled:
        err.print("warning: masking is disabled by the configuration; copying input as is")
    engine = engine_for(options)

    out = sys.stdout.buffer
    stream = engine.stream()
    opened: list[BinaryIO] = []
    try:
        if files:
            for path in files:
                try:
                    opened.append(path.open("rb"))
                except OSError as exc:
                    raise fail(f"{path}: {exc.strerror or exc}", EXIT_USAGE) from None
            sources: list[BinaryIO] = opened
        else:
            sources = [sys.stdin.buffer]
        try:
            for data in _chunks(sources):
                if not options.enabled:
                    out.write(data)
                    continue
                released = stream.feed(data)
                if released:
                    out.write(released)
                    out.flush()
            out.write(stream.flush())
            out.flush()
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly, like cat.
            sys.stderr.close()
            raise typer.Exit(0) from None
    finally:
        for f in opened:
            f.close()
    counts = dict(stream.counts)
    if stats:
        total = sum(counts.values())
        err.print(f"masked {total} value(s)" + (":" if counts else ""))
        for name, n in sorted(counts.items()):
            err.print(f"  {name}: {n}")
    if check and counts:
        raise typer.Exit(1)
