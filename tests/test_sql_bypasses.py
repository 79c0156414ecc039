"""SQL that looks like a read (or a plain write) but has effects on PostgreSQL 15.

Each case was confirmed on a PostgreSQL 15 server (as the upstream login user the
gateway uses) before the classifier learned to refuse it; here they are pure
classifier + engine checks, so no server is needed.

Two tokens, as in docs/policy.md:

- ``ro``: ``allow: [read]``
- ``rw``: ``allow: [read, write]`` with
  ``deny: [ddl, privilege, procedural, server_io, function]``
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from pathwarden.model import ConnectionRef, Identity, Operation, Protocol, Verdict
from pathwarden.policy import PolicyConfig, PolicyEngine
from pathwarden.policy.sql import SqlContext, classify_sql

RO: dict[str, Any] = {"name": "ro", "identities": ["ro"], "connections": ["*"],
                      "allow": ["read"]}
RW: dict[str, Any] = {"name": "rw", "identities": ["rw"], "connections": ["*"],
                      "allow": ["read", "write"],
                      "deny": ["ddl", "privilege", "procedural", "server_io", "function"]}
ENGINE = PolicyEngine([PolicyConfig.model_validate(p) for p in (RO, RW)], version=1,
                      cache_size=0)
CONNECTION = ConnectionRef("db", Protocol.POSTGRES, MappingProxyType({}))


def verdict(sql: str, who: str) -> Verdict:
    result = classify_sql(sql, SqlContext())
    op = Operation(session_id="s", seq=1,
                   identity=Identity(who, (), claims=MappingProxyType({})),
                   connection=CONNECTION, protocol=Protocol.POSTGRES, kind="query",
                   text=sql, actions=result.actions, unclassified=result.error)
    return ENGINE.decide(op).verdict


def bypass(sql: str, reason: str, who: str = "ro") -> Any:
    # ``reason`` names the fix that closed it.
    return pytest.param(sql, who, id=f"{who}:{sql[:60]}")


_ADD = "add {} to DEFAULT_SIDE_EFFECT_FUNCTIONS (policy/sql.py)"

CASES = [
    # --- built-in (pg_catalog) functions missing from DEFAULT_SIDE_EFFECT_FUNCTIONS ---
    # pg_read_file_old is pg_read_file under another name: reads any server file.
    bypass("SELECT pg_read_file_old('/etc/passwd', 0, 100)", _ADD.format("pg_read_file_old")),
    bypass("SELECT pg_rotate_logfile_old()", _ADD.format("pg_rotate_logfile_old")),
    # Stats resets: only pg_stat_reset and pg_stat_reset_shared are listed.
    bypass("SELECT pg_stat_reset_single_table_counters('t'::regclass)",
           _ADD.format("pg_stat_reset_single_table_counters")),
    bypass("SELECT pg_stat_reset_single_function_counters('f'::regproc)",
           _ADD.format("pg_stat_reset_single_function_counters")),
    bypass("SELECT pg_stat_reset_slru(NULL)", _ADD.format("pg_stat_reset_slru")),
    bypass("SELECT pg_stat_reset_replication_slot(NULL)",
           _ADD.format("pg_stat_reset_replication_slot")),
    bypass("SELECT pg_stat_reset_subscription_stats(NULL)",
           _ADD.format("pg_stat_reset_subscription_stats")),
    # Replication origins: create/drop/session_setup are listed, these are not.
    bypass("SELECT pg_replication_origin_advance('o1', '0/AABBCC')",
           _ADD.format("pg_replication_origin_advance")),
    bypass("SELECT pg_replication_origin_xact_setup('0/0', now())",
           _ADD.format("pg_replication_origin_xact_setup (and _xact_reset, _session_reset)")),
    # Index maintenance through functions (what VACUUM, class maintenance, would do).
    bypass("SELECT brin_summarize_new_values('bi')", _ADD.format("brin_summarize_new_values")),
    bypass("SELECT brin_summarize_range('bi', 0)", _ADD.format("brin_summarize_range")),
    bypass("SELECT brin_desummarize_range('bi', 0)", _ADD.format("brin_desummarize_range")),
    bypass("SELECT gin_clean_pending_list('gi')", _ADD.format("gin_clean_pending_list")),
    bypass("SELECT pg_log_backend_memory_contexts(pg_backend_pid())",
           _ADD.format("pg_log_backend_memory_contexts")),
    bypass("SELECT pg_nextoid('pg_class', 'oid', 'pg_class_oid_index')",
           _ADD.format("pg_nextoid")),
    # Server configuration files (pg_hba.conf, pg_ident.conf, postgresql.conf).
    bypass("SELECT * FROM pg_hba_file_rules()", _ADD.format("pg_hba_file_rules")),
    bypass("SELECT * FROM pg_ident_file_mappings()", _ADD.format("pg_ident_file_mappings")),
    bypass("SELECT * FROM pg_show_all_file_settings()",
           _ADD.format("pg_show_all_file_settings")),
    # --- contrib extensions shipped with PostgreSQL ---
    # pg_surgery: deletes a live row (count went 1992 -> 1991 on the test server).
    bypass("SELECT heap_force_kill('t'::regclass, ARRAY['(0,2)']::tid[])",
           _ADD.format("heap_force_kill and heap_force_freeze (pg_surgery)")),
    bypass("SELECT pg_truncate_visibility_map('t')",
           _ADD.format("pg_truncate_visibility_map (pg_visibility)")),
    bypass("SELECT pg_stat_statements_reset()",
           _ADD.format("pg_stat_statements_reset (pg_stat_statements)")),
    bypass("SELECT * FROM pg_logdir_ls()",
           _ADD.format("pg_logdir_ls, pg_file_read, pg_file_length, pg_logfile_rotate "
                       "(adminpack)")),
    # Run SQL given as text, like query_to_xml: the side-effect call is invisible to the
    # parser (lo_create(4242) really created large object 4242 through both).
    bypass("SELECT * FROM crosstab('SELECT 1::text, 1::text, lo_create(4242)::text') "
           "AS x(a text, b text)",
           _ADD.format("crosstab, crosstab2, crosstab3, crosstab4, connectby (tablefunc)")),
    # Same hole as a role escape: crosstab is EXECUTE to PUBLIC, and this switched a
    # non-superuser upstream user to role "other" (SET ROLE, which is `privilege`).
    bypass("SELECT * FROM crosstab('SELECT 1::text, 1::text, "
           "set_config(''role'', ''other'', false)') AS x(a text, b text)",
           _ADD.format("crosstab (tablefunc)")),
    bypass("SELECT * FROM xpath_table('id', '''<a/>''', 't', '/a', "
           "'lo_create(4343) > 0 LIMIT 1') AS x(id int, a text)",
           _ADD.format("xpath_table (xml2)")),
    # --- transaction plumbing that changes data ---
    # COMMIT/ROLLBACK PREPARED finish *another* session's prepared transaction (same
    # upstream user): a read token commits (or discards) a write token's pending rows.
    bypass("COMMIT PREPARED 'w2'",
           "classify commit_prepared/rollback_prepared (flag two_phase) outside the "
           "implicitly allowed `transaction` plumbing, e.g. as class write"),
    bypass("ROLLBACK PREPARED 'w2'",
           "classify commit_prepared/rollback_prepared (flag two_phase) outside the "
           "implicitly allowed `transaction` plumbing, e.g. as class write"),
    bypass("PREPARE TRANSACTION 'held'",
           "PREPARE TRANSACTION keeps locks and xmin after the session ends: do not "
           "allow prepare_transaction as plumbing"),
    # --- the read/write token ---
    # Catalog DML is DDL/privilege: this really made role app a superuser.
    bypass("UPDATE pg_catalog.pg_authid SET rolsuper = true WHERE rolname = 'app'",
           "classify INSERT/UPDATE/DELETE/MERGE/COPY FROM/TRUNCATE on pg_catalog.* as ddl "
           "(pg_authid, pg_auth_members, pg_db_role_setting, pg_default_acl: privilege)",
           who="rw"),
    bypass("INSERT INTO pg_auth_members (oid, roleid, member, grantor, admin_option) "
           "VALUES (1, 10, 16384, 10, false)",
           "classify DML on pg_catalog.* (unqualified pg_* names resolve there) as "
           "ddl/privilege", who="rw"),
    # Superuser-only GUC: writes then skip FK checks and triggers (an FK-violating row was
    # inserted); log_* hide statements from server-side audit.
    bypass("SET session_replication_role = replica",
           "classify SET/RESET of superuser-only GUCs (session_replication_role, "
           "log_statement, log_min_*, allow_system_table_mods, zero_damaged_pages, "
           "ignore_checksum_failure, lo_compat_privileges, pgaudit.*) as privilege, like "
           "role/session_authorization in _PRIVILEGED_SETTINGS", who="rw"),
    bypass("SET log_statement = 'none'",
           "classify SET of log_* / audit GUCs as privilege (_PRIVILEGED_SETTINGS)"),
]


@pytest.mark.parametrize(("sql", "who"), CASES)
def test_statement_with_side_effects_is_not_allowed(sql: str, who: str) -> None:
    assert verdict(sql, who) is not Verdict.ALLOW


def test_helper_sanity() -> None:
    """The harness itself: a plain read is allowed, a known side effect is not."""
    assert verdict("SELECT 1", "ro") is Verdict.ALLOW
    assert verdict("SELECT pg_terminate_backend(1)", "ro") is Verdict.DENY
    assert verdict("DELETE FROM t WHERE id = 1", "ro") is Verdict.DENY
    assert verdict("DELETE FROM t WHERE id = 1", "rw") is Verdict.ALLOW
