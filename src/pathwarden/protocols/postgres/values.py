"""Readable text for bind parameters sent in binary format, for the audit trail.

Clients such as asyncpg and psycopg send parameters in binary. The audit shows
the common scalar types the way PostgreSQL would print them (documentation,
"Binary format" of each type's send/recv functions); anything else is shown
as hex. Nothing here is used to make decisions: it only renders values.
"""

from __future__ import annotations

import struct
import uuid

# Type OIDs from pg_type.dat.
BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID = 16, 17, 20, 21, 23, 25, 26
FLOAT4, FLOAT8, BPCHAR, VARCHAR, NAME, UUID, JSON, JSONB = 700, 701, 1042, 1043, 19, 2950, 114, 3802

_INTS = {INT2: struct.Struct("!h"), INT4: struct.Struct("!i"), INT8: struct.Struct("!q"),
         OID: struct.Struct("!I")}
_FLOATS = {FLOAT4: struct.Struct("!f"), FLOAT8: struct.Struct("!d")}
_TEXTS = frozenset({TEXT, BPCHAR, VARCHAR, NAME, JSON})


def render_binary(type_oid: int, data: bytes) -> str:
    """Text for a binary-format value of ``type_oid``; hex when the type is not known."""
    try:
        if type_oid in _INTS:
            fmt = _INTS[type_oid]
            if len(data) == fmt.size:
                return str(fmt.unpack(data)[0])
        elif type_oid in _FLOATS:
            fmt = _FLOATS[type_oid]
            if len(data) == fmt.size:
                return repr(fmt.unpack(data)[0])
        elif type_oid == BOOL and len(data) == 1:
            return "true" if data[0] else "false"
        elif type_oid in _TEXTS:
            return data.decode("utf-8")
        elif type_oid == JSONB and data[:1] == b"\x01":
            return data[1:].decode("utf-8")
        elif type_oid == UUID and len(data) == 16:
            return str(uuid.UUID(bytes=data))
    except (UnicodeDecodeError, ValueError):
        pass
    return "\\x" + data.hex()
