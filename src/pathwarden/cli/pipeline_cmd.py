"""``pathwarden login`` and ``pathwarden exec``: what a CI job runs against the gateway.

``login`` turns what the job holds (its CI provider's OIDC token, or a
pre-issued pathwarden token) into a pathwarden token through the gateway's
HTTP API and prints it alone on stdout, so ``export PATHWARDEN_TOKEN=$(...)``
works; what happened goes to stderr and never includes a token.

``exec`` runs SQL through the gateway's PostgreSQL listener with psycopg and
prints the results for people (a table) or machines (CSV, JSON lines), with
exit codes a pipeline can branch on (:data:`EXEC_EXIT_CODES`).

The helpers shared with ``pathwarden connect`` (reading the token and the
identity in it, the gateway address, sslmode) live here too.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import decimal
import ipaddress
import json
import os
import ssl
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote, urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import EXIT_USAGE, err, fail

ENV_TOKEN = "PATHWARDEN_TOKEN"  # noqa: S105 - a variable name
ENV_ADDRESS = "PATHWARDEN_ADDRESS"
ENV_GATEWAY = "PATHWARDEN_GATEWAY"
ENV_CACERT = "PATHWARDEN_CACERT"
DEFAULT_ADDRESS = "127.0.0.1:15432"
DEFAULT_PG_PORT = 15432
SSLMODES = ("disable", "require", "verify-ca", "verify-full")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DENIED = 3
EXIT_CONNECT = 4
EXEC_EXIT_CODES = (
    "Exit status: 0 every statement ran; 1 a statement failed; 2 usage error; "
    "3 a statement was denied by pathwarden policy (SQLSTATE 42501); "
    "4 cannot connect to the gateway or authentication failed."
)
DENIED_SQLSTATE = "42501"


def die(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` (taken literally, never as Rich markup) and exit."""
    raise fail(escape(message), code)


# -- shared with `pathwarden connect` -------------------------------------------------


def read_token(token_env: str) -> str:
    """The pathwarden token in environment variable ``token_env``; exit 2 when unset."""
    token = os.environ.get(token_env, "").strip()
    if not token:
        die(f"no token in ${token_env}; get one with: export {token_env}=$(pathwarden login "
            f"--gateway URL --github) (or --oidc-token-env VAR)", EXIT_USAGE)
    return token


def unverified_payload(token: str) -> Mapping[str, Any]:
    """The claims of a JWT, read without checking the signature (the gateway checks it)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    segment = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        payload = json.loads(base64.urlsafe_b64decode(segment))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the payload does not decode") from exc
    if not isinstance(payload, dict):
        raise ValueError("the payload is not an object")
    return payload


def identity_of(token: str, token_env: str, explicit: str | None) -> str:
    """``explicit``, else the token's ``sub``; exit 4 when the token does not say."""
    if explicit:
        return explicit
    try:
        subject = unverified_payload(token).get("sub")
    except ValueError:
        subject = None
    if not isinstance(subject, str) or not subject:
        die(f"${token_env} does not look like a pathwarden token (no identity in it); "
            f"get a new one with pathwarden login, or pass --identity", EXIT_CONNECT)
    return subject


