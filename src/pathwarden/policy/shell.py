"""Classify SSH ``exec`` command lines for policy: what each command of a shell program runs.

Theory of operation
-------------------
An SSH ``exec`` request carries one string, and the server runs it through the
account's login shell (``sh -c``/``bash -c`` ...). The classifier must read
that string exactly as a POSIX shell would, or give up: a policy that allows
``ls`` must never let ``ls; rm -rf /`` through because the gateway saw one
command where the shell saw two.

:func:`classify_command` is pure: text in, a tuple of
:class:`~pathwarden.model.Action` out, never an exception.

1. *Refusals first.* Input longer than 64 KiB (UTF-8), a NUL byte, a control
   character other than tab and newline, or a lone surrogate (bytes that were
   not UTF-8) make the whole program one ``opaque`` action.
2. *Lexing.* One left-to-right pass, linear in the input: single quotes,
   double quotes (``\\"``, ``\\\\``, ``\\$``, ``\\``` escapes), backslash
   escapes and line continuations, comments (``#`` at the start of a word),
   the operators ``; && || | &`` and newline, and redirections. A word keeps
   its pieces apart (quoted text, unquoted text, glob characters, expansions)
   so the canonical line can show exactly what the shell will expand.
3. *Expansions.* ``$(...)`` is parsed recursively in place, backquotes after
   their own backslash rules; the commands inside become actions of their own
   (flag ``substitution``), and the word holding them makes its command
   ``dynamic``. Parameter and arithmetic expansions make a command
   ``dynamic``; the forms that can hide code (``${x:-$(...)}``, array
   subscripts, ``$'...'``) make the program opaque.
4. *Simple commands.* Leading ``NAME=value`` words are assignments (flag
   ``assignment``); the command name is looked through wrappers (``sudo``,
   ``env``, ``timeout`` ...), so ``programs`` lists the wrapper and what it
   runs; a shell given ``-c`` has its program parsed recursively (flag
   ``nested``, depth at most 4). Reserved words, subshells, here-documents,
   process substitution, brace expansion, ``eval``/``source`` and anything
   else whose meaning is not fixed by the text make the program opaque.
5. *Fail closed.* Any part opaque -> the whole program is a single ``opaque``
   action (kind ``opaque``, ``objects["reason"]``, ``text`` = the program), never
   a partial classification. Policies decide those with ``{exec: {kinds:
   [opaque]}}``; an ``allow`` of the bare class ``exec`` never covers them.

Each other action is ``Action("exec", "command" | "assignment", objects,
flags, text)`` where ``objects`` holds ``commands`` (the canonical line),
``programs`` and ``paths`` (redirection targets). The canonical line is the
words after quote removal, single-spaced, each word quoted like
:func:`shlex.quote` where needed, with unquoted glob characters and
expansions left as written, then the redirections (``> /tmp/out``,
``2>&1``): ``systemctl  restart  "shop"`` is ``systemctl restart shop``.

:class:`ShellClassifier` is the pipeline hook: it fills ``actions`` and the
coarse ``action`` of ``exec`` operations and caches by exact text, so a
repeated command yields the very same actions tuple (the policy engine's
fast path keys on it).
"""

from __future__ import annotations

import re
import shlex
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from ..model import Action, Operation

__all__ = [
    "MAX_COMMANDS",
    "MAX_COMMAND_BYTES",
    "MAX_DEPTH",
    "MAX_PIECES",
    "ShellClassifier",
    "classify_command",
    "normalize_path",
    "opaque_action",
]

