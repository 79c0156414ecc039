"""Specification of the SSH exec classifier: a command line read exactly as a POSIX shell would.

The differential tests at the end run generated programs through the real
dash and bash, with stub programs that log their argv, and check that every
command the shell ran is one the classifier listed (and that the classifier
only accepts what the shell parses).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathwarden.model import Action, ConnectionRef, Identity, Operation, Protocol
from pathwarden.policy.shell import (
    MAX_COMMAND_BYTES,
    MAX_COMMANDS,
    ShellClassifier,
    classify_command,
    normalize_path,
)


def only(command: str) -> Action:
    actions = classify_command(command)
    assert len(actions) == 1, actions
    return actions[0]


def lines(command: str) -> list[str]:
    return [a.names("commands")[0] if a.kind != "opaque" else "<opaque>"
            for a in classify_command(command)]


def programs(command: str) -> list[tuple[str, ...]]:
    return [a.names("programs") for a in classify_command(command)]


def opaque_reason(command: str) -> str:
    action = only(command)
    assert (action.action, action.kind) == ("exec", "opaque"), action
    assert action.flags == frozenset()
    assert action.text == command
    (reason,) = action.names("reason")
    return reason


# -- simple commands and the canonical line -------------------------------------------------


def test_a_simple_command() -> None:
    action = only("systemctl  restart   \"shop\"")
    assert action == Action(
        "exec", "command",
        MappingProxyType({"commands": ("systemctl restart shop",), "programs": ("systemctl",)}),
        frozenset(), "systemctl restart shop")


@pytest.mark.parametrize(("command", "line"), [
    ('echo "a b"', "echo 'a b'"),
    ("echo a\\ b", "echo 'a b'"),
    ("echo 'it'\"'\"'s'", "echo 'it'\"'\"'s'"),  # shlex.quote of it's
    ("echo ''", "echo ''"),
    ('echo ""', "echo ''"),
    ("'rm' -rf /", "rm -rf /"),
    ("r\\m -rf /", "rm -rf /"),
    ('"r""m" -rf /', "rm -rf /"),
    ("rm *.log", "rm *.log"),  # unquoted glob: as written
    ("rm '*.log'", "rm '*.log'"),  # quoted: literal
    ("rm \\*.log", "rm '*.log'"),
    ("ls ~/x ~", "ls ~/x ~"),
    ("ls '~'", "ls '~'"),
    ("[ -f x ]", "[ -f x ]"),
    ("echo a#b", "echo 'a#b'"),
    ('echo "a\\"b"', "echo 'a\"b'"),
    ('echo "a\\b"', "echo 'a\\b'"),  # \b is not an escape inside double quotes
    ("echo x\\\ny", "echo xy"),  # line continuation
    ("ls \\\n -l", "ls -l"),
    ("ls\t-l", "ls -l"),
    ("echo $HOME", "echo $HOME"),
    ('echo "$HOME/x"', 'echo "$HOME"/x'),
    ("journalctl -u shop 2>&1", "journalctl -u shop 2>&1"),
    ("ls >/tmp/out 2>>err", "ls > /tmp/out 2>> err"),
    ("> out ls", "ls > out"),
])
def test_canonical_line(command: str, line: str) -> None:
    action = only(command)
    assert action.names("commands") == (line,)
    assert action.text == line


def test_canonical_line_reads_back_as_the_same_words() -> None:
    for command in ("echo 'a b' \"c'd\" e\\ f", "printf '%s\\n' x", "a 'x\ny'"):
        (line,) = only(command).names("commands")
        assert shlex.split(line) == shlex.split(command)


# -- lists, pipelines, comments --------------------------------------------------------------


@pytest.mark.parametrize(("command", "expected", "flags"), [
    ("ls; rm -rf /", ["ls", "rm -rf /"], {"sequence"}),
    ("ls;rm -rf /", ["ls", "rm -rf /"], {"sequence"}),
    ("ls && rm x", ["ls", "rm x"], {"sequence"}),
    ("ls || rm x", ["ls", "rm x"], {"sequence"}),
    ("ls\n rm", ["ls", "rm"], {"sequence"}),
    ("ls\n\n\nrm\n", ["ls", "rm"], {"sequence"}),
    ("ls | sh", ["ls", "sh"], {"pipeline"}),
    ("ls |\n wc -l", ["ls", "wc -l"], {"pipeline"}),
    ("ls &&\n# why\n rm", ["ls", "rm"], {"sequence"}),
])
def test_every_command_of_a_list_is_an_action(command: str, expected: list[str],
                                              flags: set[str]) -> None:
    actions = classify_command(command)
    assert lines(command) == expected
    for action in actions:
        assert action.flags == flags, action


def test_pipelines_inside_sequences_carry_both_flags() -> None:
    actions = classify_command("ls | grep x; rm y")
    assert [sorted(a.flags) for a in actions] == [
        ["pipeline", "sequence"], ["pipeline", "sequence"], ["sequence"]]


def test_background() -> None:
    assert only("sleep 10 &").flags == {"background"}
    first, second = classify_command("sleep 10 & rm x")
    assert first.flags == {"background", "sequence"} and second.flags == {"sequence"}


@pytest.mark.parametrize(("command", "expected"), [
    ("ls # ; rm", ["ls"]),
    ("ls #; rm\nrm y", ["ls", "rm y"]),
    ("ls a#b; rm", ["ls 'a#b'", "rm"]),  # # inside a word is no comment
    ("ls \\#; rm", ["ls '#'", "rm"]),
    ("ls '#'; rm", ["ls '#'", "rm"]),
    ("ls;#x\nrm", ["ls", "rm"]),
])
def test_comments(command: str, expected: list[str]) -> None:
    assert lines(command) == expected


@pytest.mark.parametrize("command", ["", " ", "\t\n\n", "# nothing", "  # a\n# b\n"])
def test_empty_programs_have_no_actions(command: str) -> None:
    assert classify_command(command) == ()


def test_quoted_operators_are_words() -> None:
    assert lines("ls ';' rm") == ["ls ';' rm"]
    assert lines('ls "&&" rm') == ["ls '&&' rm"]
    assert lines("ls \\| rm") == ["ls '|' rm"]
    assert programs("ls\\;rm") == [("ls;rm",)]


def test_pipeline_negation_is_not_a_program() -> None:
    assert programs("! grep -q x f && rm f") == [("grep",), ("rm",)]


# -- expansions --------------------------------------------------------------------------------


def test_command_substitution_is_parsed_recursively() -> None:
    outer, inner = classify_command("echo $(rm -rf /)")
    assert outer.names("programs") == ("echo",) and outer.flags == {"dynamic"}
    assert inner.names("commands") == ("rm -rf /",) and inner.flags == {"substitution"}


def test_backquotes_are_parsed_recursively() -> None:
    outer, inner = classify_command("echo `rm -rf /`")
    assert outer.flags == {"dynamic"}
    assert inner.names("programs") == ("rm",) and inner.flags == {"substitution"}
    acts = classify_command("echo `echo \\`id\\``")
    assert [a.names("programs") for a in acts] == [("echo",), ("echo",), ("id",)]
    assert "substitution" in acts[2].flags


def test_substitution_inside_double_quotes_and_quotes_inside_it() -> None:
    acts = classify_command('echo "$(ls ")")"')
    assert [a.names("commands") for a in acts] == [('echo "$(ls ")")"',), ("ls ')'",)]


def test_substitution_with_a_sequence_inside() -> None:
    acts = classify_command("echo $(a; b | c)")
    assert [sorted(a.flags) for a in acts] == [
        ["dynamic"], ["sequence", "substitution"],
        ["pipeline", "sequence", "substitution"], ["pipeline", "sequence", "substitution"]]


def test_substitution_in_a_redirection_target() -> None:
    outer, inner = classify_command("ls > $(mktemp)")
    assert outer.flags == {"dynamic", "redirect", "write_redirect"}
    assert inner.names("programs") == ("mktemp",)


@pytest.mark.parametrize("command", [
    "echo $X", "echo ${X}", "echo $1", "echo $@", "echo $*", "echo $#", "echo $?", "echo $$",
    "echo $!", "echo $-", "echo $0", 'echo "$X"', "echo $((1 + 2))", "echo ${#X}",
    "echo ${X:-default}", "rm $X", 'ls "$@"',
])
def test_parameter_and_arithmetic_expansions_are_dynamic(command: str) -> None:
    assert "dynamic" in only(command).flags


def test_a_lone_dollar_is_literal() -> None:
    assert only("echo $ a$ '$x'").flags == frozenset()


@pytest.mark.parametrize(("command", "programs_", "flags"), [
    ("a=1 b", ("b",), {"assignment"}),
    ("PATH=/tmp ls", ("ls",), {"assignment"}),
    ("LD_PRELOAD=/tmp/x.so ls", ("ls",), {"assignment"}),
    ("X+=1 ls", ("ls",), {"assignment"}),
    ("X=$(id) ls", ("ls",), {"assignment", "dynamic"}),
    ("export PATH=/tmp", ("export",), {"assignment"}),
    ("env -i X=1 rm x", ("env", "rm"), {"assignment"}),
    ("sudo X=1 rm x", ("sudo", "rm"), {"assignment"}),
])
def test_assignments(command: str, programs_: tuple[str, ...], flags: set[str]) -> None:
    action = classify_command(command)[0]
    assert action.kind == "command"
    assert action.names("programs") == programs_
    assert action.flags == flags


def test_only_assignments_is_an_assignment_action() -> None:
    action = only("PATH=/tmp X='a b'")
    assert (action.kind, action.flags) == ("assignment", {"assignment"})
    assert action.names("commands") == ("PATH=/tmp 'X=a b'",)
    assert "programs" not in action.objects
    first, second = classify_command("PATH=/tmp; ls")
    assert (first.kind, second.kind) == ("assignment", "command")


def test_quoted_names_are_not_assignments() -> None:
    action = only("'X=1' ls")
    assert action.names("programs") == ("X=1",) and action.flags == frozenset()


# -- redirections ----------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "paths", "flags"), [
    ("ls > /etc/passwd", ("/etc/passwd",), {"redirect", "write_redirect"}),
    ("ls >> /var/log/x", ("/var/log/x",), {"redirect", "write_redirect"}),
    ("ls >| f", ("f",), {"redirect", "write_redirect"}),
    ("ls 2> /tmp/err", ("/tmp/err",), {"redirect", "write_redirect"}),
    ("ls &> /tmp/all", ("/tmp/all",), {"redirect", "write_redirect"}),
    ("ls &>> /tmp/all", ("/tmp/all",), {"redirect", "write_redirect"}),
    ("ls >& /tmp/all", ("/tmp/all",), {"redirect", "write_redirect"}),
    ("cat < /etc/shadow", ("/etc/shadow",), {"redirect"}),
    ("cat <> /dev/tty1", ("/dev/tty1",), {"redirect", "write_redirect"}),
    ("ls 2>&1", (), {"redirect"}),
    ("echo x >&2", (), {"redirect"}),
    ("ls 2>&-", (), {"redirect"}),
    ("cat 0<&3", (), {"redirect"}),
    ("ls >/srv/a/../../etc//passwd", ("/etc/passwd",), {"redirect", "write_redirect"}),
    ("ls > out.txt", ("out.txt",), {"redirect", "write_redirect"}),
    ("ls > *.txt", ("*.txt",), {"redirect", "write_redirect", "dynamic"}),
    ("ls > $HOME/x", ("$HOME/x",), {"redirect", "write_redirect", "dynamic"}),
    ("exec 3<>/dev/tcp/h/80", ("/dev/tcp/h/80",), {"redirect", "write_redirect"}),
])
def test_redirections(command: str, paths: tuple[str, ...], flags: set[str]) -> None:
    action = only(command)
    assert action.names("paths") == paths
    assert action.flags == flags


def test_io_numbers_only_directly_before_the_operator() -> None:
    assert only("echo 2 > f").names("commands") == ("echo 2 > f",)
    assert only("echo 2>f").names("commands") == ("echo 2> f",)
    assert only("echo a2>f").names("commands") == ("echo a2 > f",)


def test_a_redirection_alone() -> None:
    action = only("> /etc/motd")
    assert action.kind == "command" and "programs" not in action.objects
    assert action.names("paths") == ("/etc/motd",)


# -- nested shells ---------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "outer", "inner"), [
    ('sh -c "rm -rf /"', ("sh",), [("rm",)]),
    ("bash -c 'rm -rf /'", ("bash",), [("rm",)]),
    ("bash -lc 'a;b'", ("bash",), [("a",), ("b",)]),
    ("/bin/sh -ec 'a'", ("/bin/sh",), [("a",)]),
    ("dash -e -x -c 'a'", ("dash",), [("a",)]),
    ("zsh -c a", ("zsh",), [("a",)]),
    ("ksh -c 'a | b'", ("ksh",), [("a",), ("b",)]),
    ("bash -o pipefail -c 'a'", ("bash",), [("a",)]),
    ("bash --norc --noprofile -c 'a'", ("bash",), [("a",)]),
    ("bash -c -- 'a' x y", ("bash",), [("a",)]),
    ("sudo -u app sh -c 'systemctl restart shop'", ("sudo", "sh"), [("systemctl",)]),
    ("su -c 'rm -rf /' root", ("su",), [("rm",)]),
    ("find / -exec sh -c 'rm {}' \\;", ("find", "sh"), [("rm",)]),
])
def test_shell_c_programs_are_parsed(command: str, outer: tuple[str, ...],
                                     inner: list[tuple[str, ...]]) -> None:
    first, *rest = classify_command(command)
    assert first.names("programs") == outer
    assert "nested" not in first.flags
    assert [a.names("programs") for a in rest] == inner
    assert all("nested" in a.flags for a in rest)


def test_nested_flags_accumulate() -> None:
    acts = classify_command("sh -c 'echo $(sh -c \"id\")'")
    assert [(a.names("programs"), sorted(a.flags)) for a in acts] == [
        (("sh",), []),
        (("echo",), ["dynamic", "nested"]),
        (("sh",), ["nested", "substitution"]),
        (("id",), ["nested", "substitution"]),
    ]


def test_a_shell_without_c_is_a_program() -> None:
    assert programs("sh ./deploy.sh") == [("sh",)]
    assert programs("bash") == [("bash",)]


def test_nesting_depth_is_limited() -> None:
    program = "ls"
    for _ in range(4):
        program = f"sh -c {shlex.quote(program)}"
    assert classify_command(program)[-1].names("programs") == ("ls",)
    deeper = f"sh -c {shlex.quote(program)}"
    assert "nested deeper than 4" in opaque_reason(deeper)
    assert "nested deeper" in opaque_reason("echo $(echo $(echo $(echo $(echo $(id)))))")


# -- wrappers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "expected"), [
    ("sudo rm -rf /", ("sudo", "rm")),
    ("sudo -u app systemctl restart shop", ("sudo", "systemctl")),
    ("sudo -u app -g grp -- systemctl restart shop", ("sudo", "systemctl")),
    ("sudo --user=app -E systemctl status", ("sudo", "systemctl")),
    ("sudo --user app systemctl status", ("sudo", "systemctl")),
    ("doas -u root rm x", ("doas", "rm")),
    ("env -i X=1 rm x", ("env", "rm")),
    ("env -u HOME -- rm x", ("env", "rm")),
    ("env - rm x", ("env", "rm")),
    ("env -- X=1 rm x", ("env", "rm")),
    ("sudo -- X=1 rm x", ("sudo", "rm")),
    ("nice -n 5 rm x", ("nice", "rm")),
    ("nice -5 rm x", ("nice", "rm")),
    ("nohup rm x", ("nohup", "rm")),
    ("timeout 10 rm x", ("timeout", "rm")),
    ("timeout -s KILL -k 5 10s rm x", ("timeout", "rm")),
    ("stdbuf -oL -e 0 rm x", ("stdbuf", "rm")),
    ("time -p rm x", ("time", "rm")),
    ("command rm x", ("command", "rm")),
    ("exec -a name rm x", ("exec", "rm")),
    ("setsid -f rm x", ("setsid", "rm")),
    ("ionice -c 3 rm x", ("ionice", "rm")),
    ("xargs -0 -n 1 rm", ("xargs", "rm")),
    ("xargs", ("xargs",)),
    ("chroot /mnt rm x", ("chroot", "rm")),
    ("/usr/bin/sudo /usr/bin/env rm", ("/usr/bin/sudo", "/usr/bin/env", "rm")),
    ("sudo nice timeout 5 systemctl restart shop", ("sudo", "nice", "timeout", "systemctl")),
    ("sudo sudo rm", ("sudo", "rm")),
    ("find . -name '*.tmp' -exec rm {} +", ("find", "rm")),
    ("find . -execdir sudo rm {} \\; -print", ("find", "sudo", "rm")),
    ("runuser -u app -- rm x", ("runuser", "app", "rm", "x")),
    ("exec 2>/dev/null", ("exec",)),
])
def test_wrappers_list_what_they_run(command: str, expected: tuple[str, ...]) -> None:
    assert classify_command(command)[0].names("programs") == expected


def test_unknown_wrapper_options_list_every_candidate() -> None:
    assert programs("sudo -Z foo rm -rf /tmp/x") == [("sudo", "foo", "rm", "/tmp/x")]
    assert "wrapper option" in opaque_reason("sudo -Z foo sh -c 'rm -rf /'")
    assert "wrapper option" in opaque_reason("sudo --weird $X rm")


def test_wrappers_that_interpret_their_arguments_are_opaque() -> None:
    assert "split or interpret" in opaque_reason("env -S 'rm -rf /'")
    assert "split or interpret" in opaque_reason("env --split-string='rm -rf /'")
    assert "shell" in opaque_reason("sudo -s 'echo $(id)'")
    assert programs("sudo -s systemctl status") == [("sudo", "systemctl")]


# -- opaque programs -------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "reason"), [
    ("`id`", "command name is dynamic"),
    ("$(id)", "command name is dynamic"),
    ("$CMD args", "command name is dynamic"),
    ("rm${IFS}-rf /", "command name is dynamic"),
    ("$HOME/bin/x", "command name is dynamic"),
    ("sudo $CMD", "dynamic"),
    ("timeout $T ls", "wrapper option is dynamic"),  # $T may split into "10 rm"
    ("/bin/r? -rf /", "glob pattern"),
    ("/bin/r[m] -rf /", "glob pattern"),
    ("$'\\x72m' -rf /", "$'...' quoting"),
    ('$"rm" -rf /', '$"..." quoting'),
    ("{ls,-la}", "brace expansion"),
    ("echo {a..z}", "brace expansion"),
    ('echo {"a",b}', "brace expansion"),
    ("{rm,{b}} x", "brace expansion"),
    ("cat <<EOF\nx\nEOF", "here-document"),
    ("cat <<-EOF\nx\nEOF", "here-document"),
    ("cat <<< x", "here-document"),
    ("diff <(ls a) <(ls b)", "process substitution"),
    ("ls > >(tee x)", "without a target"),
    ("if true; then rm x; fi", "keyword 'if'"),
    ("for f in *; do rm $f; done", "keyword 'for'"),
    ("while true; do ls; done", "keyword 'while'"),
    ("until false; do ls; done", "keyword 'until'"),
    ("case x in x) ls;; esac", "keyword 'case'"),
    ("function f { ls; }", "keyword 'function'"),
    ("{ ls; }", "keyword '{'"),
    ("[[ -f x ]] && rm x", "keyword '[['"),
    ("X=1 if true; then ls; fi", "keyword 'if'"),
    ("(rm x)", "subshell"),
    ("f() { rm x; }", "function definition"),
    ("((x++))", "subshell"),
    ("ls; (rm x)", "subshell"),
    ("echo $((a[$(id)]))", "arithmetic"),
    ("echo ${X:-$(id)}", "parameter expansion"),
    ("echo ${X:-'a'}", "parameter expansion"),
    ("echo $[1+2]", "$[ expansion"),
    ("eval rm -rf /", "eval runs text"),
    ("'eval' rm", "eval runs text"),
    ("e\\val rm", "eval runs text"),
    ("source ./x", "source runs text"),
    (". ./x", ". runs text"),
    ("command eval x", "eval runs text"),
    ("builtin eval x", "eval runs text"),
    ("alias ls=rm", "alias runs text"),
    ("trap 'rm -rf /' EXIT", "trap runs text"),
    ("hash -p /bin/rm ls", "hash runs text"),
    ("sudo eval x", "eval runs text"),
    ("printf -v 'a[$(id)]' x", "printf evaluates"),
    ("let 'a[$(id)]=1'", "let evaluates"),
    ("declare 'a[$(id)]=1'", "declare evaluates"),
    ("a[$(id)]=1 ls", "array assignment"),
    ("X='$(id)'; echo $((X))", "arithmetic expansion on variables"),
    ("env X='`id`' ls", "shell code"),
    ("echo 'abc", "unbalanced single quote"),
    ('echo "abc', "unbalanced double quote"),
    ("echo `abc", "unbalanced backquote"),
    ("echo $(ls", "unbalanced parentheses"),
    ("echo ${X", "unbalanced ${"),
    ("ls )", "unbalanced parentheses"),
    ("ls \\", "ends with a backslash"),
    ("; ls", "without a command"),
    ("ls && ; rm", "without a command"),
    ("ls |", "ends after an operator"),
    ("ls &&", "ends after an operator"),
    ("| ls", "without a command"),
    ("ls |& rm", "|&"),
    ("ls > ", "without a target"),
    ("ls > #x", "without a target"),
    ("'' x", "empty command name"),
    ("=rm -rf /", "zsh"),
    ("bash --frobnicate -c 'rm'", "unknown shell option"),
    ("sh -Z -c 'rm'", "unknown shell option"),
    ("sh -c \"$PROG\"", "program given to a shell is dynamic"),
    ("ls {fd}>x", "named file descriptor"),
    ("echo a\x01b", "control character U+0001"),
    ("echo a\rb", "control character U+000D"),
    ("echo a\x00b", "NUL byte"),
    ("echo \udcff", "not UTF-8"),
    ("echo \x85", "control character U+0085"),
])
def test_what_cannot_be_classified_is_one_opaque_action(command: str, reason: str) -> None:
    assert reason in opaque_reason(command)


def test_opaque_anywhere_makes_the_whole_program_opaque() -> None:
    for command in ("ls; rm x; cat <<EOF\nEOF", "ls $(cat <<EOF\nEOF\n)", "sh -c 'ls; eval x'",
                    "ls && echo `if true; then id; fi`"):
        action = only(command)
        assert action.kind == "opaque" and action.text == command


def test_limits() -> None:
    big = "echo " + "a" * (MAX_COMMAND_BYTES - 5)
    assert only(big).kind == "command"
    assert "longer than 64 KiB" in opaque_reason(big + "a")
    # 64 KiB counted in UTF-8 bytes
    assert "longer than 64 KiB" in opaque_reason("echo " + "é" * (MAX_COMMAND_BYTES // 2))
    assert "more than" in opaque_reason(";".join(["ls"] * (MAX_COMMANDS + 1)))
    assert len(classify_command(";".join(["ls"] * MAX_COMMANDS))) == MAX_COMMANDS


# -- robustness ----------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list(" \t\n\\'\"$`;&|<>(){}[]*?~#=!-_.:/0123456789"
                                             "abcxyz\x00\r\x85é")), max_size=60))
def test_never_raises_on_shell_like_text(text: str) -> None:
    _check_well_formed(text, classify_command(text))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_never_raises_on_arbitrary_text(text: str) -> None:
    _check_well_formed(text, classify_command(text))


def _check_well_formed(text: str, actions: tuple[Action, ...]) -> None:
    assert isinstance(actions, tuple)
    if any(a.kind == "opaque" for a in actions):
        assert len(actions) == 1 and actions[0].text == text
        return
    for action in actions:
        assert action.action == "exec" and action.kind in ("command", "assignment")
        assert action.text == action.names("commands")[0]
        assert set(action.objects) <= {"commands", "programs", "paths"}
        assert all(action.objects.values())


ADVERSARIAL = {
    "words": "a " * (MAX_COMMAND_BYTES // 2),
    "commands": "a;" * (MAX_COMMAND_BYTES // 2),
    "pipes": "a|" * (MAX_COMMAND_BYTES // 2 - 1) + "a",
    "quotes": "echo " + "''" * (MAX_COMMAND_BYTES // 2 - 3),
    "escapes": "echo " + "\\a" * (MAX_COMMAND_BYTES // 2 - 3),
    "dquote_escapes": 'echo "' + "\\$" * (MAX_COMMAND_BYTES // 2 - 4) + '"',
    "parameters": "echo " + "$a" * (MAX_COMMAND_BYTES // 2 - 3),
    "substitutions": "echo " + "$(a)" * (MAX_COMMAND_BYTES // 4 - 2),
    "backquotes": "echo " + "`a`" * (MAX_COMMAND_BYTES // 3 - 2),
    "nested_parens": "echo " + "$(" * 2000 + ")" * 2000,
    "globs": "echo " + "*" * (MAX_COMMAND_BYTES - 5),
    "braces": "echo " + "{" * (MAX_COMMAND_BYTES - 5),
    "brace_commas": "echo {" + "," * (MAX_COMMAND_BYTES - 6),
    "brace_pairs": "echo " + "{,}" * (MAX_COMMAND_BYTES // 3 - 2),
    "reserved_arguments": "echo " + "in " * (MAX_COMMAND_BYTES // 3 - 2),
    "brackets_in_a_name": "[a" * (MAX_COMMAND_BYTES // 2 - 2) + " x",
    "brackets_in_a_target": "ls > " + "[a" * (MAX_COMMAND_BYTES // 2 - 4),
    "tildes": "echo " + "~" * (MAX_COMMAND_BYTES - 5),
    "dollars": "echo " + "$" * (MAX_COMMAND_BYTES - 5),
    "redirections": "a>b " * (MAX_COMMAND_BYTES // 4),
    "assignments": "a=b " * (MAX_COMMAND_BYTES // 4),
    "shell_c": "sh -c '" + "a;" * (MAX_COMMAND_BYTES // 2 - 8) + "'",
    "newlines": "a\n" * (MAX_COMMAND_BYTES // 2),
    "long_word": "echo " + "a" * (MAX_COMMAND_BYTES - 5),
    "one_quote": "echo '" + "a" * (MAX_COMMAND_BYTES - 6),
    "arithmetic": "echo $((" + "(" * (MAX_COMMAND_BYTES - 12) + "))",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_a_64k_input_classifies_fast(name: str) -> None:
    text = ADVERSARIAL[name]
    assert len(text.encode()) <= MAX_COMMAND_BYTES
    best = min(_timed(text) for _ in range(3))
    assert best < 0.1, f"{name}: {best * 1000:.0f} ms"


def _timed(text: str) -> float:
    start = time.perf_counter()
    classify_command(text)
    return time.perf_counter() - start


def test_time_grows_linearly() -> None:
    small = "ls 'a b' \"$X\" c | d; " * 100
    large = small * 16
    assert len(large) < MAX_COMMAND_BYTES
    t_small = min(_timed(small) for _ in range(5))
    t_large = min(_timed(large) for _ in range(5))
    assert t_large < 40 * t_small + 0.005


# -- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "normal"), [
    ("/etc/passwd", "/etc/passwd"), ("//etc///passwd/", "/etc/passwd"),
    ("/srv/./a/../b", "/srv/b"), ("/..", "/"), ("/../../etc", "/etc"), ("/", "/"),
    ("a/../../b", "../b"), ("./x", "x"), (".", "."), ("a/..", "."),
    ("~/x/../y", "~/y"), ("~root/.ssh/../x", "~root/x"), ("~", "~"), ("~/..", "~/.."),
])
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


# -- the pipeline hook -------------------------------------------------------------------------


def _op(kind: str, text: str) -> Operation:
    return Operation("s1", 1, Identity("ci"), ConnectionRef("web", Protocol.SSH), Protocol.SSH,
                     kind, text)


def test_shell_classifier_fills_exec_operations() -> None:
    classifier = ShellClassifier()
    op = classifier.classify(_op("exec", "ls; rm x"))
    assert op.actions == classify_command("ls; rm x")
    assert op.action == "exec"
    assert classifier.classify(_op("exec", "")).actions == ()
    assert classifier.classify(_op("exec", "")).action == "exec"
    other = _op("sftp", "ls")
    assert classifier.classify(other) is other


def test_shell_classifier_returns_the_same_tuple_for_the_same_text() -> None:
    classifier = ShellClassifier(cache_size=2)
    first = classifier.classify(_op("exec", "ls")).actions
    assert classifier.classify(replace(_op("exec", "ls"), seq=2)).actions is first
    classifier.classify(_op("exec", "a"))
    classifier.classify(_op("exec", "b"))
    assert classifier.classify(_op("exec", "ls")).actions is not first  # evicted
    assert ShellClassifier(cache_size=0).classify_text("ls") == first


# -- differential: what dash and bash really run -----------------------------------------------

SHELLS = [s for s in ("/bin/dash", "/bin/bash") if Path(s).exists()]
STUB_NAMES = ("a", "b", "c")
STUB = """#!/bin/sh
printf '%s\\0' "${0##*/}" "$@" > "$LOG/$$"
[ "${0##*/}" != b ]
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("shellstubs")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name in STUB_NAMES:
        path = bin_dir / name
        path.write_text(STUB)
        path.chmod(0o755)
    for name in ("sh", "bash", "env", "nice", "timeout"):  # real ones, to run the stubs
        real = shutil.which(name)
        if real is not None:
            (bin_dir / name).symlink_to(real)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _run(shell: str, program: str, root: Path) -> tuple[bool, list[tuple[str, ...]]]:
    """(syntax ok, argv of every stub the shell ran)."""
    log = root / "log"
    shutil.rmtree(log, ignore_errors=True)
    log.mkdir()
    work = root / "work"
    work.mkdir(exist_ok=True)
    env = {"PATH": str(root / "bin"), "LOG": str(log), "HOME": str(work)}
    syntax = subprocess.run([shell, "-n", "-c", program], env=env, cwd=work,
                            capture_output=True, timeout=20)
    subprocess.run([shell, "-c", program], env=env, cwd=work, capture_output=True, timeout=20)
    ran = []
    for entry in os.listdir(log):
        data = (log / entry).read_bytes()
        ran.append(tuple(part.decode() for part in data.split(b"\0")[:-1]))
    return syntax.returncode == 0, ran


