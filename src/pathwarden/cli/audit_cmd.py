"""``pathwarden replay`` and ``pathwarden audit export|verify|prune``: using the recordings.

Theory of operation: the store indexes every finished recording (where it is
stored, its final hash, its place in the gateway's chain of sessions); the
recording storage (files or S3, as ``recording.storage`` says) holds the
files; a session still running has its live file in ``<recordings>/live/``.
``replay`` reads one recording and shows it as it happened: a SQL session as
its statements, decisions and results; an SSH session as its terminal (the
output as the client saw it, or, on a file or pipe, a plain transcript with a
``$ command`` line per command), or as an asciicast v2 file with ``--cast``
(recording/terminal.py). ``audit export`` streams the store's statements as
JSON lines for a SIEM, and an SSH session's file operations from its
recording (recording/export.py, docs/audit-export.md). ``audit verify`` re-reads every
stored recording and checks it, the chain of sessions and the signed head
(docs/recording.md). ``audit prune`` drops the oldest part of each chain
behind a signed checkpoint, so that ``verify`` still passes afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any, Protocol, TypeVar

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..config import GatewayConfig, parse_duration
from ..model import Protocol as WireProtocol
from ..model import SessionRecord, Verdict
from ..proxy.recorder import HEADS_FILE, last_heads, recording_root, storage_for
from ..recording import (
    GENESIS_LINK,
    ChainEntry,
    Checkpoint,
    Event,
    Problem,
    RecordingError,
    RecordingNotFound,
    RecordingStorage,
    SignedHead,
    chain_link,
    follow,
    iter_events,
    make_checkpoint,
    read_recording,
    verify_chain,
    verify_recording,
)
from ..recording.errors import RecordingFormatError
from ..recording.export import event_line, file_line, statement_line
from ..recording.terminal import TerminalError, TerminalTranscript, select_channel, to_asciicast
from ..store import RecordingRow, SqlStore, Store, StoreError
from .common import DEFAULT_CONFIG, ConfigOpt, err, fail, load, moment, with_store

T = TypeVar("T")

audit_app = typer.Typer(no_args_is_help=True,
                        help="Export, verify and prune the audit trail and its recordings.")
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

_PAGE = 200  # sessions per store query in an export
_PROGRESS_FROM = 20  # verify shows progress on a terminal from this many recordings
_VERDICT_WORD = {"allow": "ALLOW", "deny": "DENY", "approval": "APPROVE", "approve": "APPROVE"}




@dataclass(frozen=True, slots=True)
class _Recordings:
    """Where this configuration keeps recordings."""

    root: Path
    storage: RecordingStorage

    @classmethod
    def of(cls, cfg: GatewayConfig) -> _Recordings:
        root = recording_root(cfg.recording, Path(cfg.data_dir))
        try:
            return cls(root, storage_for(cfg.recording, root))
        except RecordingError as exc:
            raise fail(str(exc)) from None

    @property
    def live_dir(self) -> Path:
        return self.root / "live"


@contextlib.contextmanager
def _as_file(data: bytes) -> Iterator[Path]:
    """Stored recording bytes as a private temporary file, for the reader."""
    with tempfile.TemporaryDirectory(prefix="pathwarden-") as tmp:
        path = Path(tmp) / "recording.pwrec.gz"
        path.write_bytes(data)
        yield path


# -- replay -----------------------------------------------------------------------------


def _locate(cfg: GatewayConfig, rec: _Recordings, session: str
            ) -> tuple[str, RecordingRow | None]:
    async def go(store: Store) -> tuple[str | None, RecordingRow | None]:
        found = await store.get_session(session)
        sid = found.id if found is not None else _live_match(rec.live_dir, session)
        if sid is None:
            row = await store.get_recording(session)  # a session row may have been lost
            return (session, row) if row is not None else (None, None)
        return sid, await store.get_recording(sid)

    sid, row = with_store(cfg, go)
    if sid is None:
        raise fail(f"no session {session!r}; list them with: pathwarden sessions list")
    return sid, row


def _live_match(live_dir: Path, prefix: str) -> str | None:
    if not live_dir.is_dir():
        return None
    names = sorted(p.name.removesuffix(".pwrec") for p in live_dir.glob("*.pwrec"))
    if prefix in names:
        return prefix
    matches = [n for n in names if n.startswith(prefix)] if len(prefix) >= 6 else []
    if len(matches) > 1:
        raise fail(f"session id prefix {prefix!r} matches several live sessions: "
                   f"{', '.join(matches[:5])}; give more characters")
    return matches[0] if matches else None


class _Player:
    """Prints a recording's events as a readable session, in the recorded rhythm."""

    def __init__(self, speed: float, step: bool, *, plain: bool | None = None) -> None:
        self.speed = speed
        self.step = step
        self.last_t: float | None = None
        self.start_t: float | None = None
        self.ops: dict[Any, dict[str, Any]] = {}
        # An SSH session is shown as its terminal: as it was on a terminal, plain text
        # on a file or pipe (decided when its session_start is seen).
        self.plain = plain
        self.terminal: TerminalTranscript | None = None

    def wait(self, event: Event) -> None:
        if self.last_t is not None and self.speed > 0:
            delay = (event.t - self.last_t) / self.speed
            if delay > 0:
                time.sleep(delay)
        self.last_t = event.t
        if self.start_t is None:
            self.start_t = event.t

    def show(self, event: Event) -> None:
        d = event.data
        if self.step and event.type == "operation":
            err.print("[dim](Enter for the next operation)[/]", end="")
            sys.stdin.readline()
        if self.terminal is not None:
            text = self.terminal.feed(event)
            if text is not None:
                _write(text)
                return
            if event.type == "session_end":
                _write(self.terminal.close())
            _write(self.terminal.break_line())
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is not None:
            handler(event, d)
        else:
            _line(f"  [{event.type}] " + ", ".join(f"{k}={v}" for k, v in sorted(d.items())))
        if event.type == "session_start" and d.get("protocol") == "ssh":
            plain = self.plain if self.plain is not None else not sys.stdout.isatty()
            self.terminal = TerminalTranscript(plain=plain)

    def finish(self) -> None:
        """The events ended (a live or cut recording may end without session_end)."""
        if self.terminal is not None:
            _write(self.terminal.close())
            _write(self.terminal.break_line())

    def _at(self, event: Event) -> str:
        clock = datetime.fromtimestamp(event.t, UTC).strftime("%H:%M:%S.%f")[:-3]
        offset = event.t - self.start_t if self.start_t is not None else 0.0
        return f"{clock} +{offset:.3f}s"

    def _on_session_start(self, event: Event, d: Any) -> None:
        when = datetime.fromtimestamp(event.t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        _line(f"identity {d.get('identity')}  connection {d.get('connection')}  "
              f"client {d.get('client')}  protocol {d.get('protocol')}  started {when}")
        claims = d.get("claims") or {}
        if claims:
            _line("  claims: " + ", ".join(f"{k}={v}" for k, v in sorted(claims.items())))
        _line(f"  token {d.get('token_ref') or '-'}")

    def _on_operation(self, event: Event, d: Any) -> None:
        self.ops[d.get("op_seq")] = dict(d)
        text = str(d.get("text", ""))
        _line(f"#{d.get('op_seq')}  {self._at(event)}  {d.get('kind')}: {text}")
        params = d.get("params")
        if params:
            _line("    params: " + ", ".join("NULL" if p is None else str(p) for p in params))

    def _on_decision(self, event: Event, d: Any) -> None:
        verdict = _VERDICT_WORD.get(str(d.get("verdict")), str(d.get("verdict")).upper())
        where = f"policy {d.get('policy') or '-'}"
        if d.get("rule") is not None:
            where += f", rule {d.get('rule')}"
        _line(f"    {verdict} ({where}): {d.get('reason', '')}")

    def _on_approval(self, event: Event, d: Any) -> None:
        by = f" by {d['by']}" if d.get("by") else ""
        comment = f": {d['comment']}" if d.get("comment") else ""
        _line(f"    approval {d.get('request_id')} {d.get('state')}{by}{comment}")

    def _on_result(self, event: Event, d: Any) -> None:
        facts = []
        if d.get("rows") is not None:
            facts.append(f"{d['rows']} rows")
        if d.get("duration_ms") is not None:
            facts.append(f"{float(d['duration_ms']):.2f} ms")
        tag = d.get("tag") or "-"
        outcome = f"ERROR: {d['error']}" if d.get("error") else tag
        _line(f"    -> {outcome}" + (f" ({', '.join(facts)})" if facts else ""))
        masked = _masked_counts(d.get("masked"))
        if masked:
            _line("    masked: " + ", ".join(f"{k} x{n}" for k, n in masked))
        sample = d.get("sample")
        if isinstance(sample, dict) and sample.get("rows"):
            columns = sample.get("columns") or [
                f"col{i + 1}" for i in range(len(sample["rows"][0]))]
            table = Table(padding=(0, 1))
            for column in columns:
                table.add_column(Text(str(column)))
            for row in sample["rows"]:
                table.add_row(*[Text("NULL" if v is None else str(v)) for v in row])
            out.print(table)
            if isinstance(d.get("rows"), int) and d["rows"] > len(sample["rows"]):
                _line(f"    (first {len(sample['rows'])} of {d['rows']} rows)")

    def _on_notice(self, event: Event, d: Any) -> None:
        _line(f"    {d.get('severity', 'NOTICE')}: {d.get('message', '')}")

    def _on_error(self, event: Event, d: Any) -> None:
        _line(f"  error {d.get('code', '')}: {d.get('message', '')}  ({self._at(event)})")

    def _on_truncated(self, event: Event, d: Any) -> None:
        when = "in total" if d.get("final") else "from here on"
        dropped = "terminal output event(s)" if self.terminal else "result sample(s)"
        _line(f"  [recording truncated {when}: {d.get('dropped_events')} {dropped}, "
              f"{d.get('dropped_bytes')} bytes dropped past {d.get('soft_limit')} bytes "
              f"({d.get('reason')})]")

    def _on_session_end(self, event: Event, d: Any) -> None:
        _line(f"session ended {self._at(event)}: {d.get('reason')}; "
              f"{d.get('bytes_from_client')} bytes from the client, "
              f"{d.get('bytes_to_client')} to it")


def _masked_counts(value: Any) -> list[tuple[str, int]]:
    if isinstance(value, dict):
        return sorted((str(k), int(n)) for k, n in value.items())
    if isinstance(value, list):  # [{"column", "detector", "count"}], as docs/recording.md lists
        return [(f"{m.get('column')}:{m.get('detector')}", int(m.get("count", 1)))
                for m in value if isinstance(m, dict)]
    return []


def _line(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _write(text: str) -> None:
    """Terminal output as recorded: not through rich, which would interpret it."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def _print_problems(sid: str, problems: Iterable[Problem]) -> None:
    for p in problems:
        at = f" at event {p.seq}" if p.seq is not None else ""
        err.print(f"session {sid}: {p.kind}{at}: {p.message}", markup=False)


class _Show(Protocol):
    """What replay does with a recording: show it, print its lines, or convert it."""

    def begin(self, sid: str, header_raw: bytes | None, gateway: str | None, *,
              live: bool, following: bool) -> None: ...

    def play(self, events: Iterable[Event]) -> None: ...


class _Lines:
    """``--json``: the recording's own lines, header first."""

    def begin(self, sid: str, header_raw: bytes | None, gateway: str | None, *,
              live: bool, following: bool) -> None:
        if header_raw is not None:
            sys.stdout.write(header_raw.decode("ascii") + "\n")

    def play(self, events: Iterable[Event]) -> None:
        for event in events:
            sys.stdout.write(event_line(event) + "\n")
            sys.stdout.flush()


class _Shown:
    """The session as it happened, through a :class:`_Player`."""

    def __init__(self, player: _Player) -> None:
        self.player = player

    def begin(self, sid: str, header_raw: bytes | None, gateway: str | None, *,
              live: bool, following: bool) -> None:
        if following:
            _line(f"session {sid}  (following the live recording; Ctrl-C to stop)")
        elif gateway is not None:
            _line(f"session {sid}  (recorded by gateway {gateway}"
                  f"{', still running' if live else ''})")

    def play(self, events: Iterable[Event]) -> None:
        try:
            for event in events:
                self.player.wait(event)
                self.player.show(event)
        finally:
            self.player.finish()


class _Cast:
    """``--cast``: one channel of an SSH session as an asciicast v2 file."""

    def __init__(self, channel: int | None, output: Path | None) -> None:
        self.channel = channel
        self.output = output
        self.sid = ""

    def begin(self, sid: str, header_raw: bytes | None, gateway: str | None, *,
              live: bool, following: bool) -> None:
        self.sid = sid

    def play(self, events: Iterable[Event]) -> None:
        recorded = list(events)
        try:
            chosen = select_channel(recorded, self.channel, session=self.sid)
            lines = list(to_asciicast(recorded, chosen.number, session=self.sid))
        except TerminalError as exc:
            raise fail(str(exc)) from None
        if self.output is None:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            return
        try:
            fd = os.open(self.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o600)
        except OSError as exc:
            raise fail(f"--output {self.output}: {exc.strerror}") from None
        with open(fd, "w", encoding="utf-8") as sink:
            sink.writelines(line + "\n" for line in lines)
        err.print(f"channel {chosen.number} of session {self.sid} written to {self.output} "
                  f"(asciicast v2, {len(lines) - 1} events; play it with: asciinema play "
                  f"{self.output})", markup=False)


def replay_command(
    session: Annotated[str, typer.Argument(help="Session id (or a unique prefix).")],
    speed: Annotated[float, typer.Option(
        help="Replay speed: 1 as it happened, 2, 10 ... times faster; 0 without waiting.",
        min=0)] = 1.0,
    step: Annotated[bool, typer.Option(
        "--step", help="Wait for Enter before each operation (on a terminal).")] = False,
    follow_: Annotated[bool, typer.Option(
        "--follow", "-f", help="Follow a running session until it ends.")] = False,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print the recording's lines (header, then events) as JSON lines.")
    ] = False,
    cast: Annotated[bool, typer.Option(
        "--cast", help="Write one terminal channel of an SSH session as an asciicast v2 "
                       "file (for asciinema play or the asciinema player).")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="With --cast: write the .cast file here (default: stdout).")
    ] = None,
    channel: Annotated[int | None, typer.Option(
        help="With --cast: the channel to export (default: the first with a pty, else the "
             "first with output).", min=0)] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Show a session as it happened, from its recording."""
    if step and not sys.stdin.isatty():
        raise fail("--step waits for Enter and needs a terminal; use --speed 0 to print the "
                   "whole session at once", 2)
    if not cast and (output is not None or channel is not None):
        raise fail("--output and --channel go with --cast (an asciicast file of one channel "
                   "of an SSH session)", 2)
    if cast and (json_ or follow_ or step):
        given = ", ".join(o for o, on in (("--json", json_), ("--follow", follow_),
                                          ("--step", step)) if on)
        raise fail(f"--cast writes the recorded channel as a file and cannot be combined "
                   f"with {given}; play the file at any speed with: asciinema play FILE", 2)
    cfg = load(config)
    rec = _Recordings.of(cfg)
    sid, row = _locate(cfg, rec, session)
    show: _Show
    if cast:
        show = _Cast(channel, output)
    elif json_:
        show = _Lines()
    else:
        show = _Shown(_Player(0.0 if follow_ else speed, step))
    if row is None:
        _replay_live(cfg, rec, sid, show, follow_)
        return
    try:
        data = rec.storage.get(row.location)
    except RecordingNotFound as exc:
        raise fail(f"the recording of session {sid} is missing from the recording storage "
                   f"({exc}); the index expects it at {row.location}; run: pathwarden "
                   "audit verify") from None
    except RecordingError as exc:
        raise fail(f"the recording of session {sid} cannot be read: {exc}") from None
    with _as_file(data) as path:
        _replay_file(sid, path, show, live=False, final_hash=row.final_hash)


def _replay_file(sid: str, path: Path, show: _Show, *, live: bool,
                 final_hash: str | None = None) -> None:
    recording = read_recording(path)
    header = recording.header
    show.begin(sid, header.raw if header else None, header.gateway if header else None,
               live=live, following=False)
    show.play(recording.events)
    problems = verify_recording(path, live=live, final_hash=final_hash)
    if problems:
        what = "written" if isinstance(show, _Cast) else "shown"
        err.print(f"the recording of session {sid} is damaged; {what} is what could be read:",
                  markup=False)
        _print_problems(sid, problems)
        raise typer.Exit(1)


def _replay_live(cfg: GatewayConfig, rec: _Recordings, sid: str, show: _Show,
                 following: bool) -> None:
    live = rec.live_dir / f"{sid}.pwrec"
    done = rec.live_dir / f"{sid}.pwrec.gz"
    if not live.exists() and not done.exists():
        raise fail(f"session {sid} has no recording: not in the index and no live file in "
                   f"{rec.live_dir} (recording was off for it, or it has just ended and is "
                   "being stored: retry in a moment)")
    if not following or not live.exists():
        _replay_file(sid, live if live.exists() else done, show, live=live.exists())
        return
    try:
        with open(live, "rb") as f:
            header_raw = f.readline().rstrip(b"\n")
        show.begin(sid, header_raw, None, live=True, following=True)
        show.play(follow(live))
    except FileNotFoundError:  # ended between the lookup and the open
        _wait_and_replay_stored(cfg, rec, sid, show)
    except RecordingFormatError as exc:
        raise fail(f"the live recording of session {sid} is damaged: {exc}") from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _wait_and_replay_stored(cfg: GatewayConfig, rec: _Recordings, sid: str,
                            show: _Show) -> None:
    async def indexed(store: Store) -> RecordingRow | None:
        for _ in range(50):
            row = await store.get_recording(sid)
            if row is not None:
                return row
            await asyncio.sleep(0.1)
        return None

    row = with_store(cfg, indexed)
    if row is None:
        raise fail(f"session {sid} ended but its recording is not stored yet; retry with: "
                   f"pathwarden replay {sid}")
    with _as_file(rec.storage.get(row.location)) as path:
        _replay_file(sid, path, show, live=False, final_hash=row.final_hash)


# -- export -----------------------------------------------------------------------------


async def _sessions(
    store: Store, *, since: datetime | None, until: datetime | None, identity: str | None,
    connection: str | None,
) -> AsyncIterator[SessionRecord]:
    """Sessions that may hold statements in [since, until), oldest first, page by page."""
    if not isinstance(store, SqlStore):  # another Store: one query, newest first
        for s in reversed(await store.list_sessions(
                identity=identity, connection=connection, limit=1_000_000)):
            yield s
        return
    from sqlalchemy import and_, or_, select
    from sqlalchemy.exc import SQLAlchemyError

    from ..store.rows import session_record
    from ..store.tables import sessions

    c = sessions.c
    after: tuple[datetime, str] | None = None
    while True:
        query = select(sessions).order_by(c.started_at, c.id).limit(_PAGE)
        if until is not None:
            query = query.where(c.started_at < until)
        if since is not None:
            query = query.where(or_(c.ended_at.is_(None), c.ended_at >= since))
        if identity is not None:
            query = query.where(c.identity == identity)
        if connection is not None:
            query = query.where(c.connection == connection)
        if after is not None:
            query = query.where(or_(c.started_at > after[0],
                                    and_(c.started_at == after[0], c.id > after[1])))
        try:
            async with store._engine.connect() as conn:
                page = [session_record(r) for r in (await conn.execute(query)).all()]
        except SQLAlchemyError as exc:
            raise StoreError(f"listing sessions for the export failed on {store.display}: "
                             f"{exc.__class__.__name__}") from None
        for s in page:
            yield s
        if len(page) < _PAGE:
            return
        after = (page[-1].started_at, page[-1].id)


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(
        help="Statements from: a duration back from now (1h, 7d) or an ISO date.")] = None,
    until: Annotated[str | None, typer.Option(help="Statements before this (same forms).")
                     ] = None,
    identity: Annotated[str | None, typer.Option(help="Only this identity.")] = None,
    connection: Annotated[str | None, typer.Option(help="Only this connection.")] = None,
    decision: Annotated[str | None, typer.Option(
        help="Only this decision: allow, deny or approve.")] = None,
    format_: Annotated[str, typer.Option("--format", help="Output format: jsonl.")] = "jsonl",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file (default: stdout).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """One JSON object per statement, for a SIEM (fields: docs/audit-export.md)."""
    if format_ != "jsonl":
        raise fail(f"--format: only jsonl is supported, got {format_!r}", 2)
    verdict: Verdict | None = None
    if decision is not None:
        try:
            verdict = Verdict(decision.lower())
        except ValueError:
            raise fail(f"--decision: expected allow, deny or approve, got {decision!r}",
                       2) from None
    start, end = moment(since, "--since"), moment(until, "--until")
    cfg = load(config)
    recordings: list[_Recordings] = []  # opened at the first SSH session
    unread: list[str] = []

    def wanted(when: datetime, decided: str) -> bool:
        return not ((verdict is not None and decided != verdict.value)
                    or (start is not None and when < start)
                    or (end is not None and when >= end))

    async def go(store: Store, sink: IO[str]) -> int:
        count = 0
        async for session in _sessions(store, since=start, until=end, identity=identity,
                                       connection=connection):
            lines = [(st.started_at, statement_line(session, st))
                     for st in await store.list_statements(session.id)
                     if wanted(st.started_at, st.verdict.value)]
            if session.protocol == WireProtocol.SSH:
                if not recordings:
                    recordings.append(_Recordings.of(cfg))
                files, problem = await _file_events(store, recordings[0], session.id)
                if problem is not None:
                    unread.append(session.id)
                    err.print(f"session {session.id}: its file operations are not exported: "
                              f"{problem}", markup=False)
                for event in files:
                    when = datetime.fromtimestamp(event.t, UTC)
                    decided = "deny" if event.data.get("verdict") == "deny" else "allow"
                    if wanted(when, decided):
                        lines.append((when, file_line(session, event)))
                lines.sort(key=lambda line: line[0])  # stable: a statement before its files
            for _, line in lines:
                sink.write(line + "\n")
                count += 1
        return count

    if output is None:
        count = with_store(cfg, lambda store: go(store, sys.stdout))
    else:
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise fail(f"--output {output}: {exc.strerror}") from None
        with open(fd, "w", encoding="utf-8") as sink:
            count = with_store(cfg, lambda store: go(store, sink))
        err.print(f"{count} statement(s) written to {output}", markup=False)
    if unread:
        raise fail(f"the file operations of {len(unread)} SSH session(s) could not be read "
                   f"from their recordings ({', '.join(unread[:5])}"
                   f"{', ...' if len(unread) > 5 else ''}); everything else was exported; "
                   "run: pathwarden audit verify")


async def _file_events(store: Store, rec: _Recordings, sid: str
                       ) -> tuple[list[Event], str | None]:
    """The ``file`` events of an SSH session's recording; or why they cannot be read.

    A session without a recording (recorded while recording was off) has none.
    """
    def files_in(path: Path) -> list[Event]:
        return [e for e in iter_events(path) if e.type == "file"]

    def stored(location: str) -> list[Event]:
        with _as_file(rec.storage.get(location)) as path:
            return files_in(path)

    try:
        for _ in range(2):  # a session finishing moves from live/ to the storage meanwhile
            row = await store.get_recording(sid)
            if row is not None:
                return await asyncio.to_thread(stored, row.location), None
            for path in (rec.live_dir / f"{sid}.pwrec", rec.live_dir / f"{sid}.pwrec.gz"):
                with contextlib.suppress(FileNotFoundError):
                    return await asyncio.to_thread(files_in, path), None
    except (RecordingError, RecordingFormatError, OSError) as exc:
        return [], f"its recording cannot be read: {exc}"
    return [], None


# -- verify -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Chain:
    gateway: str
    rows: list[RecordingRow]
    head: str | None
    checkpoint: str | None


def _load_chains(cfg: GatewayConfig, session: str | None
                 ) -> tuple[list[_Chain], RecordingRow | None]:
    async def go(store: Store) -> tuple[list[_Chain], RecordingRow | None]:
        heads, checkpoints = await store.heads(), await store.checkpoints()
        if session is not None:
            found = await store.get_session(session)
            row = await store.get_recording(found.id if found is not None else session)
            if row is None:
                raise StoreError(f"session {session!r} has no indexed recording; list them "
                                 "with: pathwarden sessions list")
            rows = await store.list_recordings(gateway_id=row.gateway_id)
            return [_Chain(row.gateway_id, rows, heads.get(row.gateway_id),
                           checkpoints.get(row.gateway_id))], row
        by_gateway: dict[str, list[RecordingRow]] = {g: [] for g in (*heads, *checkpoints)}
        for r in await store.list_recordings():
            by_gateway.setdefault(r.gateway_id, []).append(r)
        return [_Chain(g, rows, heads.get(g), checkpoints.get(g))
                for g, rows in sorted(by_gateway.items())], None

    return with_store(cfg, go)


def _public_key(cfg: GatewayConfig) -> Any:
    from ..identity import TokenAuthority
    from ..identity.tokens import KEY_FILE

    data_dir = Path(cfg.data_dir)
    if not (data_dir / KEY_FILE).exists():
        return None
    key = TokenAuthority.load_or_create(data_dir).signing_key
    return key.public_key() if key is not None else None


class _Report:
    def __init__(self) -> None:
        self.problems = 0

    def problem(self, text: str) -> None:
        self.problems += 1
        out.print(f"PROBLEM {text}", markup=False, highlight=False, soft_wrap=True)


def _check_file(rec: _Recordings, row: RecordingRow, report: _Report) -> None:
    who = f"session {row.session_id} (gateway {row.gateway_id}, chain position {row.position})"
    try:
        data = rec.storage.get(row.location)
    except RecordingNotFound as exc:
        report.problem(f"{who}: missing: the recording was removed from the storage ({exc})")
        return
    except RecordingError as exc:
        report.problem(f"{who}: unreadable: {exc}")
        return
    with _as_file(data) as path:
        header = read_recording(path).header
        if header is not None and header.session != row.session_id:
            report.problem(f"{who}: replaced: the file at {row.location} is the recording of "
                           f"session {header.session}")
        for p in verify_recording(path, final_hash=row.final_hash):
            at = f" event {p.seq}" if p.seq is not None else ""
            report.problem(f"{who}: {p.kind}{at}: {p.message}")


def _check_chain(chain: _Chain, public_key: Any, report: _Report,
                 only: RecordingRow | None) -> None:
    try:
        head = SignedHead.from_json(chain.head) if chain.head else None
        checkpoint = Checkpoint.from_json(chain.checkpoint) if chain.checkpoint else None
    except RecordingFormatError as exc:
        report.problem(f"gateway {chain.gateway}: bad_signature: the stored head or checkpoint "
                       f"is unreadable: {exc}")
        return
    if head is None and chain.rows:
        report.problem(f"gateway {chain.gateway}: bad_signature: the chain has no signed head "
                       "(it was removed, or the gateway has no signing key)")
    entries = [ChainEntry(r.position, r.session_id, r.final_hash, r.link) for r in chain.rows]
    if only is not None:
        _check_one_link(chain, checkpoint, only, report)
        if head is not None and head.position == only.position:
            entries = [e for e in entries if e.position <= only.position]
        else:
            return
    by_position = {r.position: r.session_id for r in chain.rows}
    for p in verify_chain(entries, public_key, head=head, checkpoint=checkpoint):
        session = by_position.get(p.seq) if p.seq is not None else None
        named = f", session {session}" if session else ""
        report.problem(f"gateway {chain.gateway}, chain position {p.seq}{named}: {p.kind}: "
                       f"{p.message}")


def _check_one_link(chain: _Chain, checkpoint: Checkpoint | None, row: RecordingRow,
                    report: _Report) -> None:
    before = {r.position: r.link for r in chain.rows}
    if row.position == 1:
        prev: str | None = GENESIS_LINK
    elif checkpoint is not None and checkpoint.position == row.position - 1:
        prev = checkpoint.link
    else:
        prev = before.get(row.position - 1)
    if prev is None:
        report.problem(f"gateway {chain.gateway}, chain position {row.position - 1}: "
                       "chain_broken: the session before this one is missing")
    elif chain_link(prev, row.session_id, row.final_hash) != row.link:
        report.problem(f"gateway {chain.gateway}, chain position {row.position}, session "
                       f"{row.session_id}: chain_broken: its link does not match")


@audit_app.command("verify")
def audit_verify(
    session: Annotated[str | None, typer.Option(
        help="Only this session's recording (id or unique prefix).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Check every stored recording, the chain of sessions and its signed head."""
    cfg = load(config)
    rec = _Recordings.of(cfg)
    chains, only = _load_chains(cfg, session)
    public_key = _public_key(cfg)
    report = _Report()
    total = sum(len(c.rows) for c in chains)
    rows = [only] if only is not None else [r for c in chains for r in c.rows]
    with _progress(len(rows)) as advance:
        for row in rows:
            _check_file(rec, row, report)
            advance()
    for chain in chains:
        _check_chain(chain, public_key, report, only)
    if only is None:
        _check_journal(rec, chains, report)
    if report.problems:
        err.print(f"audit verify: {report.problems} problem(s) found", markup=False)
        raise typer.Exit(1)
    what = (f"session {only.session_id}" if only is not None else
            f"{total} recording(s) in {len(chains)} chain(s)")
    out.print(f"OK: {what} verified", markup=False)


def _check_journal(rec: _Recordings, chains: list[_Chain], report: _Report) -> None:
    """The store's heads must not be older than the head journal beside the recordings."""
    stored = {c.gateway: c for c in chains}
    for gateway, line in sorted(last_heads(rec.root).items()):
        journalled = SignedHead.from_json(line)
        chain = stored.get(gateway)
        head = SignedHead.from_json(chain.head) if chain is not None and chain.head else None
        if head is None or head.position < journalled.position:
            at = head.position if head is not None else 0
            report.problem(
                f"gateway {gateway}: rolled_back: the store's chain head is at position {at} "
                f"but this gateway signed position {journalled.position} "
                f"({HEADS_FILE}): sessions after position {at} were removed")


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[], None]]:
    if total < _PROGRESS_FROM or not err.is_terminal:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("verifying recordings", total=total)
        yield lambda: progress.advance(task)


