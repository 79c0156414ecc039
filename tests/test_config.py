"""Specification of pathwarden.config: schema, YAML loading, error locations, secrets."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from pathwarden.config import (
    ConfigError,
    GatewayConfig,
    ListenerConfig,
    Secret,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    split_host_port,
)

EXAMPLE = """\
data_dir: .pathwarden
listeners:
  - name: pg
    protocol: postgres
    bind: 127.0.0.1:15432
    allow_plaintext_loopback: true
connections:
  test-db:
    host: 127.0.0.1
    port: 5432
    database: test
    user: app
    password: {env: TEST_DB_PASSWORD}
    allow_all: true
identities:
  ci-build: {groups: [ci]}
  ci-test: {groups: [ci], max_token_ttl: 30m, connections: [test-db]}
"""


def write(tmp_path: Path, text: str, name: str = "pathwarden.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="pw.yaml")
    return str(info.value)


# -- loading the documented example -------------------------------------------


def test_example_config_loads_with_its_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))

    assert config.data_dir == tmp_path.resolve() / ".pathwarden"
    (listener,) = config.listeners
    assert (listener.name, listener.host, listener.port) == ("pg", "127.0.0.1", 15432)
    assert listener.allow_plaintext_loopback
    assert listener.require_tls
    assert listener.tls is None
    db = config.connections["test-db"]
    assert (db.host, db.port, db.database, db.user, db.allow_all) == (
        "127.0.0.1",
        5432,
        "test",
        "app",
        True,
    )
    assert db.password == Secret.from_env("TEST_DB_PASSWORD")
    assert db.sslmode == "prefer"
    assert db.connect_timeout == timedelta(seconds=10)
    assert config.identities["ci-build"].connections is None
    assert config.identities["ci-build"].max_token_ttl == timedelta(hours=1)
    assert config.identities["ci-test"].max_token_ttl == timedelta(minutes=30)
    assert config.identities["ci-test"].connections == ["test-db"]
    assert config.tokens.default_ttl == timedelta(minutes=15)
    assert config.tokens.max_ttl == timedelta(hours=24)


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))

    (listener,) = config.listeners
    assert (listener.protocol, listener.bind) == ("postgres", "127.0.0.1:15432")
    assert config.connections == {}
    assert config.identities == {}
    assert config.store.url is None
    assert config.audit.flush_interval == timedelta(milliseconds=200)
    assert config.audit.max_batch == 500
    assert config.log_level == "info"
    assert config.data_dir == tmp_path.resolve() / ".pathwarden"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data_dir: /var/lib/pathwarden\n"))
    assert config.data_dir == Path("/var/lib/pathwarden")


def test_relative_tls_and_secret_paths_resolve_against_the_config_directory(
    tmp_path: Path,
) -> None:
    text = (
        "listeners:\n"
        "  - {name: pg, protocol: postgres, tls: {cert_file: c.pem, key_file: k.pem}}\n"
        "connections:\n"
        "  db: {host: h, database: d, user: u, password: {file: pw.txt}, sslrootcert: ca.pem}\n"
    )
    config = load_config(write(tmp_path, text))

    base = tmp_path.resolve()
    tls = config.listeners[0].tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file) == (base / "c.pem", base / "k.pem")
    assert config.connections["db"].sslrootcert == base / "ca.pem"
    assert config.connections["db"].password == Secret.from_file(base / "pw.txt")


def test_models_are_frozen() -> None:
    config = parse_config(EXAMPLE)
    with pytest.raises(ValidationError):
        config.log_level = "debug"  # type: ignore[misc]


# -- error locations -------------------------------------------------------------


def test_type_error_names_file_line_column_and_field() -> None:
    text = EXAMPLE.replace("port: 5432", "port: abc")
    assert error_of(text) == (
        "pw.yaml:10:11: connections.test-db.port: Input should be a valid integer (got 'abc')"
    )


def test_load_config_errors_use_the_path_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: loud\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:1:12: log_level: Input should be 'debug', 'info', 'warning' or 'error' "
        "(got 'loud')"
    )


def test_misspelt_key_is_an_error_pointing_at_the_key_with_a_suggestion() -> None:
    text = "listeners:\n  - name: pg\n    protocol: postgres\n    requre_tls: false\n"
    message = error_of(text)
    assert message.startswith(
        "pw.yaml:4:5: listeners[0].requre_tls: unknown field 'requre_tls'; "
        "did you mean 'require_tls'?"
    )
    assert "valid fields: allow_plaintext_loopback, bind, host_key, name" in message


def test_unknown_top_level_key_is_an_error() -> None:
    assert error_of("log_levle: info\n").startswith(
        "pw.yaml:1:1: log_levle: unknown field 'log_levle'; did you mean 'log_level'?"
    )


def test_missing_field_points_at_the_enclosing_mapping() -> None:
    text = "connections:\n  db:\n    host: h\n    user: u\n"
    assert error_of(text) == "pw.yaml:3:5: connections.db.database: required field is missing"


def test_every_problem_is_reported_one_per_line() -> None:
    text = "connections:\n  db: {host: h, database: d, user: u, port: x, sslmode: on}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="pw.yaml")
    assert len(info.value.problems) == 2
    assert str(info.value).splitlines() == list(info.value.problems)
    assert info.value.problems[0].startswith("pw.yaml:2:45: connections.db.port:")
    assert info.value.problems[1].startswith("pw.yaml:2:57: connections.db.sslmode:")


def test_identity_naming_an_unknown_connection_points_at_that_entry() -> None:
    text = EXAMPLE.replace("connections: [test-db]", "connections: [test-db, prod]")
    assert error_of(text) == (
        "pw.yaml:17:70: identities.ci-test.connections[1]: unknown connection 'prod'; "
        "defined connections: test-db"
    )


def test_invalid_connection_name_points_at_the_key() -> None:
    text = "connections:\n  'bad name': {host: h, database: d, user: u}\n"
    message = error_of(text)
    assert message.startswith("pw.yaml:2:3: connections.bad name: invalid name 'bad name'")


@pytest.mark.parametrize("name", ["a", "test-db", "db_1.prod", "9lives", "x" * 63])
def test_valid_names_are_accepted(name: str) -> None:
    config = parse_config(f"connections:\n  {name}: {{host: h, database: d, user: u}}\n")
    assert name in config.connections


@pytest.mark.parametrize("name", ["-db", ".db", "x" * 64, "a b", "db/1", "é"])
def test_invalid_names_are_refused(name: str) -> None:
    assert "invalid name" in error_of(f"identities:\n  '{name}': {{}}\n")


def test_default_ttl_above_max_ttl_is_refused() -> None:
    assert error_of("tokens:\n  default_ttl: 2d\n") == (
        "pw.yaml:2:16: tokens.default_ttl: default_ttl 2d exceeds max_ttl 1d"
    )


def test_duplicate_listener_names_and_binds_are_refused() -> None:
    dup_name = (
        "listeners:\n  - {name: a, protocol: postgres}\n"
        "  - {name: a, protocol: postgres, bind: '127.0.0.1:1'}\n"
    )
    assert "listeners[1].name: duplicate listener name 'a'" in error_of(dup_name)
    dup_bind = "listeners:\n  - {name: a, protocol: postgres}\n  - {name: b, protocol: postgres}\n"
    assert "listeners[1].bind: listeners[0] already binds 127.0.0.1:15432" in error_of(dup_bind)


def test_yaml_syntax_error_has_a_line_number() -> None:
    message = error_of("connections:\n  db: {host: h\nlog_level: info\n")
    assert message.startswith("pw.yaml:3:")
    assert "YAML syntax error" in message


def test_yaml_syntax_error_does_not_quote_the_file() -> None:
    message = error_of("connections:\n  db: {password: hunter2, host: [\n")
    assert "hunter2" not in message


def test_duplicate_keys_are_refused() -> None:
    text = (
        "connections:\n  db: {host: a, database: d, user: u}\n"
        "  db: {host: b, database: d, user: u}\n"
    )
    assert error_of(text) == "pw.yaml:3:3: duplicate key 'db' (first defined on line 2)"


def test_top_level_must_be_a_mapping() -> None:
    assert error_of("- a\n- b\n") == (
        "pw.yaml:1:1: expected a mapping of settings at the top level, got a list"
    )


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(path)


def test_booleans_are_not_accepted_as_numbers() -> None:
    assert error_of("audit: {max_batch: true}\n") == (
        "pw.yaml:1:20: audit.max_batch: Input should be a valid integer (got True)"
    )


# -- listeners -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("127.0.0.1:15432", "127.0.0.1", 15432),
        ("[::1]:15432", "::1", 15432),
        ("0.0.0.0:5432", "0.0.0.0", 5432),
        ("localhost:0", "localhost", 0),
    ],
)
def test_bind_is_split_into_host_and_port(bind: str, host: str, port: int) -> None:
    listener = ListenerConfig(name="pg", protocol="postgres", bind=bind)
    assert (listener.host, listener.port) == (host, port)


@pytest.mark.parametrize(
    ("bind", "problem"),
    [
        ("::1:15432", "IPv6 addresses must be bracketed, e.g. [::1]:15432"),
        ("15432", "expected host:port"),
        ("host:99999", "must be a number from 0 to 65535"),
        ("host:http", "must be a number from 0 to 65535"),
        ("[nope]:1", "is not an IPv6 address"),
    ],
)
def test_bad_bind_is_explained(bind: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        split_host_port(bind)
    message = error_of(f"listeners:\n  - {{name: pg, protocol: postgres, bind: '{bind}'}}\n")
    assert message.startswith("pw.yaml:2:42: listeners[0].bind: ")
    assert problem in message


# -- durations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("200ms", timedelta(milliseconds=200)),
        ("2d", timedelta(days=2)),
        ("45s", timedelta(seconds=45)),
        ("1.5h", timedelta(minutes=90)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "15", "15x", "1m1h", "1h1h", "1h 30m", "-5m", "m", "1.m"])
def test_parse_duration_refuses_malformed_input_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(text)
    assert "e.g." in str(info.value) or "largest first" in str(info.value)


@given(st.integers(min_value=0, max_value=10**15))
def test_format_duration_round_trips(micros: int) -> None:
    value = timedelta(microseconds=micros)
    assert parse_duration(format_duration(value)) == value


def test_durations_in_the_schema_accept_strings_and_integer_seconds() -> None:
    config = parse_config("tokens: {default_ttl: 90, max_ttl: 2h}\naudit: {flush_interval: 50ms}\n")
    assert config.tokens.default_ttl == timedelta(seconds=90)
    assert config.tokens.max_ttl == timedelta(hours=2)
    assert config.audit.flush_interval == timedelta(milliseconds=50)
    tokens = config.model_dump()["tokens"]
    assert (tokens["default_ttl"], tokens["max_ttl"]) == ("1m30s", "2h")


def test_bad_duration_in_the_schema_is_located() -> None:
    assert error_of("tokens:\n  max_ttl: 10x\n") == (
        "pw.yaml:2:12: tokens.max_ttl: invalid duration '10x'; use a number followed by "
        "d, h, m, s or ms, e.g. '15m', '1h30m', '200ms'"
    )
    assert error_of("tokens:\n  max_ttl: 0s\n").endswith("duration must be greater than zero")


# -- secrets ---------------------------------------------------------------------


def test_env_secret_is_read_when_revealed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(EXAMPLE)
    monkeypatch.setenv("TEST_DB_PASSWORD", "s3cret")
    password = config.connections["test-db"].password
    assert password is not None
    assert password.reveal() == "s3cret"


def test_unset_env_secret_names_the_field_and_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_DB_PASSWORD", raising=False)
    password = parse_config(EXAMPLE, source="pw.yaml").connections["test-db"].password
    assert password is not None
    with pytest.raises(ConfigError) as info:
        password.reveal()
    assert str(info.value) == (
        "pw.yaml:13:15: connections.test-db.password: environment variable "
        "TEST_DB_PASSWORD is not set; export it in the gateway's environment"
    )


def test_file_secret_strips_exactly_one_trailing_newline(tmp_path: Path) -> None:
    write(tmp_path, "pa ss\n\n", name="pw.txt")
    config = load_config(write(tmp_path, "store: {url: {file: pw.txt}}\n"))
    assert config.store.url is not None
    assert config.store.url.reveal() == "pa ss\n"


def test_unreadable_secret_file_names_the_field(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "store:\n  url: {file: missing.txt}\n"))
    assert config.store.url is not None
    with pytest.raises(ConfigError) as info:
        config.store.url.reveal()
    assert str(info.value).startswith(f"{tmp_path / 'pathwarden.yaml'}:2:8: store.url: ")
    assert "cannot read secret file" in str(info.value)
    assert "No such file or directory" in str(info.value)


def test_inline_secret_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(
        "connections:\n  db: {host: h, database: d, user: u, password: hunter2}\n"
    )
    password = config.connections["db"].password
    assert password is not None
    assert password.reveal() == "hunter2"
    for rendering in (repr(config), str(config), repr(password), str(password), f"{password}"):
        assert "hunter2" not in rendering
    assert config.model_dump()["connections"]["db"]["password"] == "**********"
    assert "hunter2" not in config.model_dump_json()


def test_env_secret_renders_as_its_source() -> None:
    secret = Secret.from_env("PGPASS")
    assert repr(secret) == str(secret) == "Secret(env=PGPASS)"
    assert GatewayConfig.model_validate({"store": {"url": {"env": "PGPASS"}}}).model_dump()[
        "store"
    ] == {"url": {"env": "PGPASS"}}


@pytest.mark.parametrize(
    ("yaml_value", "problem"),
    [
        ("12345", "a secret that looks like a number must be quoted in YAML"),
        ("{env: 1X}", "env must name an environment variable"),
        ("{vault: x}", "expected {env: VAR}, {file: path} or a quoted string"),
        ("{env: A, file: b}", "expected {env: VAR}, {file: path} or a quoted string"),
    ],
)
def test_malformed_secret_is_explained_without_echoing_it(yaml_value: str, problem: str) -> None:
    message = error_of(
        f"connections:\n  db: {{host: h, database: d, user: u, password: {yaml_value}}}\n"
    )
    assert message.startswith("pw.yaml:2:49: connections.db.password: ")
    assert problem in message
    assert "12345" not in message


def test_empty_env_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_PW", "")
    with pytest.raises(ConfigError, match="EMPTY_PW is empty"):
        Secret.from_env("EMPTY_PW").reveal()


def test_secret_value_is_not_read_at_load_time(tmp_path: Path) -> None:
    # Loading must work on a machine that lacks the secrets (e.g. for the CLI).
    assert "NO_SUCH_VAR_FOR_PATHWARDEN" not in os.environ
    config = load_config(write(tmp_path, "store: {url: {env: NO_SUCH_VAR_FOR_PATHWARDEN}}\n"))
    assert config.store.url == Secret.from_env("NO_SUCH_VAR_FOR_PATHWARDEN")


def test_recording_fsync_off_may_be_written_bare_in_yaml() -> None:
    # YAML reads a bare `off` as false; the setting takes it as meant.
    assert parse_config("recording: {fsync: off}\n").recording.fsync == "off"
    assert parse_config("recording: {fsync: interval}\n").recording.fsync == "interval"
    with pytest.raises(ConfigError):
        parse_config("recording: {fsync: true}\n")
