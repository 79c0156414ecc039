"""Authentication, handshake, upstream login, config and store errors: regressions
for weaknesses found in review (resource limits before login, secrets in error
messages, blocking key derivation, store failures during login).

The gateway used here has no upstream server: every finding is in the
handshake before (or instead of) the upstream login.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_harness import GatewayHarness, write_config
from pathwarden.config import ConfigError, parse_config
from pathwarden.protocols.postgres import messages as m
from pathwarden.proxy.pg_upstream import UpstreamError, UpstreamTarget, connect_upstream
from pathwarden.store import StoreError, open_store
from pgserver import free_port

_U32 = struct.Struct("!I")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("auth-review")
    config = {
        "data_dir": str(base / "data"),
        "listeners": [{"name": "pg", "protocol": "postgres",
                       "bind": f"127.0.0.1:{free_port()}", "allow_plaintext_loopback": True}],
        "connections": {"test-db": {"host": "127.0.0.1", "port": free_port(), "database": "t",
                                    "user": "postgres", "sslmode": "disable",
                                    "connect_timeout": "2s"}},
        "identities": {"ci-test": {}},
        "api": {"enabled": False},
    }
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()


def _read_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while len(buf) < 5:
        chunk = sock.recv(5 - len(buf))
        assert chunk, "connection closed without an answer"
        buf += chunk
    (length,) = _U32.unpack_from(buf, 1)
    body = b""
    while len(body) < length - 4:
        chunk = sock.recv(length - 4 - len(body))
        assert chunk, "connection closed inside a frame"
        body += chunk
    return buf[:1], body


def _startup(sock: socket.socket) -> None:
    sock.sendall(m.StartupMessage(params={"user": "ci-test", "database": "test-db"}).encode())
    assert _read_frame(sock)[0] == b"R", "expected the cleartext password request"


# ------------------------------------------------------------------ listener


def test_oversized_password_frame_is_refused_at_its_header(gw: GatewayHarness) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        _startup(sock)
        # Declare a 200 MB "password": no token is longer than 8 kB.
        sock.sendall(b"p" + _U32.pack(200 * 1024 * 1024))
        sock.settimeout(2)
        try:
            frame = _read_frame(sock)
        except TimeoutError:
            pytest.fail("the gateway waits to buffer a 200 MB password from an "
                        "unauthenticated client instead of refusing it")
        assert frame[0] == b"E"
        assert dict(m.ErrorResponse.decode(frame[1]).fields)["S"] == "FATAL"


def test_store_failure_during_authentication_is_reported_to_the_client(
        gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    token = gw.token("ci-test")

    async def broken(token_ref: str) -> None:
        raise StoreError("PostgreSQL store at store-db:5432/pw unreachable")

    monkeypatch.setattr(gw.gateway.authenticator._store, "token_status", broken)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        _startup(sock)
        sock.sendall(m.PasswordMessage(data=token.encode() + b"\0").encode())
        try:
            frame = _read_frame(sock)
        except ConnectionResetError:
            pytest.fail("the gateway reset the connection without an ErrorResponse")
        assert frame[0] == b"E"
        fields = dict(m.ErrorResponse.decode(frame[1]).fields)
        assert fields["S"] == "FATAL"
        assert token not in fields["M"]


# ------------------------------------------------------------------ upstream SCRAM


async def _read_packet(reader: asyncio.StreamReader, typed: bool) -> bytes:
    head = await reader.readexactly(5 if typed else 4)
    (length,) = _U32.unpack_from(head, 1 if typed else 0)
    return await reader.readexactly(length - 4)


def _auth(code: int, data: bytes) -> bytes:
    return b"R" + _U32.pack(8 + len(data)) + _U32.pack(code) + data


def test_scram_iteration_count_does_not_block_the_event_loop() -> None:
    async def scenario() -> float:
        async def evil_server(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
            await _read_packet(reader, typed=False)  # StartupMessage
            writer.write(_auth(m.AUTH_SASL, b"SCRAM-SHA-256\0\0"))
            first = await _read_packet(reader, typed=True)
            nonce = first.rsplit(b"r=", 1)[1].decode()
            salt = base64.b64encode(os.urandom(16)).decode()  # fresh: no cache hit
            server_first = f"r={nonce}evil,s={salt},i=4000000".encode()
            writer.write(_auth(m.AUTH_SASL_CONTINUE, server_first))
            await _read_packet(reader, typed=True)
            writer.close()

        server = await asyncio.start_server(evil_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = UpstreamTarget(name="evil", host="127.0.0.1", port=port, database="d",
                                user="u", password=lambda: "pw", sslmode="disable",
                                connect_timeout=10)
        stall = 0.0
        done = False

        async def ticker() -> None:
            nonlocal stall
            loop = asyncio.get_running_loop()
            while not done:
                before = loop.time()
                await asyncio.sleep(0.01)
                stall = max(stall, loop.time() - before)

        tick = asyncio.create_task(ticker())
        try:
            with pytest.raises(UpstreamError):
                await connect_upstream(target, {})
        finally:
            done = True
            await tick
            server.close()
        return stall

    stall = asyncio.run(scenario())
    assert stall < 0.3, f"event loop blocked for {stall:.2f}s by one SCRAM login"


# ------------------------------------------------------------------ config and store errors


@pytest.mark.parametrize("text", [
    'store: "postgresql://app:S3cretPw@db.internal/pw"\n',
    'connections:\n  db: "postgresql://app:S3cretPw@db.internal/pw"\n',
])
def test_config_error_does_not_echo_a_dsn_with_password(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert "S3cretPw" not in str(info.value)


def test_store_url_with_unencoded_password_fails_as_store_error_without_it() -> None:
    url = "postgresql://app:p@ss:Tail5ecret@localhost/pw"
    with pytest.raises(Exception) as info:
        asyncio.run(open_store(url))
    assert isinstance(info.value, StoreError), f"{type(info.value).__name__}: {info.value}"
    assert "Tail5ecret" not in str(info.value)


def test_cli_reports_an_unset_store_url_secret_as_an_error(tmp_path: Path) -> None:
    config = tmp_path / "pathwarden.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nstore:\n  url: {{env: PW_REVIEW_UNSET}}\n")
    env = {k: v for k, v in os.environ.items() if k != "PW_REVIEW_UNSET"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pathwarden.cli.main", "token", "list",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=30, env=env, check=False)
    assert time.monotonic() - started < 30
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "│" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr and "PW_REVIEW_UNSET" in proc.stderr