#: Longer exec command lines are opaque.
MAX_COMMAND_BYTES = 64 * 1024
#: How deep ``sh -c`` programs and command substitutions may nest.
MAX_DEPTH = 4
#: More simple commands than this in one program (substitutions and ``sh -c``
#: programs included): opaque.
MAX_COMMANDS = 1000
#: More lexical pieces (words, quoted parts, escapes, expansions) than this: opaque.
MAX_PIECES = 5000

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# A run of characters with no meaning to the lexer outside quotes.
_PLAIN_RUN = re.compile(r"[^ \t\n\\'\"$`*?\[\]|&;<>()]+")
_GLOB_RUN = re.compile(r"[*?\[\]]+")
_DQ_RUN = re.compile(r'[^"\\$`]+')
_BQ_RUN = re.compile(r"[^`\\]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_NAMED_FD = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_SPECIAL_PARAMETERS = frozenset("@*#?-$!0123456789")
_PARAM_FORBIDDEN = frozenset("$`'\"\\{(\n")
# The ${...} forms that never evaluate a value as code: a name or special
# parameter, its length, or a default/alternative whose word is plain text.
# Subscripts, substrings (arithmetic offsets), indirection (${!x}) and
# transformations (${x@P} runs prompt expansion) are opaque: bash evaluates
# arithmetic and subscripts found in the variable's value, which a client can
# set through an SSH env request.
_PLAIN_PARAM = re.compile(
    r"#?(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]|[@*#?$!-])"
    r"|[A-Za-z_][A-Za-z0-9_]*:?[-=+?][^$`\[\]!]*")
_ARITH_FORBIDDEN = frozenset("`'\"\\[")

# Part kinds of a word.
_LIT = 0  # quoted literal text
_UNQ = 1  # unquoted literal text
_RAW = 2  # unquoted glob character or tilde prefix: kept as written
_EXP = 3  # an expansion, as written, outside double quotes
_EXP_DQ = 4  # an expansion, as written, inside double quotes

#: Reserved words: a compound command or a keyword the classifier does not follow.
_RESERVED = frozenset({
    "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until",
    "for", "in", "function", "select", "coproc", "{", "}", "[[", "]]",
})
#: Builtins that run text as shell code or change how later commands are read.
_INTERPRETING = frozenset({
    "eval", "source", ".", "alias", "trap", "hash", "enable", "fc", "mapfile", "readarray",
    "bind", "complete", "compgen", "coproc",
})
#: Builtins that evaluate variable names or arithmetic (``a[$(cmd)]`` runs cmd in bash) ...
_EVALUATING = frozenset({
    "let", "declare", "typeset", "local", "export", "readonly", "unset", "read", "getopts",
})
#: ... and those that do with an option (printf -v, test -v, wait -p).
_EVALUATING_WITH_OPTION = frozenset({"printf", "test", "[", "wait"})
# Text that is shell code when a later expansion evaluates it.
_CODE = re.compile(r"\$[({]|`")
#: Builtins whose NAME=value arguments set variables for the commands after them.
_SETTING = frozenset({"export", "declare", "typeset", "readonly", "local"})
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh"})
_SHELL_FLAGS = frozenset("abefhiklmnprstuvxBCEHPT")
_SHELL_LONG = frozenset({
    "--login", "--norc", "--noprofile", "--posix", "--restricted", "--verbose",
    "--noediting", "--debugger", "--dump-strings", "--dump-po-strings", "--protected",
})
_SHELL_LONG_ARG = frozenset({"--rcfile", "--init-file"})


@dataclass(frozen=True, slots=True)
class _Wrapper:
    """How to find the program a wrapper runs: options (with and without an argument)."""

    short_arg: str = ""
    short_flag: str = ""
    long_arg: frozenset[str] = frozenset()
    long_flag: frozenset[str] = frozenset()
    assignments: bool = False  # NAME=VALUE arguments before the program (env, sudo)
    positional: int = 0  # arguments before the program (timeout's DURATION)
    numeric: bool = False  # -N options (nice -10)
    dash: bool = False  # a lone "-" is an option (env -)
    opaque: frozenset[str] = frozenset()  # options that make the command opaque
    via_shell: frozenset[str] = frozenset()  # options that pass the command to a shell


_WRAPPERS: Mapping[str, _Wrapper] = {
    "sudo": _Wrapper(
        short_arg="aCcDgpRrTtUu", short_flag="ABbEHiKknNPSs",
        long_arg=frozenset({"askpass", "close-from", "chdir", "group", "prompt", "chroot",
                            "role", "type", "command-timeout", "other-user", "user"}),
        long_flag=frozenset({"background", "bell", "preserve-env", "set-home", "login",
                             "remove-timestamp", "reset-timestamp", "non-interactive",
                             "preserve-groups", "stdin", "shell"}),
        assignments=True, via_shell=frozenset({"i", "s", "login", "shell"})),
    "doas": _Wrapper(short_arg="uC", short_flag="nsL"),
    "env": _Wrapper(
        short_arg="uC", short_flag="i0v",
        long_arg=frozenset({"unset", "chdir"}),
        long_flag=frozenset({"ignore-environment", "null", "debug", "default-signal",
                             "ignore-signal", "block-signal", "list-signal-handling"}),
        assignments=True, dash=True, opaque=frozenset({"S", "split-string"})),
    "nice": _Wrapper(short_arg="n", long_arg=frozenset({"adjustment"}), numeric=True),
    "nohup": _Wrapper(),
    "timeout": _Wrapper(
        short_arg="sk", short_flag="v", long_arg=frozenset({"signal", "kill-after"}),
        long_flag=frozenset({"preserve-status", "foreground", "verbose"}), positional=1),
    "stdbuf": _Wrapper(short_arg="ioe", long_arg=frozenset({"input", "output", "error"})),
    "time": _Wrapper(
        short_arg="fo", short_flag="apqv", long_arg=frozenset({"format", "output"}),
        long_flag=frozenset({"append", "portability", "quiet", "verbose"})),
    "command": _Wrapper(short_flag="pvV"),
    "exec": _Wrapper(short_arg="a", short_flag="cl"),
    "setsid": _Wrapper(short_flag="cfw", long_flag=frozenset({"ctty", "fork", "wait"})),
    "ionice": _Wrapper(short_arg="cn", short_flag="t",
                       long_arg=frozenset({"class", "classdata"}),
                       long_flag=frozenset({"ignore"})),
    "xargs": _Wrapper(
        short_arg="adEILnPs", short_flag="0oprtx",
        long_arg=frozenset({"arg-file", "delimiter", "max-args", "max-procs", "max-chars",
                            "process-slot-var"}),
        long_flag=frozenset({"null", "open-tty", "interactive", "no-run-if-empty", "verbose",
                             "exit", "show-limits", "eof", "replace", "max-lines"})),
    "builtin": _Wrapper(),
    "busybox": _Wrapper(),
    "chroot": _Wrapper(long_arg=frozenset({"userspec", "groups"}),
                       long_flag=frozenset({"skip-chdir"}), positional=1),
}
#: find options whose arguments, up to ``;`` or ``+``, are a command it runs.
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
#: su/runuser options whose argument is a shell program.
_SU_COMMAND = frozenset({"-c", "-C", "--command", "--session-command"})
_MAX_WRAPPERS = 8


class _Opaque(Exception):
    """The program cannot be classified safely; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _UnknownOption(Exception):
    """A wrapper option the classifier cannot skip: where the program is is unknown."""


# -- words ---------------------------------------------------------------------------------


class _Word:
    """One shell word: its pieces by kind (see ``_LIT`` ...), in order."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[int, str]]) -> None:
        self.parts = parts

    @property
    def dynamic(self) -> bool:
        return any(kind >= _EXP for kind, _ in self.parts)

    @property
    def glob(self) -> bool:
        """Whether the shell may expand the word as a pattern (``[`` needs a ``]`` after it)."""
        closing = False  # a "]" somewhere after the part looked at
        for kind, text in reversed(self.parts):
            if kind == _RAW:
                if "*" in text or "?" in text:
                    return True
                bracket = text.find("[")
                if bracket >= 0 and (closing or "]" in text[bracket:]):
                    return True
            if "]" in text:
                closing = True
        return False

    def value(self) -> str:
        """The text after quote removal (expansions as written)."""
        return "".join(text for _, text in self.parts)

    def plain(self) -> str | None:
        """The text when the word is entirely unquoted literal characters, else None."""
        if all(kind in (_UNQ, _RAW) for kind, _ in self.parts):
            return "".join(text for _, text in self.parts)
        return None

    def literal(self) -> str:
        """The value of a word that must be known in advance; opaque when it is not."""
        if self.dynamic:
            raise _Opaque("a command name or wrapper option is dynamic")
        return self.value()

    def literal_text(self) -> str:
        """Only the literal pieces (what builtins see of text the shell did not expand)."""
        return "".join(text for kind, text in self.parts if kind in (_LIT, _UNQ))

    def unquoted_shape(self) -> str:
        """Unquoted characters as written, quoted ones and expansions as NUL (brace checks)."""
        return "".join(text if kind in (_UNQ, _RAW) else "\0" for kind, text in self.parts)

    def render(self) -> str:
        """The word in the canonical line: quoted like shlex.quote, expansions as written."""
        out: list[str] = []
        run: list[str] = []
        for kind, text in self.parts:
            if kind <= _UNQ:
                run.append(text)
                continue
            if run:
                literal = "".join(run)
                if literal:
                    out.append(shlex.quote(literal))
                run = []
            out.append(f'"{text}"' if kind == _EXP_DQ else text)
        if run:
            literal = "".join(run)
            if literal or not out:
                out.append(shlex.quote(literal))
        return "".join(out) if out else "''"


@dataclass(slots=True)
class _Redirect:
    fd: str  # "" when not given
    op: str
    target: _Word
    dup: bool  # n>&m, n<&m, n>&-: no file
    write: bool

    def render(self) -> str:
        if self.dup:
            return f"{self.fd}{self.op}{self.target.render()}"
        return f"{self.fd}{self.op} {self.target.render()}"


class _Command:
    """A simple command as read: words, redirections, the actions of its substitutions."""

    __slots__ = ("named", "redirects", "subs", "words")

    def __init__(self) -> None:
        self.words: list[_Word] = []
        self.redirects: list[_Redirect] = []
        self.subs: list[Action] = []
        self.named = False  # a word other than an assignment was read

    def empty(self) -> bool:
        return not self.words and not self.redirects


@dataclass(slots=True)
class _Pipeline:
    commands: list[_Command]
    background: bool = False


# -- the parser ------------------------------------------------------------------------------


class _Parser:
    """One program text; ``$(...)`` is parsed in place, backquotes and ``sh -c`` recursively."""

    __slots__ = ("counts", "depth", "extra", "n", "pos", "src")

    def __init__(self, src: str, depth: int, extra: frozenset[str], counts: list[int]) -> None:
        self.src = src
        self.n = len(src)
        self.pos = 0
        self.depth = depth
        self.extra = extra
        self.counts = counts  # [commands, words] over the whole classification

    def program(self) -> list[Action]:
        return self._actions(self._list(nested=False))

    # -- lists and pipelines --------------------------------------------------------------

    def _list(self, nested: bool) -> list[_Pipeline]:
        src, n = self.src, self.n
        pipelines: list[_Pipeline] = []
        commands: list[_Command] = []
        cmd = _Command()
        pending = False  # after | && ||: a command must follow
        while True:
            pos = self._blanks(self.pos)
            self.pos = pos
            if pos >= n or (nested and src[pos] == ")"):
                if pos >= n and nested:
                    raise _Opaque("unbalanced parentheses: $( without a closing )")
                if cmd.empty():
                    if pending or commands:
                        raise _Opaque("the program ends after an operator")
                else:
                    self._count_command()
                    commands.append(cmd)
                if commands:
                    pipelines.append(_Pipeline(commands))
                self.pos = pos + 1 if nested else pos
                return pipelines
            c = src[pos]
            if c == "#":
                end = src.find("\n", pos)
                self.pos = n if end < 0 else end
                continue
            if c == "\n" or c == ";":
                if c == ";" and pos + 1 < n and src[pos + 1] in ";&":
                    raise _Opaque("case clause terminator ;; (compound command)")
                self.pos = pos + 1
                if cmd.empty():
                    if c == "\n" and pending:
                        continue  # `ls |` newline `wc`: the pipeline goes on
                    if c == ";" or commands:
                        raise _Opaque("syntax error: ';' without a command before it")
                    continue
                self._count_command()
                commands.append(cmd)
                pipelines.append(_Pipeline(commands))
                commands, cmd, pending = [], _Command(), False
                continue
            if c == "&":
                if src.startswith("&&", pos):
                    self._end_command(cmd, "&&")
                    commands.append(cmd)
                    pipelines.append(_Pipeline(commands))
                    commands, cmd, pending = [], _Command(), True
                    self.pos = pos + 2
                    continue
                if src.startswith("&>", pos):
                    self._redirect(cmd, "")
                    continue
                self._end_command(cmd, "&")
                commands.append(cmd)
                pipelines.append(_Pipeline(commands, background=True))
                commands, cmd, pending = [], _Command(), False
                self.pos = pos + 1
                continue
            if c == "|":
                if src.startswith("|&", pos):
                    raise _Opaque("|& pipes standard error too (bash only)")
                self._end_command(cmd, "||" if src.startswith("||", pos) else "|")
                commands.append(cmd)
                if src.startswith("||", pos):
                    pipelines.append(_Pipeline(commands))
                    commands = []
                    self.pos = pos + 2
                else:
                    self.pos = pos + 1
                cmd, pending = _Command(), True
                continue
            if c == "<" or c == ">":
                self._redirect(cmd, "")
                continue
            if c == "(" or c == ")":
                raise _Opaque("subshell, function definition or unbalanced parentheses")
            pending = False
            word = self._word(cmd)
            if not word.parts:
                continue
            plain = word.plain()
            if not cmd.named:
                if plain in _RESERVED:
                    raise _Opaque(f"compound command or keyword {plain!r}")
                cmd.named = not _is_assignment(word)
            nxt = src[self.pos] if self.pos < n else ""
            if nxt in ("<", ">"):
                if plain is not None and plain.isdigit():
                    self._redirect(cmd, plain)
                    continue
                if plain is not None and _NAMED_FD.fullmatch(plain):
                    raise _Opaque("named file descriptor redirection {name}>")
            cmd.words.append(word)

    def _blanks(self, pos: int) -> int:
        """The position after blanks and line continuations from ``pos``."""
        src, n = self.src, self.n
        while pos < n:
            c = src[pos]
            if c == " " or c == "\t":
                pos += 1
            elif c == "\\" and src.startswith("\\\n", pos):
                pos += 2
            else:
                break
        return pos

    def _end_command(self, cmd: _Command, op: str) -> None:
        if cmd.empty():
            raise _Opaque(f"syntax error: {op!r} without a command before it")
        self._count_command()

    def _count_command(self) -> None:
        self.counts[0] += 1
        if self.counts[0] > MAX_COMMANDS:
            raise _Opaque(f"more than {MAX_COMMANDS} commands")

    # -- redirections ---------------------------------------------------------------------

    def _redirect(self, cmd: _Command, fd: str) -> None:
        src, pos = self.src, self.pos
        for op in ("&>>", "&>", "<<", "<>", "<&", "<(", "<", ">>", ">|", ">&", ">(", ">"):
            if src.startswith(op, pos):
                break
        if op == "<<":
            raise _Opaque("here-document")
        if op in ("<(", ">("):
            raise _Opaque("process substitution")
        if fd and op.startswith("&"):
            raise _Opaque("syntax error: file descriptor before &>")
        pos = self._blanks(pos + len(op))
        self.pos = pos
        if pos >= self.n or src[pos] in "\n;&|<>()#":
            raise _Opaque(f"redirection {op} without a target")
        target = self._word(cmd)
        if not target.parts:
            raise _Opaque(f"redirection {op} without a target")
        plain = target.plain()
        dup = op in ("<&", ">&") and plain is not None and (plain.isdigit() or plain == "-")
        write = not dup and op != "<" and op != "<&"
        cmd.redirects.append(_Redirect(fd, op, target, dup, write))

    # -- words ----------------------------------------------------------------------------

    def _word(self, cmd: _Command) -> _Word:
        src, n, counts = self.src, self.n, self.counts
        pos = self.pos
        parts: list[tuple[int, str]] = []
        if pos < n and src[pos] == "~":
            parts.append((_RAW, "~"))  # tilde prefix
            pos += 1
        while pos < n:
            counts[1] += 1
            if counts[1] > MAX_PIECES:
                raise _Opaque(f"more than {MAX_PIECES} words, quoted parts and expansions")
            m = _PLAIN_RUN.match(src, pos)
            if m is not None:
                parts.append((_UNQ, m.group()))
                pos = m.end()
                continue
            m = _GLOB_RUN.match(src, pos)
            if m is not None:
                parts.append((_RAW, m.group()))
                pos = m.end()
                continue
            c = src[pos]
            if c in " \t\n|&;<>()":
                break
            if c == "\\":
                if pos + 1 >= n:
                    raise _Opaque("the program ends with a backslash")
                if src[pos + 1] != "\n":
                    parts.append((_LIT, src[pos + 1]))
                pos += 2
            elif c == "'":
                end = src.find("'", pos + 1)
                if end < 0:
                    raise _Opaque("unbalanced single quote")
                parts.append((_LIT, src[pos + 1:end]))
                pos = end + 1
            elif c == '"':
                pos = self._double_quoted(pos + 1, parts, cmd)
            elif c == "$":
                pos = self._dollar(pos, parts, cmd, in_dq=False)
            else:  # `
                pos = self._backquoted(pos, parts, cmd, in_dq=False)
        self.pos = pos
        return _Word(parts if len(parts) < 2 else _merge(parts))

    def _double_quoted(self, pos: int, parts: list[tuple[int, str]], cmd: _Command) -> int:
        src, n, counts = self.src, self.n, self.counts
        parts.append((_LIT, ""))
        while True:
            if pos >= n:
                raise _Opaque("unbalanced double quote")
            counts[1] += 1
            if counts[1] > MAX_PIECES:
                raise _Opaque(f"more than {MAX_PIECES} words, quoted parts and expansions")
            m = _DQ_RUN.match(src, pos)
            if m is not None:
                parts.append((_LIT, m.group()))
                pos = m.end()
                continue
            c = src[pos]
            if c == '"':
                return pos + 1
            if c == "\\":
                if pos + 1 >= n:
                    raise _Opaque("unbalanced double quote")
                nxt = src[pos + 1]
                if nxt == "\n":
                    pos += 2
                elif nxt in '$`"\\':
                    parts.append((_LIT, nxt))
                    pos += 2
                else:
                    parts.append((_LIT, "\\"))
                    pos += 1
            elif c == "$":
                pos = self._dollar(pos, parts, cmd, in_dq=True)
            else:  # `
                pos = self._backquoted(pos, parts, cmd, in_dq=True)

    def _dollar(self, pos: int, parts: list[tuple[int, str]], cmd: _Command, in_dq: bool) -> int:
        src, n = self.src, self.n
        kind = _EXP_DQ if in_dq else _EXP
        nxt = src[pos + 1] if pos + 1 < n else ""
        if nxt == "(":
            if src.startswith("((", pos + 1):
                end = self._arithmetic(pos + 3)
            else:
                end = self._substitution(pos + 2, cmd)
            parts.append((kind, src[pos:end]))
            return end
        if nxt == "{":
            close = src.find("}", pos + 2)
            if close < 0:
                raise _Opaque("unbalanced ${")
            inner = src[pos + 2:close]
            if not inner or any(ch in _PARAM_FORBIDDEN for ch in inner):
                raise _Opaque("parameter expansion ${...} holding quotes or code")
            if not _PLAIN_PARAM.fullmatch(inner):
                raise _Opaque("parameter expansion ${...} that evaluates its value "
                              "(subscript, substring, indirection or transformation)")
            parts.append((kind, src[pos:close + 1]))
            return close + 1
        if nxt in ("'", '"') and not in_dq:
            raise _Opaque(f"{'$' + nxt}...{nxt} quoting")
        if nxt and nxt in "[=~^+":
            raise _Opaque(f"${nxt} expansion ($[...] arithmetic or a zsh form)")
        if nxt and (nxt == "_" or (nxt.isascii() and nxt.isalpha())):
            m = _NAME.match(src, pos + 1)
            end = m.end() if m is not None else pos + 2
            parts.append((kind, src[pos:end]))
            return end
        if nxt and nxt in _SPECIAL_PARAMETERS:
            parts.append((kind, src[pos:pos + 2]))
            return pos + 2
        parts.append((_LIT if in_dq else _UNQ, "$"))
        return pos + 1

    def _arithmetic(self, pos: int) -> int:
        """The end of ``$((...))`` whose body starts at ``pos``; opaque if it can hide code."""
        src, n = self.src, self.n
        depth = 0
        while pos < n:
            c = src[pos]
            if c in _ARITH_FORBIDDEN or (c == "$" and src.startswith("$(", pos)):
                raise _Opaque("arithmetic expansion holding quotes, subscripts or code")
            if c == "_" or c == "$" or (c.isascii() and c.isalpha()):
                # A variable's value is itself evaluated as arithmetic (and its
                # subscripts run code): only literal numbers are safe.
                raise _Opaque("arithmetic expansion on variables")
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    if pos + 1 < n and src[pos + 1] == ")":
                        return pos + 2
                    raise _Opaque("subshell inside a command substitution: $( (...) )")
                depth -= 1
            pos += 1
        raise _Opaque("unbalanced parentheses: $(( without a closing ))")

    def _substitution(self, pos: int, cmd: _Command) -> int:
        """Parse ``$(...)`` in place from ``pos``; returns the position after its ``)``."""
        if self.depth >= MAX_DEPTH:
            raise _Opaque(f"command substitutions or shells nested deeper than {MAX_DEPTH}")
        saved_depth, saved_extra = self.depth, self.extra
        self.pos = pos
        self.depth += 1
        self.extra = saved_extra | {"substitution"}
        try:
            cmd.subs.extend(self._actions(self._list(nested=True)))
        finally:
            self.depth, self.extra = saved_depth, saved_extra
        return self.pos

    def _backquoted(self, pos: int, parts: list[tuple[int, str]], cmd: _Command,
                    in_dq: bool) -> int:
        src, n = self.src, self.n
        i = pos + 1
        inner: list[str] = []
        while True:
            if i >= n:
                raise _Opaque("unbalanced backquote")
            m = _BQ_RUN.match(src, i)
            if m is not None:
                inner.append(m.group())
                i = m.end()
                continue
            c = src[i]
            if c == "`":
                break
            nxt = src[i + 1] if i + 1 < n else ""
            if nxt in ("$", "`", "\\") or (in_dq and nxt == '"'):
                inner.append(nxt)
                i += 2
            else:
                inner.append(c)
                i += 1
        if self.depth >= MAX_DEPTH:
            raise _Opaque(f"command substitutions or shells nested deeper than {MAX_DEPTH}")
        sub = _Parser("".join(inner), self.depth + 1, self.extra | {"substitution"},
                      self.counts)
        cmd.subs.extend(sub.program())
        parts.append((_EXP_DQ if in_dq else _EXP, src[pos:i + 1]))
        return i + 1

    # -- actions --------------------------------------------------------------------------

    def _actions(self, pipelines: list[_Pipeline]) -> list[Action]:
        out: list[Action] = []
        sequence = len(pipelines) > 1
        for pipeline in pipelines:
            piped = len(pipeline.commands) > 1
            for cmd in pipeline.commands:
                flags = set(self.extra)
                if piped:
                    flags.add("pipeline")
                if sequence:
                    flags.add("sequence")
                if pipeline.background:
                    flags.add("background")
                action, nested = self._simple(cmd, flags)
                if action is not None:
                    out.append(action)
                out.extend(cmd.subs)
                out.extend(nested)
        return out

    def _simple(self, cmd: _Command, flags: set[str]) -> tuple[Action | None, list[Action]]:
        words = cmd.words
        while words and words[0].plain() == "!":
            words = words[1:]  # pipeline negation
        if not words and not cmd.redirects:
            raise _Opaque("syntax error: '!' without a command")
        for word in (*words, *(r.target for r in cmd.redirects)):
            if _brace_expansion(word.unquoted_shape()):
                raise _Opaque("brace expansion {a,b}")
            if word.dynamic:
                flags.add("dynamic")
        count = 0
        while count < len(words) and _is_assignment(words[count]):
            if _CODE.search(words[count].literal_text()):
                raise _Opaque("an assignment of text holding shell code")
            count += 1
        argv = words[count:]
        if count:
            flags.add("assignment")
        paths: list[str] = []
        for redirect in cmd.redirects:
            flags.add("redirect")
            if redirect.dup:
                continue
            if redirect.write:
                flags.add("write_redirect")
            if redirect.target.glob:
                flags.add("dynamic")  # bash expands a pattern that matches one file
            value = redirect.target.value()
            paths.append(value if redirect.target.dynamic else normalize_path(value))
        programs: list[str] = []
        nested: list[Action] = []
        if argv:
            programs, nested = self._programs(argv, flags)
        kind = "command" if argv or not count else "assignment"
        line = " ".join([*(w.render() for w in words), *(r.render() for r in cmd.redirects)])
        objects: dict[str, tuple[str, ...]] = {"commands": (line,)}
        if programs:
            objects["programs"] = tuple(dict.fromkeys(programs))
        if paths:
            objects["paths"] = tuple(dict.fromkeys(paths))
        return (Action("exec", kind, MappingProxyType(objects), frozenset(flags), line),
                nested)

    def _programs(self, argv: list[_Word], flags: set[str]) -> tuple[list[str], list[Action]]:
        """The programs a command runs (wrappers and what they wrap), and nested shell actions."""
        first = argv[0].plain()
        if first is not None and first in _RESERVED:
            raise _Opaque(f"compound command or keyword {first!r}")
        if first is not None and first.startswith("="):
            raise _Opaque("=name expansion (zsh)")
        head = argv[0].parts
        if len(head) >= 2 and head[0][0] == _UNQ and _NAME.fullmatch(head[0][1]) and \
                head[1][0] == _RAW and head[1][1].startswith("["):
            raise _Opaque("array assignment name[subscript]=value")
        programs: list[str] = []
        nested: list[Action] = []
        self._resolve(argv, flags, programs, nested, 0)
        return programs, nested

    def _resolve(self, argv: Sequence[_Word], flags: set[str], programs: list[str],
                 nested: list[Action], level: int) -> None:
        """Add the programs ``argv`` runs to ``programs``, nested shell actions to ``nested``."""
        index = 0
        for _ in range(_MAX_WRAPPERS):
            name = _program_name(argv[index])
            programs.append(name)
            spec = _WRAPPERS.get(name.rsplit("/", 1)[-1])
            if spec is None:
                break
            try:
                found = _skip_options(spec, argv, index + 1, flags)
            except _UnknownOption:
                programs.extend(_candidates(argv[index + 1:]))
                return
            if found is None:
                return
            index = found
        else:
            raise _Opaque(f"more than {_MAX_WRAPPERS} nested wrappers")
        base = programs[-1].rsplit("/", 1)[-1]
        rest = argv[index + 1:]
        evaluating = base in _EVALUATING or (
            base in _EVALUATING_WITH_OPTION and any(w.value().startswith("-") for w in rest))
        if base == "let" or (evaluating and any(
                ch in w.value() for w in rest for ch in "$`[")):
            # bash evaluates a subscript in a variable name as arithmetic, which
            # runs $(...) found in another variable's value (printf -v 'a[X]').
            raise _Opaque(f"{base} evaluates names, subscripts or arithmetic")
        if base in _SETTING and any("=" in w.value() for w in rest):
            flags.add("assignment")
        if base in _SHELLS:
            nested.extend(self._shell(rest))
        elif base in ("su", "runuser"):
            nested.extend(self._su(base, rest, programs))
        elif base == "find":
            self._find(rest, flags, programs, nested, level)

    def _find(self, args: Sequence[_Word], flags: set[str], programs: list[str],
              nested: list[Action], level: int) -> None:
        """The commands of ``find ... -exec CMD ... ;`` are programs of the action too."""
        index = 0
        while index < len(args):
            if args[index].value() not in _FIND_EXEC:
                index += 1
                continue
            end = index + 1
            while end < len(args) and args[end].value() not in (";", "+"):
                end += 1
            if end == index + 1 or level >= 2:
                raise _Opaque("find -exec without a command, or nested too deeply")
            self._resolve(args[index + 1:end], flags, programs, nested, level + 1)
            index = end + 1

    def _su(self, base: str, args: Sequence[_Word], programs: list[str]) -> list[Action]:
        """``su -c PROGRAM``: the program is shell code; runuser's other commands are listed."""
        for index, word in enumerate(args):
            value = word.literal()
            if value in _SU_COMMAND:
                if index + 1 >= len(args):
                    return []
                return self._nested(args[index + 1])
            name, eq, _ = value.partition("=")
            if eq and name in _SU_COMMAND:
                raise _Opaque(f"{base} {name}= (give the program as a separate word)")
            if value.startswith("-") and not value.startswith("--") and (
                    "c" in value or "C" in value):
                raise _Opaque(f"{base} option {value!r} may hold -c")
            if value == "--":
                break
        if base == "runuser":  # runuser -u USER -- COMMAND runs it without a shell
            programs.extend(_candidates(args))
        return []

    def _shell(self, args: Sequence[_Word]) -> list[Action]:
        """The actions of ``sh -c PROGRAM`` (empty when the shell is not given -c)."""
        index, command = 0, False
        while index < len(args):
            if args[index].dynamic:
                if command:
                    break  # the program itself: refused below
                raise _Opaque("a shell's options are dynamic (they may hold -c)")
            value = args[index].value()
            if value in ("--", "-"):
                index += 1
                break
            if value.startswith("--"):
                if value in _SHELL_LONG:
                    index += 1
                    continue
                if value in _SHELL_LONG_ARG:
                    index += 2
                    continue
                raise _Opaque(f"unknown shell option {value!r}")
            if len(value) < 2 or value[0] not in "-+":
                break
            skip = 1
            for letter in value[1:]:
                if letter == "c" and value[0] == "-":
                    command = True
                elif letter in "oO":
                    skip += 1
                elif letter not in _SHELL_FLAGS:
                    raise _Opaque(f"unknown shell option {value!r}")
            index += skip
        if not command or index >= len(args):
            return []
        return self._nested(args[index])

    def _nested(self, word: _Word) -> list[Action]:
        """The actions of a shell program given as one word (``sh -c WORD``)."""
        if word.dynamic:
            raise _Opaque("the program given to a shell is dynamic")
        if self.depth >= MAX_DEPTH:
            raise _Opaque(f"command substitutions or shells nested deeper than {MAX_DEPTH}")
        return _Parser(word.value(), self.depth + 1, self.extra | {"nested"},
                       self.counts).program()


def _merge(parts: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Adjacent pieces of the same kind joined (one pass: linear in the word)."""
    out: list[tuple[int, str]] = []
    run: list[str] = []
    run_kind = -1
    for kind, text in parts:
        if kind != run_kind:
            if run:
                out.append((run_kind, "".join(run)))
            run, run_kind = [], kind
        run.append(text)
    if run:
        out.append((run_kind, "".join(run)))
    return out


def _brace_expansion(shape: str) -> bool:
    """Whether unquoted text may brace-expand: a ``,`` or ``..`` between a ``{`` and a ``}``.

    Deliberately coarse (the first ``{`` to the last ``}``), so nested forms
    such as ``{rm,{b}}`` count too; linear in the word.
    """
    first = shape.find("{")
    if first < 0:
        return False
    last = shape.rfind("}")
    if last <= first:
        return False
    inside = shape[first + 1:last]
    return "," in inside or ".." in inside


def _is_assignment(word: _Word) -> bool:
    parts = word.parts
    return bool(parts) and parts[0][0] == _UNQ and _ASSIGNMENT.match(parts[0][1]) is not None


def _program_name(word: _Word) -> str:
    if word.dynamic:
        raise _Opaque("the command name is dynamic")
    if word.glob:
        raise _Opaque("the command name is a glob pattern")
    name = word.value()
    if not name:
        raise _Opaque("empty command name")
    base = name.rsplit("/", 1)[-1]
    if base in _INTERPRETING or name in _INTERPRETING:
        raise _Opaque(f"{base} runs text as shell code")
    return name


def _skip_options(spec: _Wrapper, argv: Sequence[_Word], index: int,
                  flags: set[str]) -> int | None:
    """The index of the program a wrapper runs (None: it runs none)."""
    via_shell = False
    while index < len(argv):
        value = argv[index].literal()
        if value == "--":
            index += 1
            break
        if spec.assignments and _ASSIGNMENT.match(value):
            index = _skip_assignments(argv, index, flags)
            continue
        if value == "-" and spec.dash:
            index += 1
            continue
        if value.startswith("--"):
            name, eq, _ = value[2:].partition("=")
            if name in spec.opaque:
                raise _Opaque(f"--{name} makes the wrapper split or interpret its arguments")
            if name in spec.via_shell:
                via_shell = True
            if name in spec.long_arg:
                index += 1 if eq else 2
            elif name in spec.long_flag:
                index += 1
            else:
                raise _UnknownOption
            continue
        if len(value) > 1 and value[0] == "-":
            if spec.numeric and value[1:].isdigit():
                index += 1
                continue
            skip = 1
            for position, letter in enumerate(value[1:], start=1):
                if letter in spec.opaque:
                    raise _Opaque(f"-{letter} makes the wrapper split or interpret its "
                                  "arguments")
                if letter in spec.via_shell:
                    via_shell = True
                if letter in spec.short_arg:
                    skip = 1 if position + 1 < len(value) else 2
                    break
                if letter not in spec.short_flag:
                    raise _UnknownOption
            index += skip
            continue
        break
    if spec.assignments:  # env and sudo take NAME=VALUE after -- too
        index = _skip_assignments(argv, index, flags)
    index += spec.positional
    if index >= len(argv):
        return None
    if via_shell and any("$" in w.value() or "`" in w.value() for w in argv[index:]):
        raise _Opaque("the wrapper passes the command to a shell (sudo -s/-i) with $ or `")
    return index


def _skip_assignments(argv: Sequence[_Word], index: int, flags: set[str]) -> int:
    """The index after the NAME=VALUE words from ``index`` (a wrapper's assignments)."""
    while index < len(argv) and _ASSIGNMENT.match(argv[index].literal()):
        if _CODE.search(argv[index].literal_text()):
            raise _Opaque("an assignment of text holding shell code")
        flags.add("assignment")
        index += 1
    return index


def _candidates(words: Sequence[_Word]) -> list[str]:
    """After an unknown wrapper option: every word that may be the program."""
    out: list[str] = []
    for word in words:
        if word.dynamic or word.glob:
            raise _Opaque("a wrapper option the gateway does not know, followed by a dynamic "
                          "word")
        value = word.value()
        if value.startswith("-") or not value:
            continue
        base = value.rsplit("/", 1)[-1]
        if base in _SHELLS or base in _WRAPPERS or base in _INTERPRETING:
            raise _Opaque(f"a wrapper option the gateway does not know, followed by {base}")
        out.append(value)
    return out


# -- public interface ------------------------------------------------------------------------


def normalize_path(path: str) -> str:
    """Lexically normalise a path: ``//`` and ``.`` removed, ``..`` resolved.

    Absolute paths stay absolute (``/srv/../etc/x`` -> ``/etc/x``, ``/..`` ->
    ``/``); relative ones stay relative (``a/../../b`` -> ``../b``); a leading
    ``~`` or ``~user`` is kept as the first component.
    """
    if not path:
        return path
    head = ""
    if path.startswith("~"):
        head, _, path = path.partition("/")
        if not path:
            return head
    absolute = path.startswith("/") and not head
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")
            continue
        parts.append(segment)
    body = "/".join(parts)
    if head:
        return f"{head}/{body}" if body else head
    if absolute:
        return "/" + body
    return body or "."


def opaque_action(text: str, reason: str) -> Action:
    """The single action of a program that cannot be classified safely."""
    return Action("exec", "opaque", MappingProxyType({"reason": (reason,)}), frozenset(), text)


def classify_command(command: str) -> tuple[Action, ...]:
    """The actions of an SSH exec command line, in order; never raises (see the module doc).

    An empty, blank or comment-only command has no actions: ``()``.
    """
    if len(command) > MAX_COMMAND_BYTES or (
            not command.isascii() and len(command.encode("utf-8", "surrogatepass"))
            > MAX_COMMAND_BYTES):
        return (opaque_action(command, f"longer than {MAX_COMMAND_BYTES // 1024} KiB"),)
    bad = _CONTROL.search(command)
    if bad is not None:
        char = bad.group()
        reason = ("NUL byte" if char == "\0" else "not UTF-8"
                  if "\ud800" <= char <= "\udfff" else f"control character U+{ord(char):04X}")
        return (opaque_action(command, reason),)
    try:
        return tuple(_Parser(command, 0, frozenset(), [0, 0]).program())
    except _Opaque as exc:
        return (opaque_action(command, exc.reason),)


class ShellClassifier:
    """The pipeline's exec classifier: fills ``actions`` and ``action`` of exec operations.

    Other operations pass unchanged. Results are cached by exact text (LRU of
    ``cache_size`` entries), so the same command yields the same tuple.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        self.cache_size = max(0, cache_size)
        self._cache: OrderedDict[str, tuple[Action, ...]] = OrderedDict()

    def classify(self, op: Operation) -> Operation:
        if op.kind != "exec":
            return op
        actions = self.classify_text(op.text)
        return replace(op, actions=actions, action=actions[0].action if actions else "exec")

    def classify_text(self, command: str) -> tuple[Action, ...]:
        """:func:`classify_command`, cached."""
        cache = self._cache
        hit = cache.get(command)
        if hit is not None:
            cache.move_to_end(command)
            return hit
        actions = classify_command(command)
        if self.cache_size and len(command) <= MAX_COMMAND_BYTES:
            cache[command] = actions
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return actions

    def cache_clear(self) -> None:
        self._cache.clear()
