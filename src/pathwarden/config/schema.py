"""The configuration schema: one YAML file, validated into frozen pydantic models.

Every model forbids unknown keys, so a misspelt setting is an error with a
line number (see :mod:`pathwarden.config.loader`) instead of a silently
ignored default. Relative paths are resolved against the config file's
directory when the loader passes ``context={"config_dir": ...}``; models built
directly in code keep relative paths as given.

Cross-references (an identity naming a connection) are checked on the root
model; such errors carry ``ctx["at"]``, the location of the offending value
below the root, so the loader can point at the exact line.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pathwarden.config.approvals import ApprovalRules, ApprovalsConfig
from pathwarden.config.durations import (
    Duration,
    _validate_duration,
    format_duration,
    parse_duration,
)
from pathwarden.config.masking import MaskingSettings
from pathwarden.config.names import Name
from pathwarden.config.notifiers import NotifiersConfig
from pathwarden.config.recording import RecordingSettings
from pathwarden.config.secrets import Secret
from pathwarden.config.trust import TrustIssuer
from pathwarden.policy.rules import PolicyConfig

__all__ = [
    "ApiSettings",
    "AuditSettings",
    "ConnectionConfig",
    "GatewayConfig",
    "IdentityConfig",
    "ListenerConfig",
    "ListenerTls",
    "MaskingSettings",
    "PolicyConfig",
    "PostgresConnection",
    "SqlSettings",
    "SshConnection",
    "SshSettings",
    "StoreConfig",
    "TokenSettings",
    "TrustIssuer",
    "split_host_port",
]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    base = info.context.get("config_dir") if isinstance(info.context, dict) else None
    if isinstance(base, Path) and not value.is_absolute():
        return base / value
    return value


#: A filesystem path, relative ones resolved against the config file's directory.
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
# strict: YAML already yields ints, and `true` silently becoming 1 hides a mistake.
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]


def split_host_port(bind: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into its parts; ``ValueError`` says what is wrong."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:15432 or [::1]:15432, got {bind!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {bind!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"IPv6 addresses must be bracketed, e.g. [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port in {bind!r} must be a number from 0 to 65535")
    return host, int(port_text)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListenerTls(_Model):
    """A certificate and key in PEM files for a listener."""

    cert_file: ConfigPath
    key_file: ConfigPath


class _Socket(_Model):
    """Where a gateway endpoint listens, and how clients must protect their token."""

    bind: str
    # None: a self-signed certificate generated in data_dir (shared by every endpoint).
    tls: ListenerTls | None = None
    require_tls: bool = True
    # Lets CI jobs on the gateway's own host go without TLS; the token then crosses
    # only the loopback interface.
    allow_plaintext_loopback: bool = False

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        return _checked_bind(value)

    @property
    def host(self) -> str:
        """The address to bind, without IPv6 brackets."""
        return split_host_port(self.bind)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.bind)[1]


#: Where a listener binds when ``bind`` is not given, by protocol.
DEFAULT_BINDS = {"postgres": "127.0.0.1:15432", "ssh": "127.0.0.1:2222"}


class ListenerConfig(_Socket):
    """One socket the gateway accepts clients of one protocol on.

    PostgreSQL listeners speak TLS (``tls``, ``require_tls``); SSH listeners
    use their own transport encryption and a host key (``host_key``: an
    OpenSSH private key file; None generates ``<data_dir>/ssh_host_ed25519_key``
    on first start).
    """

    name: Name
    protocol: Literal["postgres", "ssh"]
    bind: str = ""
    host_key: ConfigPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_bind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bind" not in data:
            protocol = data.get("protocol")
            if isinstance(protocol, str) and protocol in DEFAULT_BINDS:
                return {**data, "bind": DEFAULT_BINDS[protocol]}
        return data

    @model_validator(mode="after")
    def _check_protocol_fields(self) -> ListenerConfig:
        if self.protocol == "ssh" and self.tls is not None:
            raise PydanticCustomError(
                "listener", "an ssh listener has no tls: SSH encrypts its own transport; "
                "give it a host_key instead", {"at": ("tls",)})
        if self.protocol == "postgres" and self.host_key is not None:
            raise PydanticCustomError(
                "listener", "host_key applies to ssh listeners only", {"at": ("host_key",)})
        return self


class ApiSettings(_Socket):
    """The HTTP API (token exchange, whoami, token administration)."""

    enabled: bool = True
    bind: str = "127.0.0.1:15480"


def _checked_bind(value: str) -> str:
    try:
        split_host_port(value)
    except ValueError as exc:
        raise PydanticCustomError("bind", "{detail}", {"detail": str(exc)}) from None
    return value


class PostgresConnection(_Model):
    """An upstream PostgreSQL database clients reach by using its name as ``dbname``."""

    protocol: Literal["postgres"] = "postgres"
    host: Annotated[str, Field(min_length=1)]
    port: Port = 5432
    database: Annotated[str, Field(min_length=1)]
    user: Annotated[str, Field(min_length=1)]
    password: Secret | None = None
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    sslrootcert: ConfigPath | None = None
    connect_timeout: Duration = timedelta(seconds=10)
    # Until policies exist this is the only switch that lets statements through.
    allow_all: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    # Merged over the top-level ``masking:`` block (see masking/settings.py).
    masking: MaskingSettings | None = None


def _known_host_line(value: str) -> str:
    text = " ".join(value.split())
    parts = text.split(" ")
    # "[host]:port keytype base64 ..." or "host keytype base64" or "keytype base64"
    if len(parts) >= 2 and (parts[0].startswith(("ssh-", "ecdsa-", "sk-")) or len(parts) >= 3):
        return text
    raise PydanticCustomError(
        "known_host",
        "expected a known_hosts line ('host ssh-ed25519 AAAA...') or a public key "
        "('ssh-ed25519 AAAA...'); `ssh-keyscan -p PORT HOST` prints the target's lines",
        {})


KnownHost = Annotated[str, AfterValidator(_known_host_line)]


class SshConnection(_Model):
    """An upstream SSH host clients reach by naming it as the SSH user name.

    The gateway logs in as ``user`` with ``private_key`` and/or ``password``
    (clients never hold them) and accepts the host only if its key is one of
    ``known_hosts`` (inline lines or public keys) or is listed in
    ``known_hosts_file``: an unknown or changed host key refuses the connection.
    """

    protocol: Literal["ssh"]
    host: Annotated[str, Field(min_length=1)]
    port: Port = 22
    user: Annotated[str, Field(min_length=1)]
    password: Secret | None = None
    # An OpenSSH or PEM private key (its text), usually {file: path} or {env: VAR}.
    private_key: Secret | None = None
    private_key_passphrase: Secret | None = None
    known_hosts: list[KnownHost] = Field(default_factory=list)
    known_hosts_file: ConfigPath | None = None
    connect_timeout: Duration = timedelta(seconds=10)
    allow_all: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    masking: MaskingSettings | None = None

    @model_validator(mode="after")
    def _check_credentials(self) -> SshConnection:
        if self.password is None and self.private_key is None:
            raise PydanticCustomError(
                "ssh_connection", "give private_key ({file: path}) and/or password: the "
                "gateway logs in to the host itself, clients never hold its credentials",
                {"at": ("private_key",)})
        if not self.known_hosts and self.known_hosts_file is None:
            raise PydanticCustomError(
                "ssh_connection", "pin the host's key with known_hosts: [\"ssh-ed25519 AAAA...\"] "
                "or known_hosts_file: (`ssh-keyscan -p {port} {host}` prints the lines); the "
                "gateway refuses hosts whose key it cannot check",
                {"port": self.port, "host": self.host, "at": ("known_hosts",)})
        return self


def _connection_protocol(value: Any) -> str:
    if isinstance(value, dict):
        protocol = value.get("protocol", "postgres")
        return protocol if protocol in ("postgres", "ssh") else "unknown"
    return str(getattr(value, "protocol", "unknown"))


def _unknown_protocol(value: Any) -> Any:
    protocol = value.get("protocol") if isinstance(value, dict) else None
    raise PydanticCustomError(
        "protocol", "unknown connection protocol '{protocol}'; supported: postgres, ssh",
        {"protocol": str(protocol), "at": ("protocol",)})


#: Every kind of connection, told apart by ``protocol`` (default ``postgres``).
ConnectionConfig = Annotated[
    Annotated[PostgresConnection, Tag("postgres")]
    | Annotated[SshConnection, Tag("ssh")]
    | Annotated[Any, PlainValidator(_unknown_protocol), Tag("unknown")],
    Discriminator(_connection_protocol),
]


class IdentityConfig(_Model):
    """A principal tokens can be issued to (typically one pipeline stage)."""

    groups: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    max_token_ttl: Duration = timedelta(hours=1)
    # None: any connection; otherwise the only connections its tokens may use.
    connections: list[str] | None = None
    # May call the API's admin endpoints (issue, list and revoke tokens).
    admin: bool = False


def _zero_or_duration(value: object) -> timedelta:
    """A :data:`Duration`, or zero (``0``, ``"0s"``): "no extra time"."""
    if isinstance(value, str):
        try:
            if parse_duration(value) == timedelta(0):
                return timedelta(0)
        except ValueError:
            pass  # the duration validator says what is wrong
    elif value == 0 and not isinstance(value, bool):
        return timedelta(0)
    return _validate_duration(value)


#: A duration that may also be zero.
ZeroOrDuration = Annotated[
    timedelta,
    PlainValidator(_zero_or_duration),
    PlainSerializer(format_duration, return_type=str),
]


class TokenSettings(_Model):
    default_ttl: Duration = timedelta(minutes=15)
    max_ttl: Duration = timedelta(hours=24)  # cap for every identity
    # How often live sessions' tokens are looked up for revocation (one store query).
    revocation_check: Duration = timedelta(seconds=5)
    # How long a session may outlive its token's expiry before it is ended.
    session_grace: ZeroOrDuration = timedelta(0)


class StoreConfig(_Model):
    # None: SQLite at <data_dir>/pathwarden.db. A Secret because a PostgreSQL
    # URL usually carries a password.
    url: Secret | None = None


class AuthLimits(_Model):
    """Failed authentications tolerated, per client address and per identity, in a window.

    Past a limit, logins from that address (or as that identity) are refused
    until the window has passed, even with a valid token. Applies to every
    listener and the API; read at start (a reload does not change it).
    """

    failures_per_source: Annotated[int, Field(ge=1, strict=True)] = 10
    failures_per_identity: Annotated[int, Field(ge=1, strict=True)] = 20
    window: Duration = timedelta(minutes=1)


#: Ciphers the SSH legs may use, fastest first here.
SSH_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr",
               "aes256-ctr", "chacha20-poly1305@openssh.com")


def _check_ciphers(values: list[str]) -> list[str]:
    if not values:
        raise PydanticCustomError("ciphers", "list at least one cipher", {})
    for index, value in enumerate(values):
        if value not in SSH_CIPHERS:
            raise PydanticCustomError(
                "ciphers", "unknown cipher '{name}' (supported: {known})",
                {"name": value, "known": ", ".join(SSH_CIPHERS), "at": (index,)})
    return values


class SshSettings(_Model):
    """How SSH sessions are served (every ssh listener)."""

    # How long a client may take to authenticate.
    login_timeout: Duration = timedelta(seconds=30)
    # Keepalives to the client and to the target; a peer silent for
    # keepalive_count_max intervals is disconnected. 0s: off.
    keepalive_interval: ZeroOrDuration = timedelta(seconds=30)
    keepalive_count_max: Annotated[int, Field(ge=1, strict=True)] = 3
    # Environment variables a client may pass to the target (globs); others are dropped.
    accept_env: list[str] = Field(default_factory=lambda: ["LANG", "LC_*"])
    # Interactive (pty) output is released this long after it stops arriving even
    # without a line end, so prompts and keystroke echo are not held back by masking.
    terminal_flush_delay: Duration = timedelta(milliseconds=5)
    # The same for commands without a terminal (progress output without line ends).
    output_flush_delay: Duration = timedelta(milliseconds=200)
    # Ciphers offered to clients and preferred towards hosts. chacha20-poly1305 is
    # left out by default: asyncssh computes it per packet in Python, which costs
    # a third of the gateway's file transfer throughput (OpenSSH clients, which
    # prefer it, then choose AES).
    ciphers: Annotated[list[str], AfterValidator(_check_ciphers)] = Field(
        default_factory=lambda: list(SSH_CIPHERS[:5]))


class AuditSettings(_Model):
    flush_interval: Duration = timedelta(milliseconds=200)
    max_batch: Annotated[int, Field(ge=1, strict=True)] = 500


_FUNCTION_NAME = re.compile(r"[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?")


def _check_function_names(values: list[str]) -> list[str]:
    out = []
    for index, value in enumerate(values):
        name = value.strip().lower()
        if not _FUNCTION_NAME.fullmatch(name):
            raise PydanticCustomError(
                "function_name",
                "invalid function name '{name}': use a name like pg_terminate_backend "
                "or schema.function",
                {"name": value, "at": (index,)},
            )
        out.append(name)
    return out


FunctionNames = Annotated[list[str], AfterValidator(_check_function_names)]


class SqlSettings(_Model):
    """How SQL is classified for policy."""

    # Functions whose call makes a statement a `function` action. None: the
    # classifier's default list; a list REPLACES that default.
    side_effect_functions: FunctionNames | None = None
    # Added to the list above (default or replaced).
    extra_side_effect_functions: FunctionNames = Field(default_factory=list)

    def effective_side_effect_functions(self, default: frozenset[str]) -> frozenset[str]:
        """The deny-list to classify with, given the classifier's ``default``."""
        if self.side_effect_functions is None and not self.extra_side_effect_functions:
            return default  # the very object: the classifier recognises its default
        base = default if self.side_effect_functions is None else self.side_effect_functions
        return frozenset(base) | frozenset(self.extra_side_effect_functions)