# -- prune ------------------------------------------------------------------------------


def _private_key(cfg: GatewayConfig) -> Ed25519PrivateKey:
    from ..identity import TokenAuthority
    from ..identity.tokens import KEY_FILE

    data_dir = Path(cfg.data_dir)
    if not (data_dir / KEY_FILE).exists():
        raise fail(f"no signing key in {data_dir / KEY_FILE}: a checkpoint cannot be signed; "
                   "run prune where the gateway keeps its data directory")
    key = TokenAuthority.load_or_create(data_dir).signing_key
    assert key is not None  # loaded from the private key file
    return key


@audit_app.command("prune")
def audit_prune(
    older_than: Annotated[str | None, typer.Option(
        help="Remove sessions that ended longer ago than this (default: recording.retention)."
    )] = None,
    before: Annotated[str | None, typer.Option(
        help="Remove sessions that ended before this date/time (ISO 8601, UTC unless it "
             "says otherwise), instead of --older-than.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would be removed, remove nothing.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Remove old sessions, statements and recordings behind a signed checkpoint."""
    cfg = load(config)
    if before is not None and older_than is not None:
        raise fail("give --older-than or --before, not both", 2)
    age: timedelta
    if before is not None:
        when = moment(before, "--before")
        assert when is not None
        age = datetime.now(UTC) - when
    elif older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise fail(f"--older-than: {exc}", 2) from None
    elif cfg.recording.retention is not None:
        age = cfg.recording.retention
    else:
        raise fail("nothing says how long to keep sessions: give --older-than (e.g. 90d) or "
                   "set recording.retention in the configuration", 2)
    cutoff = datetime.now(UTC) - age
    rec = _Recordings.of(cfg)
    key = None if dry_run else _private_key(cfg)

    async def go(store: Store) -> list[tuple[str, list[RecordingRow]]]:
        done = []
        gateways = sorted({r.gateway_id for r in await store.list_recordings(before=cutoff)})
        for gateway in gateways:
            cut: list[RecordingRow] = []
            for r in await store.list_recordings(gateway_id=gateway):
                if r.ended_at >= cutoff or (cut and r.position != cut[-1].position + 1):
                    break  # only a prefix of the chain: never leave a hole
                cut.append(r)
            if not cut:
                continue
            if key is not None:
                last = cut[-1]
                checkpoint = make_checkpoint(key, gateway, last.position, last.link, time.time())
                await store.prune(gateway, last.position, checkpoint.to_json(),
                                  [r.session_id for r in cut])
            done.append((gateway, cut))
        return done

    pruned = with_store(cfg, go)
    verb = "would remove" if dry_run else "removed"
    if not pruned:
        out.print(f"nothing to prune: no session ended before {cutoff:%Y-%m-%d %H:%M:%S}Z",
                  markup=False)
        return
    failed = 0
    for gateway, cut in pruned:
        out.print(f"gateway {gateway}: {verb} {len(cut)} session(s), chain positions "
                  f"{cut[0].position}-{cut[-1].position}, ended before "
                  f"{cutoff:%Y-%m-%d %H:%M:%S}Z", markup=False)
        for r in cut:
            if dry_run:
                out.print(f"  {r.session_id}  ended {r.ended_at:%Y-%m-%d %H:%M:%S}  "
                          f"{r.location}", markup=False)
                continue
            try:
                rec.storage.delete(r.location)
            except RecordingError as exc:
                failed += 1
                err.print(f"session {r.session_id}: the recording could not be deleted from "
                          f"the storage: {exc}", markup=False)
    if failed:
        raise fail(f"{failed} recording file(s) are left in the storage; delete them by hand "
                   "(they are no longer indexed)")