COMMAND_NAMES = st.sampled_from(["a", "b", "c", "\\a", "'b'", '"c"', "a\\\n", "''c", "\"\"a"])
ARGUMENTS = st.sampled_from([
    "x", "'y z'", '"q r"', "\\w", "''", '""', "#", "#c", "#;b", "# b", "x#y", "'#'", "\\#",
    "\\;", "';'", '"|"', "\\&", "'a'", "\\'", '\\"', "'\\'", '"\\""', '"\\\\"',
    '"\\x"', "a\\\nb", "'x\ny'", '"$"', "$", "x$",
])
NOISE = st.sampled_from(["'", '"', "\\", "#", ";", "|", "&&", "\n"])
JOINS = st.sampled_from([" ", " ", " ", "\t", "", "\\\n "])
OPERATORS = st.sampled_from([";", "&&", "||", "|", "\n", " ; ", " | ", " && ", "\n\n"])


@st.composite
def programs_text(draw: st.DrawFn) -> str:
    out = []
    for number in range(draw(st.integers(1, 4))):
        if number:
            out.append(draw(OPERATORS))
        out.append(draw(COMMAND_NAMES))
        for _ in range(draw(st.integers(0, 4))):
            out.append(draw(JOINS))
            out.append(draw(NOISE) if draw(st.integers(0, 9)) == 0 else draw(ARGUMENTS))
    return "".join(out)