def _default_listeners() -> list[ListenerConfig]:
    return [ListenerConfig(name="postgres", protocol="postgres")]


class GatewayConfig(_Model):
    """The whole configuration file."""

    data_dir: ConfigPath = Field(default=Path(".pathwarden"), validate_default=True)
    listeners: Annotated[list[ListenerConfig], Field(min_length=1)] = Field(
        default_factory=_default_listeners
    )
    connections: dict[Name, ConnectionConfig] = Field(default_factory=dict)
    identities: dict[Name, IdentityConfig] = Field(default_factory=dict)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    store: StoreConfig = Field(default_factory=StoreConfig)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    auth_limits: AuthLimits = Field(default_factory=AuthLimits)
    sql: SqlSettings = Field(default_factory=SqlSettings)
    ssh: SshSettings = Field(default_factory=SshSettings)
    policies: list[PolicyConfig] = Field(default_factory=list)
    masking: MaskingSettings = Field(default_factory=MaskingSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    notifiers: NotifiersConfig = ()
    # OIDC issuers whose tokens CI jobs may exchange for pathwarden tokens (the API).
    trust: list[TrustIssuer] = Field(default_factory=list)
    api: ApiSettings = Field(default_factory=ApiSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        names: dict[str, int] = {}
        binds: dict[tuple[str, int], int] = {}
        for index, listener in enumerate(self.listeners):
            if listener.name in names:
                _fail(
                    ("listeners", index, "name"),
                    f"duplicate listener name {listener.name!r} "
                    f"(also listeners[{names[listener.name]}])",
                )
            names[listener.name] = index
            address = (listener.host, listener.port)
            if address in binds and listener.port != 0:
                _fail(
                    ("listeners", index, "bind"),
                    f"listeners[{binds[address]}] already binds {listener.bind}",
                )
            binds[address] = index
        for identity_name, identity in self.identities.items():
            for index, connection in enumerate(identity.connections or ()):
                if connection not in self.connections:
                    _fail(
                        ("identities", identity_name, "connections", index),
                        f"unknown connection {connection!r}; "
                        f"defined connections: {_names(self.connections)}",
                    )
        self._check_policy_references()
        self._check_approval_references()
        if self.tokens.default_ttl > self.tokens.max_ttl:
            _fail(
                ("tokens", "default_ttl"),
                f"default_ttl {format_duration(self.tokens.default_ttl)} exceeds "
                f"max_ttl {format_duration(self.tokens.max_ttl)}",
            )
        self._check_tokens_and_api(binds)
        self._check_trust()
        return self

    def _check_tokens_and_api(self, binds: dict[tuple[str, int], int]) -> None:
        if self.tokens.revocation_check < timedelta(milliseconds=100):
            _fail(
                ("tokens", "revocation_check"),
                f"revocation_check {format_duration(self.tokens.revocation_check)} is below "
                "the 100ms minimum (each check is a store query)",
            )
        if self.tokens.session_grace < timedelta(0):
            _fail(("tokens", "session_grace"), "session_grace must not be negative")
        address = (self.api.host, self.api.port)
        if self.api.enabled and address in binds and self.api.port != 0:
            _fail(
                ("api", "bind"),
                f"listeners[{binds[address]}] already binds {self.api.bind}",
            )

    def _check_trust(self) -> None:
        names: dict[str, int] = {}
        urls: dict[str, int] = {}
        for index, issuer in enumerate(self.trust):
            if issuer.name in names:
                _fail(
                    ("trust", index, "name"),
                    f"duplicate trust issuer name {issuer.name!r} "
                    f"(also trust[{names[issuer.name]}])",
                )
            names[issuer.name] = index
            url = issuer.issuer.rstrip("/")
            if url in urls:
                _fail(
                    ("trust", index, "issuer"),
                    f"issuer {issuer.issuer!r} is already trusted as trust[{urls[url]}]; "
                    "list each issuer once, with all its rules",
                )
            urls[url] = index
            for number, rule in enumerate(issuer.rules):
                if rule.identity not in self.identities:
                    _fail(
                        ("trust", index, "rules", number, "identity"),
                        f"unknown identity {rule.identity!r} in rule {number + 1} of trust "
                        f"issuer {issuer.name}; defined identities: {_names(self.identities)}",
                    )

    def _check_approval_references(self) -> None:
        names = {p.name for p in self.policies}
        for policy in self.approvals.policies:
            if policy not in names:
                _fail(("approvals", "policies", policy),
                      f"unknown policy {policy!r}; defined policies: "
                      f"{', '.join(sorted(names)) or '(none)'}")
        levels: list[tuple[tuple[str | int, ...], ApprovalRules]] = [
            (("approvals", "rules"), self.approvals.rules)]
        levels += [(("approvals", "policies", n), r) for n, r in self.approvals.policies.items()]
        for at, rules in levels:
            for index, entry in enumerate(rules.approvers):
                if not entry.startswith("group:") and entry not in self.identities:
                    _fail((*at, "approvers", index),
                          f"unknown identity {entry!r} among approvers; defined identities: "
                          f"{_names(self.identities)} (use \"group:<name>\" for a group)")

    def _check_policy_references(self) -> None:
        seen: dict[str, int] = {}
        for index, policy in enumerate(self.policies):
            if policy.name in seen:
                _fail(
                    ("policies", index, "name"),
                    f"duplicate policy name {policy.name!r} (also policies[{seen[policy.name]}]); "
                    "decisions name the policy, so names must be unique",
                )
            seen[policy.name] = index
            if policy.masking is not None:
                _policy_masking(index, policy.masking)
            for entry_index, entry in enumerate(policy.identities):
                if entry.kind in ("name", "attributes") and entry.value \
                        and entry.value not in self.identities:
                    _fail(
                        ("policies", index, "identities", entry_index),
                        f"unknown identity {entry.value!r} in policy {policy.name}; "
                        f"defined identities: {_names(self.identities)} "
                        '(use "group:<name>" for a group, "*" for everyone)',
                    )
            for entry_index, conn in enumerate(policy.connections):
                if conn.kind == "name" and conn.value not in self.connections:
                    _fail(
                        ("policies", index, "connections", entry_index),
                        f"unknown connection {conn.value!r} in policy {policy.name}; "
                        f"defined connections: {_names(self.connections)} "
                        '(use {labels: {key: glob}} to match by label, "*" for all)',
                    )


def _policy_masking(index: int, raw: dict[str, Any]) -> MaskingSettings:
    """Validate a policy's ``masking:`` block (kept as a mapping in the policy model)."""
    try:
        return MaskingSettings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        inner = err.get("ctx", {}).get("at", ())
        loc = tuple(err["loc"]) + tuple(inner)
        field = ".".join(str(p) for p in loc)
        _fail(("policies", index, "masking", *loc), f"masking.{field}: {err['msg']}")
        raise AssertionError("unreachable") from None


def policy_masking(policy: PolicyConfig) -> MaskingSettings | None:
    """A policy's masking settings (validated when the configuration was loaded)."""
    return None if policy.masking is None else MaskingSettings.model_validate(policy.masking)


def _names(mapping: dict[str, Any]) -> str:
    return ", ".join(sorted(mapping)) or "(none)"


def _fail(at: tuple[str | int, ...], detail: str) -> None:
    # "at" lets the loader point at the offending value rather than the file's top.
    raise PydanticCustomError("reference", "{detail}", {"detail": detail, "at": at})
