"""Gateway configuration: one YAML file validated into frozen models.

Start with :func:`load_config`; every problem is a :class:`ConfigError` whose
message names the file, line, column and field.
"""

from pathwarden.config.durations import Duration, format_duration, parse_duration
from pathwarden.config.errors import ConfigError
from pathwarden.config.loader import load_config, parse_config
from pathwarden.config.schema import (
    AuditSettings,
    ConnectionConfig,
    GatewayConfig,
    IdentityConfig,
    ListenerConfig,
    ListenerTls,
    PostgresConnection,
    SshConnection,
    SshSettings,
    StoreConfig,
    TokenSettings,
    split_host_port,
)
from pathwarden.config.secrets import Secret

__all__ = [
    "AuditSettings",
    "ConfigError",
    "ConnectionConfig",
    "Duration",
    "GatewayConfig",
    "IdentityConfig",
    "ListenerConfig",
    "ListenerTls",
    "PostgresConnection",
    "Secret",
    "SshConnection",
    "SshSettings",
    "StoreConfig",
    "TokenSettings",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "split_host_port",
]