def _unlisted(ran: list[tuple[str, ...]], actions: tuple[Action, ...]) -> list[tuple[str, ...]]:
    """The commands the shell ran that no action lists (exactly, or by program if dynamic)."""
    exact = Counter(tuple(shlex.split(a.names("commands")[0]))
                    for a in actions if "dynamic" not in a.flags)
    dynamic = Counter(a.names("programs")[-1] for a in actions
                      if "dynamic" in a.flags and a.names("programs"))
    missing = []
    for argv in ran:
        if exact[argv] > 0:
            exact[argv] -= 1
        elif dynamic[argv[0]] > 0:
            dynamic[argv[0]] -= 1
        else:
            missing.append(argv)
    return missing


@pytest.mark.skipif(not SHELLS, reason="no POSIX shell to compare with")
@settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(programs_text())
def test_the_shells_run_only_what_was_listed(stubs: Path, program: str) -> None:
    actions = classify_command(program)
    opaque = any(a.kind == "opaque" for a in actions)
    for shell in SHELLS:
        syntax_ok, ran = _run(shell, program, stubs)
        if opaque:
            continue
        assert syntax_ok, f"{shell} rejects {program!r}, classified as {actions}"
        missing = _unlisted(ran, actions)
        assert not missing, f"{shell} ran {missing} for {program!r}: {actions}"


