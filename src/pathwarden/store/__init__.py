"""Persistence for tokens, sessions and statements (SQLite or PostgreSQL).

Open one with ``await open_store(store_url_for(config))``; program against the
:class:`Store` protocol. Every failure is a :class:`StoreError`.
"""

from pathwarden.store.base import (
    MIN_PREFIX,
    AmbiguousPrefix,
    NotFound,
    Store,
    StoreError,
    TokenRecord,
)
from pathwarden.store.recordings import RecordingRow
from pathwarden.store.sql import SqlStore, open_store, store_url_for

__all__ = [
    "MIN_PREFIX",
    "AmbiguousPrefix",
    "NotFound",
    "RecordingRow",
    "SqlStore",
    "Store",
    "StoreError",
    "TokenRecord",
    "open_store",
    "store_url_for",
]
