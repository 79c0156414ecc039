"""Terminal sessions in recordings: asciicast v2 export, terminal replay, SSH in the export.

Recordings are written with the real RecordingWriter (a fake clock gives exact
times), finished, stored and indexed as the gateway does, and the CLI runs
in-process (typer's CliRunner) against a configuration with its own store;
the raw terminal mode runs the CLI in a subprocess on a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pathwarden.cli import audit_cmd
from pathwarden.cli.main import app
from pathwarden.config import load_config
from pathwarden.model import Protocol, SessionRecord, StatementRecord, Verdict
from pathwarden.recording import (
    GENESIS_LINK,
    Event,
    FileStorage,
    RecordingWriter,
    chain_link,
    read_recording,
)
from pathwarden.recording.terminal import (
    NoTerminalChannel,
    TerminalTranscript,
    channels,
    select_channel,
    to_asciicast,
)
from pathwarden.store import RecordingRow, open_store, store_url_for

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]
T0 = 1_714_731_000.0  # 2024-05-03 10:10:00 UTC
PTY = {"term": "xterm-256color", "cols": 80, "rows": 24}
START = {"identity": "ci-deploy", "token_ref": "5f1e0c2a9d3b7e41", "claims": {},
         "client": "10.0.0.7:50022", "connection": "web-1", "protocol": "ssh"}
END = {"reason": "client_closed", "bytes_from_client": 10, "bytes_to_client": 20}

Spec = list[tuple[float, str, dict[str, Any]]]  # (seconds after T0, type, data)


# -- recordings -------------------------------------------------------------------------


def write_recording(path: Path, sid: str, spec: Spec, *, close: bool = True
                    ) -> RecordingWriter:
    """A recording of ``spec`` at ``path``, with the times it gives (header at T0)."""
    times = itertools.chain([T0], (T0 + dt for dt, _, _ in spec),
                            (T0 + 100 + i for i in itertools.count()))  # later appends
    w = RecordingWriter.create(path, sid, "gw-test", clock=lambda: next(times))
    for _, type, data in spec:
        w.append(type, data)
    if close:
        w.close()
    return w


@dataclass
class Env:
    """A configuration, its store and its recording directory."""

    base: Path
    config: Path

    @property
    def root(self) -> Path:
        return self.base / "data" / "recordings"

    @property
    def live_dir(self) -> Path:
        return self.root / "live"

    def store_call(self, fn: Any) -> Any:
        async def go() -> Any:
            store = await open_store(store_url_for(load_config(self.config)))
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(go())

    def add_session(self, sid: str, protocol: Protocol = Protocol.SSH, *,
                    statements: tuple[StatementRecord, ...] = ()) -> SessionRecord:
        record = SessionRecord(
            id=sid, protocol=protocol, identity="ci-deploy", token_ref="5f1e0c2a9d3b7e41",
            client_addr="10.0.0.7:50022", connection="web-1",
            started_at=datetime.fromtimestamp(T0, UTC),
            ended_at=datetime.fromtimestamp(T0 + 60, UTC), end_reason="client_closed")

        async def go(store: Any) -> None:
            await store.upsert_sessions([record])
            if statements:
                await store.insert_statements(list(statements))
        self.store_call(go)
        return record

    def record(self, sid: str, spec: Spec) -> Path:
        """A session with a finished recording of ``spec``, stored and indexed as the
        gateway does: returns the stored file."""
        protocol = spec[0][2].get("protocol", "ssh")
        self.add_session(sid, Protocol(protocol))
        self.live_dir.mkdir(parents=True, exist_ok=True)
        writer = write_recording(self.live_dir / f"{sid}.pwrec", sid, spec, close=False)
        done = writer.finish(self.live_dir / f"{sid}.pwrec.gz")
        storage = FileStorage(self.root)
        location = storage.put(sid, datetime.fromtimestamp(T0, UTC).date(), done.path)
        done.path.unlink()

        async def go(store: Any) -> None:
            tail = await store.chain_tail("gw-test")
            position, prev = (tail[0] + 1, tail[1]) if tail else (1, GENESIS_LINK)
            await store.add_recording(RecordingRow(
                session_id=sid, gateway_id="gw-test", position=position,
                final_hash=done.final_hash, link=chain_link(prev, sid, done.final_hash),
                location=location, events=done.events, bytes=done.bytes,
                stored_bytes=done.compressed_bytes, complete=True,
                started_at=datetime.fromtimestamp(T0, UTC),
                ended_at=datetime.fromtimestamp(T0 + 60, UTC)), "")
        self.store_call(go)
        return self.root / location


@pytest.fixture
def env(tmp_path: Path) -> Env:
    config = tmp_path / "pathwarden.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "listeners": [{"name": "pg", "protocol": "postgres", "bind": "127.0.0.1:1",
                       "allow_plaintext_loopback": True}],
        "api": {"enabled": False},
        "recording": {"fsync": "off"},
    }))
    return Env(tmp_path, config)


def cli(env: Env, *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--config", str(env.config)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# A shell with a pty: a prompt, keystrokes, multi-byte output, a resize, exit;
# then an exec channel without a pty, and its exit.
SHELL: Spec = [
    (0.0, "session_start", START),
    (0.25, "operation", {"op_seq": 1, "kind": "shell", "text": "shell", "action": "shell"}),
    (0.25, "decision", {"op_seq": 1, "verdict": "allow", "policy": "ops", "rule": "allow[0]",
                        "reason": "shell: allowed"}),
    (0.5, "channel", {"channel": 0, "request": "shell", "pty": PTY}),
    (0.75, "term_output", {"channel": 0, "data": "$ ", "stream": "stdout"}),
    (1.0, "term_input", {"channel": 0, "data": "l"}),
    (1.125, "term_input", {"channel": 0, "data": "s\r"}),
    (1.25, "term_output", {"channel": 0, "data": "ls\r\n\x1b[01;34mdéjà\x1b[0m  ☃ 😀\r\n$ ",
                           "stream": "stdout"}),
    (1.5, "resize", {"channel": 0, "cols": 120, "rows": 40}),
    (2.0, "term_input", {"channel": 0, "data": "exit\r"}),
    (2.25, "term_output", {"channel": 0, "data": "exit\r\nlogout\r\n", "stream": "stdout"}),
    (2.5, "exit", {"channel": 0, "status": 0, "signal": None, "core_dumped": False,
                   "message": ""}),
    (3.0, "operation", {"op_seq": 2, "kind": "exec", "text": "uname -s", "action": "exec"}),
    (3.0, "decision", {"op_seq": 2, "verdict": "allow", "policy": "ops", "reason": "ok"}),
    (3.0, "channel", {"channel": 1, "request": "exec", "command": "uname -s", "pty": None}),
    (3.5, "term_output", {"channel": 1, "data": "Linux\n", "stream": "stdout"}),
    (3.75, "term_output", {"channel": 1, "data": "uname: warning\n", "stream": "stderr"}),
    (4.0, "exit", {"channel": 1, "status": 3, "signal": None, "core_dumped": False,
                   "message": ""}),
    (5.0, "session_end", END),
]


def events_of(spec: Spec, tmp_path: Path, sid: str = "s-events") -> list[Event]:
    path = tmp_path / f"{sid}.pwrec"
    write_recording(path, sid, spec)
    return read_recording(path).events


# -- the asciicast v2 schema, strictly ----------------------------------------------------


_HEADER_KEYS = {"version", "width", "height", "timestamp", "duration", "idle_time_limit",
                "command", "title", "env", "theme"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_asciicast(text: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """Parse a .cast file and check it against asciicast v2; (header, events)."""
    assert text.endswith("\n"), "a cast file ends with a newline"
    lines = text[:-1].split("\n")
    header = json.loads(lines[0])
    assert isinstance(header, dict)
    assert set(header) <= _HEADER_KEYS, set(header) - _HEADER_KEYS
    assert header["version"] == 2 and _is_int(header["version"])
    for key in ("width", "height"):
        assert _is_int(header[key]) and header[key] > 0, key
    if "timestamp" in header:
        assert _is_int(header["timestamp"]) and header["timestamp"] > 0
    for key in ("title", "command"):
        if key in header:
            assert isinstance(header[key], str)
    if "env" in header:
        assert isinstance(header["env"], dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in header["env"].items())
    events = []
    last = 0.0
    for line in lines[1:]:
        event = json.loads(line)
        assert isinstance(event, list) and len(event) == 3, line
        t, code, data = event
        assert isinstance(t, float | int) and not isinstance(t, bool), line
        assert t >= last, f"time goes back: {line}"
        last = t
        assert code in ("o", "i", "r", "m"), line
        assert isinstance(data, str), line
        if code == "r":
            assert re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", data), line
        events.append(event)
    text.encode("utf-8")  # every character can be written as UTF-8
    return header, events


# -- asciicast --------------------------------------------------------------------------


def test_cast_of_a_shell_is_exactly_these_lines(env: Env, tmp_path: Path) -> None:
    env.record("a1b2c3d4e5f60718", SHELL)
    result = cli(env, "replay", "a1b2c3d4e5f6", "--cast")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split("\n") == [
        '{"version": 2, "width": 80, "height": 24, "timestamp": 1714731000, '
        '"title": "ci-deploy@web-1 session a1b2c3d4e5f60718 channel 0", '
        '"env": {"TERM": "xterm-256color"}}',
        '[0.25, "o", "$ "]',
        '[0.5, "i", "l"]',
        '[0.625, "i", "s\\r"]',
        '[0.75, "o", "ls\\r\\n\\u001b[01;34mdéjà\\u001b[0m  ☃ 😀\\r\\n$ "]',
        '[1.0, "r", "120x40"]',
        '[1.5, "i", "exit\\r"]',
        '[1.75, "o", "exit\\r\\nlogout\\r\\n"]',
        "",
    ]
    check_asciicast(result.stdout)

    out = tmp_path / "shell.cast"
    result = cli(env, "replay", "a1b2c3d4e5f60718", "--cast", "-o", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    assert out.read_text(encoding="utf-8") == cli(
        env, "replay", "a1b2c3d4e5f60718", "--cast").stdout
    assert out.stat().st_mode & 0o777 == 0o600
    assert f"channel 0 of session a1b2c3d4e5f60718 written to {out}" in result.stderr


def test_cast_of_an_exec_channel_has_crlf_output_the_command_and_80x24(
        env: Env, tmp_path: Path) -> None:
    env.record("a1b2c3d4e5f60719", SHELL)
    result = cli(env, "replay", "a1b2c3d4e5f60719", "--cast", "--channel", "1")
    assert result.exit_code == 0, result.stderr
    header, events = check_asciicast(result.stdout)
    assert header == {"version": 2, "width": 80, "height": 24, "timestamp": 1714731003,
                      "title": "ci-deploy@web-1 session a1b2c3d4e5f60719 channel 1",
                      "command": "uname -s"}
    # stderr is output too; a bare \n is what a pty would have made of it.
    assert events == [[0.5, "o", "Linux\r\n"], [0.75, "o", "uname: warning\r\n"]]


def test_default_channel_is_the_first_with_a_pty_else_the_first_with_output(
        tmp_path: Path) -> None:
    exec_first: Spec = [
        (0.0, "session_start", START),
        (1.0, "channel", {"channel": 0, "request": "exec", "command": "true", "pty": None}),
        (1.5, "exit", {"channel": 0, "status": 0, "signal": None, "core_dumped": False,
                       "message": ""}),
        (2.0, "channel", {"channel": 1, "request": "exec", "command": "date", "pty": None}),
        (2.5, "term_output", {"channel": 1, "data": "today\n", "stream": "stdout"}),
        (3.0, "channel", {"channel": 2, "request": "shell",
                          "pty": {"term": "vt100", "cols": 100, "rows": 30}}),
        (3.5, "term_output", {"channel": 2, "data": "# ", "stream": "stdout"}),
    ]
    events = events_of(exec_first, tmp_path, "s1")
    assert select_channel(events).number == 2
    header = json.loads(next(to_asciicast(events)))
    assert (header["width"], header["height"], header["env"]) == (100, 30, {"TERM": "vt100"})
    without_pty = events_of(exec_first[:5], tmp_path, "s2")
    assert select_channel(without_pty).number == 1  # channel 0 has no output
    assert [c.number for c in channels(without_pty)] == [0, 1]
    assert select_channel(without_pty, 0).command == "true"  # asked for: given, even empty
    assert list(to_asciicast(without_pty, 0))[1:] == []


def test_a_session_without_a_terminal_is_refused_naming_its_channels(
        env: Env, tmp_path: Path) -> None:
    sftp_only: Spec = [
        (0.0, "session_start", START),
        (1.0, "channel", {"channel": 0, "request": "subsystem", "subsystem": "sftp",
                          "pty": None}),
        (1.5, "file", {"channel": 0, "op": "upload", "path": "/srv/app.tgz",
                       "paths": ["/srv/app.tgz"], "bytes": 4096, "ok": True,
                       "verdict": "allow"}),
        (2.0, "channel", {"channel": 1, "request": "exec", "command": "rm -rf /",
                          "pty": None, "refused": "denied by policy ops"}),
        (3.0, "session_end", END),
    ]
    env.record("b1b2c3d4e5f60718", sftp_only)
    out = tmp_path / "none.cast"
    result = cli(env, "replay", "b1b2c3d4e5f60718", "--cast", "-o", str(out))
    assert result.exit_code == 1
    assert not out.exists()
    message = " ".join(result.stderr.split())
    assert ("session b1b2c3d4e5f60718 has no terminal channel (none with a pty or with "
            "output); its channels: 0 subsystem sftp (no pty, no output); 1 exec 'rm -rf /' "
            "(no pty, no output, refused: denied by policy ops)") in message

    result = cli(env, "replay", "b1b2c3d4e5f60718", "--cast", "--channel", "7")
    assert result.exit_code == 1
    assert "session b1b2c3d4e5f60718 has no channel 7; its channels: 0 subsystem sftp" in \
        " ".join(result.stderr.split())
    result = cli(env, "replay", "b1b2c3d4e5f60718", "--cast", "--channel", "1")
    assert result.exit_code == 1
    assert "channel 1 of session b1b2c3d4e5f60718 was refused (denied by policy ops)" in \
        " ".join(result.stderr.split())

    postgres = [(0.0, "session_start", {**START, "protocol": "postgres"}),
                (1.0, "operation", {"op_seq": 1, "kind": "query", "text": "select 1",
                                    "action": "read"}),
                (2.0, "session_end", END)]
    env.record("c1b2c3d4e5f60718", postgres)
    result = cli(env, "replay", "c1b2c3d4e5f60718", "--cast")
    assert result.exit_code == 1
    assert ("session c1b2c3d4e5f60718 has no terminal channel: it has no channels "
            "(postgres sessions have no terminal)") in " ".join(result.stderr.split())
    with pytest.raises(NoTerminalChannel) as info:
        select_channel(read_recording(next(env.root.rglob("b1b2*.pwrec.gz"))).events)
    assert [c.number for c in info.value.channels] == [0, 1]


def test_cast_options_that_do_not_go_together_are_refused(env: Env) -> None:
    for args, text in ((["--cast", "--json"], "cannot be combined with --json"),
                       (["--cast", "--follow"], "cannot be combined with --follow"),
                       (["--channel", "1"], "--output and --channel go with --cast"),
                       (["-o", "x.cast"], "--output and --channel go with --cast")):
        result = cli(env, "replay", "whatever", *args)
        assert result.exit_code == 2, args
        assert text in " ".join(result.stderr.split()), (args, result.stderr)


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_event = st.one_of(
    st.tuples(st.just("term_output"), _text),
    st.tuples(st.just("term_input"), _text),
    st.tuples(st.just("resize"), st.tuples(st.integers(1, 500), st.integers(1, 200))),
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(-2.0, 5.0), _event), max_size=12),
       pty=st.booleans())
def test_any_channel_becomes_a_valid_asciicast(steps: list[tuple[float, Any]],
                                               pty: bool) -> None:
    events = [Event(0, T0, "session_start", START, "0" * 64, "0" * 64),
              Event(1, T0, "channel", {"channel": 0, "request": "shell",
                                       "pty": PTY if pty else None}, "0" * 64, "0" * 64)]
    t = T0
    for i, (dt, (type, value)) in enumerate(steps, start=2):
        t = round(t + dt, 6)  # a wall clock may step back: the cast never does
        data = ({"channel": 0, "cols": value[0], "rows": value[1]} if type == "resize"
                else {"channel": 0, "data": value})
        events.append(Event(i, t, type, data, "0" * 64, "0" * 64))
    text = "".join(line + "\n" for line in to_asciicast(events, 0, session="s"))
    header, cast = check_asciicast(text)
    assert (header["width"], header["height"]) == (80, 24)
    assert sum(1 for e in cast if e[1] == "r") == sum(1 for _, (k, _) in steps if k == "resize")


# -- replay of an SSH session -----------------------------------------------------------


DENIED: Spec = [
    (5.0, "operation", {"op_seq": 3, "kind": "exec", "text": "rm -rf /", "action": "exec"}),
    (5.0, "decision", {"op_seq": 3, "verdict": "deny", "policy": "ops", "rule": "deny[0]",
                       "reason": "rm: denied"}),
    (5.0, "channel", {"channel": 2, "request": "exec", "command": "rm -rf /", "pty": None,
                      "refused": "rm: denied", "op_seq": 3}),
    (6.0, "channel", {"channel": 3, "request": "subsystem", "subsystem": "sftp",
                      "pty": None}),
    (6.5, "file", {"channel": 3, "op": "rename", "path": "/srv/a", "paths": ["/srv/a",
                   "/srv/b"], "bytes": 0, "ok": True, "verdict": "allow"}),
    (6.75, "file", {"channel": 3, "op": "remove", "path": "/etc/passwd",
                    "paths": ["/etc/passwd"], "bytes": 0, "ok": False, "verdict": "deny"}),
    (7.0, "exit", {"channel": 3, "status": None, "signal": "KILL", "core_dumped": True,
                   "message": "killed"}),
]


def test_replay_of_an_ssh_session_on_a_file_is_a_plain_transcript(env: Env) -> None:
    env.record("d1b2c3d4e5f60718", SHELL[:-1] + DENIED + [(8.0, "session_end", END)])
    result = cli(env, "replay", "d1b2c3d4e5f6", "--speed", "0")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.split("\n") == [
        "session d1b2c3d4e5f60718  (recorded by gateway gw-test)",
        "identity ci-deploy  connection web-1  client 10.0.0.7:50022  protocol ssh  "
        "started 2024-05-03 10:10:00 UTC",
        "  token 5f1e0c2a9d3b7e41",
        "[channel 0: shell, xterm-256color 80x24]",
        "$ ls",
        "déjà  ☃ 😀",
        "$ exit",
        "logout",
        "[exit 0]",
        "$ uname -s",
        "Linux",
        "uname: warning",
        "[exit 3]",
        "[DENY exec: rm -rf / (policy ops, rule deny[0]): rm: denied]",
        "$ rm -rf /",
        "[refused]",  # why is in the line above
        "[channel 3: subsystem sftp]",
        "[file rename /srv/a -> /srv/b]",
        "[file remove /etc/passwd (DENIED)]",
        "[exit signal KILL, core dumped: killed]",
        "session ended 10:10:08.000 +8.000s: client_closed; 10 bytes from the client, 20 to it",
        "",
    ]


def test_replay_waits_as_recorded_scaled_by_speed(env: Env,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env.record("e1b2c3d4e5f60718", SHELL)
    times = [T0 + dt for dt, _, _ in SHELL]
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    for speed in (1.0, 4.0):
        slept: list[float] = []
        monkeypatch.setattr(audit_cmd.time, "sleep", slept.append)
        result = cli(env, "replay", "e1b2c3d4e5f60718", "--speed", str(speed))
        assert result.exit_code == 0, result.stderr
        assert slept == pytest.approx([g / speed for g in gaps], abs=1e-6)
        assert sum(slept) == pytest.approx(5.0 / speed, abs=1e-6)
    slept = []
    monkeypatch.setattr(audit_cmd.time, "sleep", slept.append)
    assert cli(env, "replay", "e1b2c3d4e5f60718", "--speed", "0").exit_code == 0
    assert slept == []


def test_replay_on_a_terminal_writes_the_output_as_recorded(env: Env) -> None:
    env.record("f1b2c3d4e5f60718", SHELL)
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [*PATHWARDEN, "replay", "f1b2c3d4e5f60718", "--speed", "0", "--config",
             str(env.config)], stdin=subprocess.DEVNULL, stdout=slave,
            stderr=subprocess.PIPE, env={**os.environ, "TERM": "xterm", "COLUMNS": "200"})
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed (EIO)
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=30) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        os.close(master)
        if proc.stderr is not None:
            proc.stderr.close()
    text = seen.decode("utf-8")
    # The terminal's own output processing turns \n into \r\n: compare without \r.
    plain = text.replace("\r", "")
    assert "\x1b[01;34mdéjà\x1b[0m  ☃ 😀\n$ exit\nlogout\n" in plain
    assert "[channel 0: shell, xterm-256color 80x24]\n$ ls\n" in plain
    assert "\x1b[0m\x1b[?25h[exit 0]\n$ uname -s\nLinux\nuname: warning\n[exit 3]\n" in plain


def test_transcript_reassembles_escapes_and_renders_line_editing() -> None:
    def ev(seq: int, type: str, **data: Any) -> Event:
        return Event(seq, T0 + seq, type, data, "0" * 64, "0" * 64)

    stream = [
        ev(0, "channel", channel=0, request="shell", pty=PTY),
        ev(1, "term_output", channel=0, data="50%\r100%\r\n$ ab\b"),
        ev(2, "term_output", channel=0, data="\x1b["),  # an escape cut in two
        ev(3, "term_output", channel=0, data="Kc\x1b]0;title\x07 done\r\n"),
        ev(4, "term_output", channel=0, data="$ top\r\n\x1b[?1049h\x1b[H\x1b[2Jtop screen"),
        ev(5, "term_output", channel=0, data="\x1b[?1049l$ \x1b[1mbold\x1b[0m\tx"),
        ev(6, "term_input", channel=0, data="secret keystrokes"),
        ev(7, "exit", channel=0, status=0, signal=None, core_dumped=False, message=""),
    ]
    plain = TerminalTranscript(plain=True)
    text = "".join(plain.feed(e) or "" for e in stream) + plain.close()
    assert text.split("\n") == [
        "[channel 0: shell, xterm-256color 80x24]",
        "100%",
        "$ ac done",
        "$ top",
        "[full-screen program: its screen is not shown here; replay on a terminal or export "
        "with --cast]",
        "$ bold\tx",
        "[exit 0]",
        "",
    ]
    raw = TerminalTranscript(plain=False)
    text = "".join(raw.feed(e) or "" for e in stream) + raw.close()
    assert "".join(str(e.data["data"]) for e in stream[1:6]) in text  # untouched
    assert "secret keystrokes" not in text
    # The full-screen program was left: the alternate screen is not restored twice,
    # attributes and the cursor are.
    assert text.endswith("\tx\x1b[0m\x1b[?25h\n[exit 0]\n")
    assert raw.feed(Event(8, T0, "session_end", END, "0" * 64, "0" * 64)) is None


def test_replay_of_a_live_unfinished_recording_and_following_it(env: Env) -> None:
    sid = "a9b2c3d4e5f60718"
    env.live_dir.mkdir(parents=True)
    path = env.live_dir / f"{sid}.pwrec"
    writer = write_recording(path, sid, SHELL[:8], close=False)
    try:
        result = cli(env, "replay", sid, "--speed", "0")
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.split("\n")
        assert lines[0] == f"session {sid}  (recorded by gateway gw-test, still running)"
        assert lines[-4:] == ["$ ls", "déjà  ☃ 😀", "$", ""]  # the prompt, pending, at the end
        cast = cli(env, "replay", sid, "--cast")
        assert cast.exit_code == 0
        assert check_asciicast(cast.stdout)[1][-1] == [
            0.75, "o", "ls\r\n\x1b[01;34mdéjà\x1b[0m  ☃ 😀\r\n$ "]

        follower = subprocess.Popen(
            [*PATHWARDEN, "replay", sid, "--follow", "--config", str(env.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first == f"session {sid}  (following the live recording; Ctrl-C to stop)\n"
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(follower.stdout.read()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        time.sleep(0.5)
        assert follower.poll() is None, "follow keeps running while the session does"
        for type, data in ((("term_output", {"channel": 0, "data": "echo hi\r\nhi\r\n$ ",
                                             "stream": "stdout"})),
                           ("exit", {"channel": 0, "status": 0, "signal": None,
                                     "core_dumped": False, "message": ""}),
                           ("session_end", END)):
            writer.append(type, data)
        assert follower.wait(timeout=30) == 0, follower.stderr.read()  # type: ignore[union-attr]
        reader.join(timeout=10)
        follower.stderr.close()  # type: ignore[union-attr]
        follower.stdout.close()
        shown = got[0]
        assert "$ ls\ndéjà  ☃ 😀\n$ echo hi\nhi\n$\n[exit 0]\nsession ended" in shown
    finally:
        writer.close()


def _tamper(stored: Path, needle: bytes, replacement: bytes) -> int:
    lines = gzip.decompress(stored.read_bytes()).split(b"\n")
    i = next(i for i, line in enumerate(lines) if needle in line)
    lines[i] = lines[i].replace(needle, replacement)
    stored.write_bytes(gzip.compress(b"\n".join(lines)))
    return i - 1  # line 0 is the header


def test_a_tampered_recording_is_reported_as_replay_reports_it(env: Env,
                                                               tmp_path: Path) -> None:
    sid = "abcdef0123456789"
    stored = env.record(sid, SHELL)
    seq = _tamper(stored, b"Linux", b"Linus")
    problem = f"session {sid}: edited at event {seq}: "

    shown = cli(env, "replay", sid, "--speed", "0")
    assert shown.exit_code == 1
    assert "Linus" in shown.stdout and "session ended" in shown.stdout
    assert f"the recording of session {sid} is damaged; shown is what could be read:" in \
        shown.stderr
    assert problem in shown.stderr

    out = tmp_path / "t.cast"
    cast = cli(env, "replay", sid, "--cast", "--channel", "1", "-o", str(out))
    assert cast.exit_code == 1
    assert f"the recording of session {sid} is damaged; written is what could be read:" in \
        cast.stderr
    assert problem in cast.stderr
    assert [line for line in cast.stderr.splitlines() if line.startswith(f"session {sid}:")] \
        == [line for line in shown.stderr.splitlines() if line.startswith(f"session {sid}:")]
    assert check_asciicast(out.read_text())[1][0] == [0.5, "o", "Linus\r\n"]

    as_json = cli(env, "replay", sid, "--json")
    assert as_json.exit_code == 1 and problem in as_json.stderr


# -- the audit export -------------------------------------------------------------------


def test_export_of_an_ssh_session_has_its_operations_and_file_lines_not_its_output(
        env: Env) -> None:
    sid = "5e5e5e5e5e5e5e5e"
    spec: Spec = [
        *SHELL[:4],
        (0.75, "term_output", {"channel": 0, "data": "TOP-SECRET-OUTPUT", "stream": "stdout"}),
        (1.0, "channel", {"channel": 1, "request": "subsystem", "subsystem": "sftp",
                          "pty": None}),
        (1.5, "file", {"channel": 1, "op": "upload", "path": "/srv/app.tgz",
                       "paths": ["/srv/app.tgz"], "bytes": 4096, "bytes_read": 0,
                       "bytes_written": 4096, "ok": True, "verdict": "allow"}),
        (2.5, "file", {"channel": 1, "op": "rename", "path": "/srv/a",
                       "paths": ["/srv/a", "/srv/b"], "bytes": 0, "ok": True,
                       "verdict": "allow"}),
        (3.5, "file", {"channel": 1, "op": "remove", "path": "/etc/passwd",
                       "paths": ["/etc/passwd"], "bytes": 0, "ok": False, "verdict": "deny"}),
        (9.0, "session_end", END),
    ]
    env.record(sid, spec)

    def statement(seq: int, dt: float, kind: str, text: str, verdict: Verdict
                  ) -> StatementRecord:
        return StatementRecord(
            session_id=sid, seq=seq, kind=kind, text=text, params=(), verdict=verdict,
            reason=f"{kind}: {verdict.value}", started_at=datetime.fromtimestamp(T0 + dt, UTC),
            policy="ops", action=kind)

    env.add_session(sid, statements=(
        statement(1, 0.25, "shell", "shell", Verdict.ALLOW),
        statement(2, 2.0, "sftp", "rename /srv/a /srv/b", Verdict.ALLOW),
        statement(3, 3.25, "sftp", "remove /etc/passwd", Verdict.DENY)))
    result = cli(env, "audit", "export")
    assert result.exit_code == 0, result.stderr
    assert "TOP-SECRET-OUTPUT" not in result.stdout
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["event"]["dataset"], e["event"]["id"], e["event"]["category"]) for e in lines] \
        == [("pathwarden.statement", f"{sid}:1", ["process"]),
            ("pathwarden.file", f"{sid}:file:6", ["file"]),
            ("pathwarden.statement", f"{sid}:2", ["file"]),
            ("pathwarden.file", f"{sid}:file:7", ["file"]),
            ("pathwarden.statement", f"{sid}:3", ["file"]),
            ("pathwarden.file", f"{sid}:file:8", ["file"])]
    upload = lines[1]
    assert upload == {
        "@timestamp": "2024-05-03T10:10:01.500000Z",
        "event": {"kind": "event", "category": ["file"], "type": ["allowed"],
                  "action": "upload", "outcome": "success", "dataset": "pathwarden.file",
                  "id": f"{sid}:file:6", "sequence": 6, "duration": None},
        "session": {"id": sid, "protocol": "ssh", "started": "2024-05-03T10:10:00.000000Z",
                    "ended": "2024-05-03T10:11:00.000000Z", "end_reason": "client_closed"},
        "identity": {"name": "ci-deploy", "token_ref": "5f1e0c2a9d3b7e41", "claims": {}},
        "client": {"address": "10.0.0.7:50022", "ip": "10.0.0.7", "port": 50022},
        "connection": {"name": "web-1"},
        "file": {"path": "/srv/app.tgz", "target_path": None},
        "pathwarden": {"kind": "file", "decision": "allow", "channel": 1,
                       "paths": ["/srv/app.tgz"], "bytes": 4096, "bytes_read": 0,
                       "bytes_written": 4096, "ok": True, "error": None},
    }
    assert lines[3]["file"] == {"path": "/srv/a", "target_path": "/srv/b"}
    assert lines[5]["event"]["type"] == ["denied"] and lines[5]["event"]["outcome"] == "failure"

    denied = cli(env, "audit", "export", "--decision", "deny")
    assert [json.loads(line)["event"]["id"] for line in denied.stdout.splitlines()] == [
        f"{sid}:3", f"{sid}:file:8"]
    until = datetime.fromtimestamp(T0 + 2.0, UTC).isoformat()
    early = cli(env, "audit", "export", "--until", until)
    assert [json.loads(line)["event"]["id"] for line in early.stdout.splitlines()] == [
        f"{sid}:1", f"{sid}:file:6"]


def test_export_says_which_ssh_sessions_file_operations_could_not_be_read(env: Env) -> None:
    sid = "6e6e6e6e6e6e6e6e"
    stored = env.record(sid, SHELL)
    env.add_session(sid, statements=(StatementRecord(
        session_id=sid, seq=1, kind="shell", text="shell", params=(), verdict=Verdict.ALLOW,
        reason="ok", started_at=datetime.fromtimestamp(T0, UTC)),))
    env.add_session("7e7e7e7e7e7e7e7e")  # never recorded (recording was off): no file lines
    stored.unlink()
    result = cli(env, "audit", "export")
    assert result.exit_code == 1
    assert [json.loads(line)["event"]["id"] for line in result.stdout.splitlines()] == [
        f"{sid}:1"]
    message = " ".join(result.stderr.split())
    assert f"session {sid}: its file operations are not exported: its recording cannot be " \
        "read: no recording at" in message
    assert (f"the file operations of 1 SSH session(s) could not be read from their recordings "
            f"({sid}); everything else was exported") in message


def test_transcript_of_interleaved_channels_says_whose_output_follows() -> None:
    def ev(seq: int, type: str, **data: Any) -> Event:
        return Event(seq, T0 + seq, type, data, "0" * 64, "0" * 64)

    done = {"signal": None, "core_dumped": False, "message": ""}
    stream = [
        ev(0, "channel", channel=0, request="exec", command="make a", pty=None),
        ev(1, "channel", channel=1, request="exec", command="make b", pty=None),
        ev(2, "term_output", channel=0, data="a1\na", stream="stdout"),
        ev(3, "term_output", channel=1, data="b1\n", stream="stdout"),
        ev(4, "term_output", channel=0, data="2\n", stream="stdout"),
        ev(5, "exit", channel=1, status=0, **done),
        ev(6, "signal", channel=0, signal="INT"),
        ev(7, "exit", channel=0, status=None, **{**done, "signal": "INT"}),
    ]
    plain = TerminalTranscript(plain=True)
    assert "".join(plain.feed(e) or "" for e in stream).split("\n") == [
        "$ make a",
        "$ make b",
        "[channel 0: $ make a]",
        "a1",
        "[channel 1: $ make b]",
        "b1",
        "[channel 0: $ make a]",
        "a2",
        "[channel 1: $ make b]",
        "[exit 0]",
        "[channel 0: $ make a]",
        "[signal INT sent by the client]",
        "[exit signal INT]",
        "",
    ]
    only = TerminalTranscript(plain=True, channel=1)
    assert "".join(only.feed(e) or "" for e in stream) == "$ make b\nb1\n[exit 0]\n"