def _backquoted(program: str) -> str:
    return "`" + program.replace("\\", "\\\\").replace("`", "\\`").replace("$", "\\$") + "`"


@st.composite
def substituting_programs(draw: st.DrawFn, depth: int = 0) -> str:
    out = []
    for number in range(draw(st.integers(1, 3))):
        if number:
            out.append(draw(OPERATORS))
        words = [draw(COMMAND_NAMES)]
        for _ in range(draw(st.integers(0, 3))):
            choice = draw(st.integers(0, 7))
            if choice < 3 and depth < 2:
                inner = draw(substituting_programs(depth + 1))
                words.append([f"$({inner})", f'"$({inner})"', _backquoted(inner)][choice])
            elif choice == 3:
                words.append(draw(st.sampled_from(["$((1))", "$x", '"$@"', "${y}", "x$(", ")"])))
            elif choice == 4:
                words.append(draw(NOISE))
            else:
                words.append(draw(ARGUMENTS))
        out.append(" ".join(words))
    return "".join(out)


@pytest.mark.skipif(not SHELLS, reason="no POSIX shell to compare with")
@settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(substituting_programs())
def test_substitutions_run_only_listed_programs(stubs: Path, program: str) -> None:
    actions = classify_command(program)
    if any(a.kind == "opaque" for a in actions):
        return
    listed = Counter(a.names("programs")[-1] for a in actions if a.names("programs"))
    for shell in SHELLS:
        syntax_ok, ran = _run(shell, program, stubs)
        assert syntax_ok, f"{shell} rejects {program!r}, classified as {actions}"
        missing = Counter(argv[0] for argv in ran) - listed
        assert not missing, f"{shell} ran {sorted(missing)} for {program!r}: {actions}"


