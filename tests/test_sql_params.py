"""Which column each bind parameter is written to or compared with (masking of audit params)."""

from __future__ import annotations

import pytest

from pathwarden.policy.sql_params import param_columns


@pytest.mark.parametrize(("sql", "expected"), [
    ("insert into t (name, password) values ($1, $2), ($3, $4)",
     {1: "name", 2: "password", 3: "name", 4: "password"}),
    ("update u set api_key = $1 where id = $2", {1: "api_key", 2: "id"}),
    ("select * from u where u.password = $1 and $2 = token", {1: "password", 2: "token"}),
    ("select 1 from u where api_key in ($1, $2::text)", {1: "api_key", 2: "api_key"}),
    ("insert into u (id, secret) values ($1, $2::text) "
     "on conflict (id) do update set secret = $3", {1: "id", 2: "secret", 3: "secret"}),
    ("alter role deployer password $1", {1: "password"}),
    ("select $1, $2", {}),
    ("select 1", {}),
    ("not sql at all $1 (", {}),
])
def test_param_columns(sql: str, expected: dict[int, str]) -> None:
    assert dict(param_columns(sql)) == expected