def parse_address(text: str, default_port: int = DEFAULT_PG_PORT) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` as (host, port); exit 2 when malformed."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            die(f"malformed address {text!r}: expected [IPv6]:port", EXIT_USAGE)
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            die(f"malformed address {text!r}: expected [IPv6]:port", EXIT_USAGE)
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        die(f"malformed address {text!r}: no host", EXIT_USAGE)
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        die(f"malformed address {text!r}: the port must be a number up to 65535", EXIT_USAGE)
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_sslmode(sslmode: str | None, cacert: Path | None, host: str) -> str:
    """The sslmode to use: ``require`` by default, ``verify-full`` with a CA certificate."""
    mode = sslmode or ("verify-full" if cacert else "require")
    if mode not in SSLMODES:
        die(f"--sslmode: expected one of {', '.join(SSLMODES)}, got {mode!r}", EXIT_USAGE)
    if mode == "disable" and not is_loopback(host):
        die(f"--sslmode disable would send the token in plaintext to {host}; it is allowed "
            f"only for loopback addresses", EXIT_USAGE)
    if mode == "verify-ca" and cacert is None:
        die("--sslmode verify-ca needs --cacert (the gateway's certificate or its CA)",
            EXIT_USAGE)
    if cacert is not None and not cacert.is_file():
        die(f"--cacert: no such file {cacert}", EXIT_USAGE)
    return mode


AddressOpt = Annotated[str, typer.Option(
    "--address", envvar=ENV_ADDRESS, show_envvar=True,
    help="The gateway's PostgreSQL listener, host:port.")]
TokenEnvOpt = Annotated[str, typer.Option(
    "--token-env", metavar="VAR", help="Environment variable holding the pathwarden token.")]
IdentityOpt = Annotated[str | None, typer.Option(
    help="Identity to log in as (default: the token's subject).")]
SslmodeOpt = Annotated[str | None, typer.Option(
    help="TLS to the gateway: require (default), verify-ca, verify-full (default with "
         "--cacert) or disable (loopback addresses only).")]
CacertOpt = Annotated[Path | None, typer.Option(
    "--cacert", envvar=ENV_CACERT, show_envvar=True,
    help="The gateway's certificate (self-signed) or its CA, to verify the gateway.")]


# -- login ----------------------------------------------------------------------------


def _api_url(base: str, path: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        die(f"--gateway: expected the API base URL, such as https://gateway:15480, got "
            f"{base!r}", EXIT_USAGE)
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        die(f"--gateway {base}: plain http would send tokens in the clear; use https "
            f"(http is accepted only for loopback addresses)", EXIT_USAGE)
    return base.rstrip("/") + path


def _verify(cacert: Path | None) -> ssl.SSLContext | bool:
    if cacert is None:
        return True
    if not cacert.is_file():
        die(f"--cacert: no such file {cacert}", EXIT_USAGE)
    return ssl.create_default_context(cafile=str(cacert))


def _refusal(what: str, response: Any) -> str:
    """A one-line description of an HTTP error answer of the gateway."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        text = f"the gateway refused {what} ({body['error']}): {body.get('message', '')}"
    else:
        snippet = " ".join(response.text.split())[:200]
        text = f"the gateway answered HTTP {response.status_code} to {what}: {snippet}"
    if response.status_code == 429:
        retry = response.headers.get("retry-after")
        text += f"; retry after {retry} s" if retry else "; retry later"
    elif response.status_code == 404 and not (isinstance(body, dict) and "error" in body):
        text += " (is --gateway the API base URL, such as https://gateway:15480?)"
    return text


def _request(method: str, url: str, what: str, verify: ssl.SSLContext | bool,
             timeout: float, **kwargs: Any) -> dict[str, Any]:
    import httpx

    try:
        with httpx.Client(verify=verify, timeout=timeout, follow_redirects=False) as client:
            response = client.request(method, url, **kwargs)
    except httpx.ConnectError as exc:
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            hint = "; pass the gateway's certificate with --cacert (or PATHWARDEN_CACERT)"
        die(f"cannot reach {url}: {exc}{hint}")
    except httpx.HTTPError as exc:
        die(f"request to {url} failed: {exc or type(exc).__name__}")
    if response.status_code != 200:
        die(_refusal(what, response))
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        die(f"{url} did not answer with a JSON object (HTTP {response.status_code})")
    return body


def _github_id_token(audience: str, timeout: float) -> str:
    """Request the job's OIDC token the way GitHub documents it for Actions."""
    url = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
    bearer = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
    if not url or not bearer:
        die("--github: ACTIONS_ID_TOKEN_REQUEST_URL/ACTIONS_ID_TOKEN_REQUEST_TOKEN are not "
            "set; run in a GitHub Actions job with `permissions: id-token: write`")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname
                                        and is_loopback(parts.hostname)):
        die(f"--github: refusing to send the request token to a non-https URL {url!r}")
    # The URL carries its own query (api-version); GitHub's toolkit appends the audience.
    url += ("&" if "?" in url else "?") + "audience=" + quote(audience, safe="")
    body = _request("GET", url, "the OIDC token request", True, timeout,
                    headers={"Authorization": f"Bearer {bearer}"})
    value = body.get("value")
    if not isinstance(value, str) or not value:
        die("--github: the ID token response of GitHub has no 'value'")
    return value


def _describe(body: Mapping[str, Any]) -> str:
    """Identity, token ref, expiry, reach and claims of an API answer (never the token)."""
    scope = body.get("connections")
    if "token_scope" in body:  # whoami: connections is what the token can reach
        reach = "connections: " + (", ".join(map(str, scope)) if scope else "none")
    else:
        reach = "scope: " + (", ".join(map(str, scope)) if scope else "any allowed connection")
    text = (f"{body.get('identity')}: token {body.get('token_ref')}, expires "
            f"{body.get('expires_at')}, {reach}")
    claims = body.get("claims")
    if isinstance(claims, dict) and claims:
        text += "; claims: " + ", ".join(f"{k}={v}" for k, v in sorted(claims.items()))
    return text


def login_command(
    gateway: Annotated[str | None, typer.Option(
        "--gateway", envvar=ENV_GATEWAY, show_envvar=True,
        help="The gateway's HTTP API base URL, such as https://gateway:15480.")] = None,
    cacert: CacertOpt = None,
    connection: Annotated[list[str] | None, typer.Option(
        "--connection", help="Scope the token to this connection (repeatable).")] = None,
    ttl: Annotated[str | None, typer.Option(
        help="Requested lifetime, e.g. 15m (capped by the gateway's rule).")] = None,
    oidc_token_env: Annotated[str | None, typer.Option(
        "--oidc-token-env", metavar="VAR",
        help="Environment variable holding the CI provider's OIDC ID token (e.g. GitLab "
             "id_tokens).")] = None,
    oidc_token: Annotated[str | None, typer.Option(
        "--oidc-token", metavar="TOKEN",
        help="The OIDC ID token itself. Discouraged: other processes can read it from the "
             "process list; prefer --oidc-token-env.")] = None,
    github: Annotated[bool, typer.Option(
        "--github", help="In GitHub Actions: request the job's OIDC token from GitHub "
                         "(needs `permissions: id-token: write`).")] = False,
    audience: Annotated[str, typer.Option(
        help="With --github: the audience to request (the trust issuer's audience).")
    ] = "pathwarden",
    token_env: Annotated[str | None, typer.Option(
        "--token-env", metavar="VAR",
        help="Check a pre-issued pathwarden token held in this variable and print it back.")
    ] = None,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="-",
        help="'-': check a pre-issued pathwarden token read from standard input.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each HTTP answer.")] = 30,
) -> None:
    """Get a pathwarden token and print it alone on stdout.

    export PATHWARDEN_TOKEN=$(pathwarden login --gateway https://gw:15480 --github)
    """
    sources = [name for name, given in (
        ("--oidc-token-env", oidc_token_env), ("--oidc-token", oidc_token),
        ("--github", github), ("--token-env", token_env), ("--token", token)) if given]
    if len(sources) != 1:
        die("choose one token source: --github, --oidc-token-env VAR, --oidc-token TOKEN, "
            "--token-env VAR or --token -" + (f" (got {', '.join(sources)})" if sources
                                             else ""), EXIT_USAGE)
    if not gateway:
        die(f"no gateway: pass --gateway https://gateway:15480 or set {ENV_GATEWAY}", EXIT_USAGE)
    verify = _verify(cacert)
    if token_env is not None or token is not None:
        _login_with_pathwarden_token(gateway, verify, token_env, token, connection, ttl, timeout)
        return
    if oidc_token_env is not None:
        oidc = os.environ.get(oidc_token_env, "").strip()
        if not oidc:
            die(f"--oidc-token-env: ${oidc_token_env} is empty or not set", EXIT_USAGE)
    elif oidc_token is not None:
        oidc = oidc_token.strip()
    else:
        oidc = _github_id_token(audience, timeout)
    body = _request("POST", _api_url(gateway, "/v1/token/exchange"), "the OIDC token",
                    verify, timeout,
                    json={"oidc_token": oidc, "connections": connection or None, "ttl": ttl})
    issued = body.get("token")
    if not isinstance(issued, str) or not issued:
        die("the gateway's answer holds no token")
    err.print(escape(f"logged in as {_describe(body)}"))
    sys.stdout.write(issued + "\n")


def _login_with_pathwarden_token(
    gateway: str, verify: ssl.SSLContext | bool, token_env: str | None, token: str | None,
    connection: list[str] | None, ttl: str | None, timeout: float,
) -> None:
    if ttl is not None:
        die("--ttl applies to new tokens; a pre-issued token keeps its expiry", EXIT_USAGE)
    if token_env is not None:
        value = os.environ.get(token_env, "").strip()
        if not value:
            die(f"--token-env: ${token_env} is empty or not set", EXIT_USAGE)
    else:
        if token != "-":  # noqa: S105 - the stdin marker
            die("--token takes only '-' (read the token from standard input): a token on "
                "the command line is visible in the process list; use --token-env", EXIT_USAGE)
        value = sys.stdin.readline().strip()
        if not value:
            die("--token -: standard input holds no token", EXIT_USAGE)
    body = _request("GET", _api_url(gateway, "/v1/whoami"), "the token", verify, timeout,
                    headers={"Authorization": f"Bearer {value}"})
    scope = body.get("connections")
    if connection and scope:
        outside = [c for c in connection if c not in scope]
        if outside:
            die(f"the token is scoped to {', '.join(map(str, scope))}, not "
                f"{', '.join(outside)}")
    err.print(escape(f"token checked: {_describe(body)}"))
    sys.stdout.write(value + "\n")


# -- exec -----------------------------------------------------------------------------


def split_statements(sql: str) -> list[str]:
    """Split SQL into statements as psql does, with PostgreSQL's own scanner.

    Token positions are character offsets (pglast maps them back from bytes).
    Semicolons inside strings, dollar quotes, comments, parentheses and
    ``BEGIN ATOMIC ... END`` bodies do not split; comment-only pieces are
    dropped. Text the scanner cannot read (an unterminated quote) is left to
    the server as one statement, which then reports the error.
    """
    from pglast.parser import ParseError, scan

    try:
        tokens = scan(sql)
    except ParseError:
        return [sql.strip()] if sql.strip() else []
    pieces: list[str] = []
    start = 0
    depth = atomic = 0
    meaningful = False
    previous = ""
    for tok in tokens:
        name = tok.name
        if name in ("SQL_COMMENT", "C_COMMENT"):
            continue
        if name == "ASCII_59" and depth == 0 and atomic == 0:
            if meaningful:
                pieces.append(sql[start : tok.start].strip())
            start, meaningful, previous = tok.end + 1, False, ""
            continue
        meaningful = True
        if name == "ASCII_40":
            depth += 1
        elif name == "ASCII_41":
            depth = max(0, depth - 1)
        elif (name == "ATOMIC" and previous == "BEGIN_P") or (atomic and name == "CASE"):
            atomic += 1
        elif atomic and name == "END_P":
            atomic -= 1
        previous = name
    if meaningful:
        pieces.append(sql[start:].strip())
    return [p for p in pieces if p]


def _gather(sql: list[str] | None, files: list[Path] | None) -> list[str]:
    texts: list[str] = []
    for path in files or []:
        try:
            texts.append(sys.stdin.read() if str(path) == "-" else path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            die(f"--file {path}: {exc}", EXIT_USAGE)
    for item in sql or []:
        texts.append(sys.stdin.read() if item == "-" else item)
    if not texts:
        die("no SQL: pass statements after --, --file FILE, or - to read standard input",
            EXIT_USAGE)
    statements = [s for text in texts for s in split_statements(text)]
    if not statements:
        die("the input holds no SQL statement", EXIT_USAGE)
    return statements


def _json_value(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict | list):
        return json.dumps(value, default=_json_value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


class _Printer:
    """Writes each result in the chosen format as soon as it arrives."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        self._csv_sets = 0

    def result(self, number: int, sql: str, columns: Sequence[str] | None,
               rows: list[tuple[Any, ...]], command: str, rowcount: int) -> None:
        if self.fmt == "json":
            entry: dict[str, object] = {"statement": number, "sql": sql, "command": command,
                                        "rowcount": rowcount}
            if columns is not None:
                entry["columns"] = list(columns)
                entry["rows"] = [list(row) for row in rows]
            sys.stdout.write(json.dumps(entry, default=_json_value) + "\n")
        elif self.fmt == "csv":
            if columns is None:
                err.print(escape(command), highlight=False)
                return
            if self._csv_sets:
                sys.stdout.write("\n")
            self._csv_sets += 1
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([_text(v) for v in row] for row in rows)
        else:
            if columns is not None:
                table = Table(*(escape(c) for c in columns))
                for row in rows:
                    table.add_row(*("[dim]NULL[/]" if v is None else escape(_text(v))
                                    for v in row))
                self.out.print(table)
            self.out.print(escape(command))
        sys.stdout.flush()

    def copy_out(self, number: int, sql: str, data: bytes, command: str,
                 rowcount: int) -> None:
        if self.fmt == "json":
            entry = {"statement": number, "sql": sql, "command": command,
                     "rowcount": rowcount, "copy": data.decode("utf-8", "replace")}
            sys.stdout.write(json.dumps(entry) + "\n")
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            err.print(escape(command), highlight=False)
        sys.stdout.flush()

    def failure(self, number: int, sql: str, sqlstate: str, message: str,
                denied: bool) -> None:
        if self.fmt == "json":
            entry = {"statement": number, "sql": sql,
                     "error": {"sqlstate": sqlstate, "message": message, "denied": denied}}
            sys.stdout.write(json.dumps(entry) + "\n")
            sys.stdout.flush()
        what = "denied" if denied else "failed"
        err.print("[bold red]error:[/] " + escape(
            f"statement {number} {what} (SQLSTATE {sqlstate}): {message}"), markup=True)


def _results(cursor: Any) -> Iterator[tuple[Sequence[str] | None, list[tuple[Any, ...]]]]:
    while True:
        if cursor.description is None:
            yield None, []
        else:
            yield [c.name for c in cursor.description], list(cursor.fetchall())
        if not cursor.nextset():
            return


def exec_command(
    connection: Annotated[str, typer.Argument(help="The gateway connection to run on.")],
    sql: Annotated[list[str] | None, typer.Argument(
        help="SQL to run (after --); several statements each; - reads standard input.",
        show_default=False)] = None,
    file: Annotated[list[Path] | None, typer.Option(
        "--file", "-f", help="Read SQL from this file (repeatable; - is standard input).")
    ] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="Output: table (for people), csv or json (one JSON object per "
                         "statement per line).")] = "table",
    continue_on_error: Annotated[bool, typer.Option(
        "--continue-on-error", help="Run the remaining statements after a failure.")
    ] = False,
    address: AddressOpt = DEFAULT_ADDRESS,
    token_env: TokenEnvOpt = ENV_TOKEN,
    identity: IdentityOpt = None,
    sslmode: SslmodeOpt = None,
    cacert: CacertOpt = None,
    connect_timeout: Annotated[int, typer.Option(help="Seconds to wait for the gateway.")
                               ] = 10,
) -> None:
    """Run SQL statements through the gateway and print their results.

    pathwarden exec app-db -- "select count(*) from users" "analyze users"

    Each statement runs on its own (autocommit, like psql -f); notices go to stderr.
    Exit status: 0 every statement ran; 1 a statement failed; 2 usage error;
    3 a statement was denied by pathwarden policy (SQLSTATE 42501);
    4 cannot connect to the gateway or authentication failed.
    """
    import psycopg

    if fmt not in ("table", "csv", "json"):
        die(f"--format: expected table, csv or json, got {fmt!r}", EXIT_USAGE)
    statements = _gather(sql, file)
    host, port = parse_address(address)
    mode = resolve_sslmode(sslmode, cacert, host)
    token = read_token(token_env)
    user = identity_of(token, token_env, identity)
    params: dict[str, Any] = {
        "host": host, "port": port, "user": user, "dbname": connection, "password": token,
        "sslmode": mode, "connect_timeout": connect_timeout,
        "application_name": "pathwarden exec",
    }
    if cacert is not None:
        params["sslrootcert"] = str(cacert)
    try:
        conn = psycopg.connect(autocommit=True, **params)
    except psycopg.Error as exc:
        die(f"cannot connect to {connection} as {user} through the gateway at "
            f"{host}:{port}: {_first_line(exc)}", EXIT_CONNECT)
    conn.add_notice_handler(lambda diag: err.print(
        escape(f"{diag.severity or 'NOTICE'}: {diag.message_primary or ''}"), highlight=False))
    printer = _Printer(fmt)
    status = EXIT_OK
    with conn:
        for number, statement in enumerate(statements, 1):
            try:
                with conn.cursor() as cur:
                    if _is_copy(statement):
                        _copy(cur, number, statement, printer)
                        continue
                    cur.execute(statement)  # no parameters: the simple query protocol
                    for columns, rows in _results(cur):
                        printer.result(number, statement, columns, rows,
                                       cur.statusmessage or "", cur.rowcount)
            except _CopyInRefused:
                printer.failure(number, statement, "-", _CopyInRefused.message, False)
                status = max(status, EXIT_FAILED)
                if not continue_on_error:
                    break
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    die(f"the connection to the gateway failed at statement {number}: "
                        f"{_first_line(exc)}", EXIT_CONNECT)
                # No SQLSTATE: psycopg refused it client-side (COPY, for one).
                sqlstate = exc.sqlstate or "-"
                message = exc.diag.message_primary or _first_line(exc)
                denied = sqlstate == DENIED_SQLSTATE and message.startswith("pathwarden:")
                printer.failure(number, statement, sqlstate, message, denied)
                status = max(status, EXIT_DENIED if denied else EXIT_FAILED)
                if not continue_on_error:
                    break
    raise typer.Exit(status)


class _CopyInRefused(Exception):
    message = ("COPY FROM STDIN needs a data stream pathwarden exec does not send; use "
               "psql's \\copy, through pathwarden connect")


def _is_copy(statement: str) -> bool:
    from pglast.parser import ParseError, scan

    try:
        tokens = [t for t in scan(statement) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    except ParseError:
        return False
    return bool(tokens) and tokens[0].name == "COPY"


def _copy(cur: Any, number: int, statement: str, printer: _Printer) -> None:
    """COPY ... TO STDOUT: its data as it comes; COPY FROM STDIN is failed with CopyFail."""
    from psycopg import pq

    chunks: list[bytes] = []
    with cur.copy(statement) as copy:
        if cur.pgresult is not None and cur.pgresult.status == pq.ExecStatus.COPY_IN:
            raise _CopyInRefused  # psycopg sends CopyFail: the server ends the COPY
        for data in copy:
            chunks.append(bytes(data))
    printer.copy_out(number, statement, b"".join(chunks), cur.statusmessage or "",
                     cur.rowcount)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[:2]) if text else type(exc).__name__