@pytest.mark.skipif(not SHELLS, reason="no POSIX shell to compare with")
@pytest.mark.parametrize("program", [
    "a; b", "a && b || c", "a | b | c", "a 'x y' \"z\" \\w", "a #b\nc", "a \\\n b",
    "a $(b) `c`", "sh -c 'a; b'", "bash -c 'a | c'", "env a x", "nice -n 1 a",
    "timeout 5 a", "a > out 2>&1", "X=1 a", "! b && a", "a x#y 'z'", "a \"$(b \")\")\"",
])
def test_known_programs_agree_with_the_shells(stubs: Path, program: str) -> None:
    actions = classify_command(program)
    assert actions and all(a.kind != "opaque" for a in actions)
    listed = Counter(a.names("programs")[-1] for a in actions if a.names("programs"))
    for shell in SHELLS:
        syntax_ok, ran = _run(shell, program, stubs)
        assert syntax_ok
        assert ran, f"{shell} ran nothing for {program!r}"
        assert not Counter(argv[0] for argv in ran) - listed



@pytest.mark.parametrize("command", [
    # bash evaluates subscripts in variable names as arithmetic, running $(...) from values
    "printf -v X 'x[\\x24(rm -f F)]'; printf -v 'a[X]' z",
    "test -v 'a[X]'",
    "read -r 'a[X]'",
    "unset 'a[X]'",
    "let x=1",
    # a value the client sets with an SSH env request is evaluated by these forms
    "echo $((LC_X))",
    "echo ${a[LC_X]}",
    "echo ${!LC_X}",
    "echo ${HOME:LC_X}",
    "echo ${LC_X@P}",
])
def test_forms_that_evaluate_values_as_code_are_opaque(command: str) -> None:
    (action,) = classify_command(command)
    assert action.kind == "opaque", command


@pytest.mark.parametrize("command", [
    "echo $((6*7))", "echo ${HOME}", "echo ${X:-default}", "echo ${#HOME}", "read -r line",
])
def test_plain_expansions_stay_classified(command: str) -> None:
    assert all(a.kind == "command" for a in classify_command(command)), command
