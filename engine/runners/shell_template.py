"""Rendering `cmd` templates for bash so that no `{{ }}` value is ever parsed as shell code.

Each expression's value is collected through a Jinja `finalize` hook and replaced by a reference
to an environment variable ("${SQUALL_ARG_0}") quoted for the spot it lands in: plain words,
double or single quotes, `$'...'`, command substitutions, backticks, comments and here-documents.
Bash then expands the variable as data. StackStorm pastes the text in and is injectable.

Quoting is not enough where bash evaluates a variable's contents as arithmetic (`$(( ))`, `(( ))`,
`$[ ]`, `[[ -eq ]]`, `[ -v ]`, `let`, `unset`, array subscripts, assignments to `declare -i` variables...),
because arithmetic runs the `$( )` in an array subscript: there a value must be a plain number, or
rendering fails. `numeric_placeholder_problem`
finds such spots in a template at load time, where only integer and number parameters may go
(docs/security.md, "Shell templates").
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.nodes

from engine.runners import RunRequest
from engine.templates import TemplateRenderError, build_environment, compiled

_PLACEHOLDER = "\x00{}\x00"
_PLACEHOLDER_RE = re.compile("\x00([0-9]+)\x00")
_collected: contextvars.ContextVar[list[str]] = contextvars.ContextVar("squall_shell_values")


def _capture(value: Any) -> str:
    values = _collected.get()
    text = str(value)  # None is "None", as Jinja (and StackStorm) writes it and the stored command shows it
    if "\x00" in text:  # output captured by {% set %}/{% filter %}/macros: give back the real values
        text = _PLACEHOLDER_RE.sub(lambda m: values[int(m[1])], text)
    values.append(text)
    return _PLACEHOLDER.format(len(values) - 1)


@functools.lru_cache(maxsize=8)
def shell_environment(base: jinja2.Environment) -> jinja2.Environment:
    """`base` (with its filters and `decrypt_kv`) whose `{{ }}` output goes through `_capture`."""
    return base.overlay(finalize=_capture)


def render_shell_command(template: str, context: dict[str, Any],
                         env: jinja2.Environment | None = None) -> tuple[str, dict[str, str]]:
    """Render a `cmd` template into bash text plus the environment variables it refers to."""
    shell_env = shell_environment(env or build_environment())

    def render(_mark: Callable[[Any], str]) -> str:  # the overlay's finalize marks each value itself
        try:
            return compiled(shell_env, template).render(context)
        except Exception as exc:  # jinja raises many types; callers want one
            raise TemplateRenderError(f"cannot render cmd {template!r}: {exc}", template=template) from exc

    return shell_command(render, template)


def shell_command(render: Callable[[Callable[[Any], str]], str], template: str) -> tuple[str, dict[str, str]]:
    """Bash text plus the variables it refers to, from any renderer (Jinja here, Orquesta's YAQL in
    workflows) that passes each value it inserts through the `mark` it is given."""
    values: list[str] = []
    token = _collected.set(values)
    try:
        text = render(_capture)
    finally:
        _collected.reset(token)
    return _ShellQuoter(text, values, template).run(), {f"SQUALL_ARG_{n}": v for n, v in enumerate(values)}


#: Characters after which a `#` starts a comment (it must begin a word).
_WORD_BREAKS = frozenset(" \t\n;&|()<>")
_HEREDOCS = ("heredoc", "qheredoc")

#: What a value must look like where bash evaluates it as arithmetic.
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
#: After `${`: an optional `#`/`!`, the name, then a subscript `[` or a substring offset `:`.
_BRACE = re.compile(r"([#!]?)([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*])(?:(\[)|(:)(?![-=?+]))?")
#: A word starting `name[`: an array element, which `name[...]=` assigns with an arithmetic subscript.
_ELEMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[")
#: The operators of `[[ ]]` whose operands bash evaluates as arithmetic (`-v` evaluates a name's subscript,
#: in `[ ]` and `test` too).
_ARITH_TEST = re.compile(r"-(eq|ne|lt|le|gt|ge|v)(?=[ \t\n)]|\Z)")
#: A command name, possibly quoted (`"let"` runs let too).
_COMMAND_WORD = re.compile(r"""(?:[A-Za-z_]|\\.|'[A-Za-z_]*'|"[A-Za-z_]*")+(?=[ \t]|\Z)""")
#: Text before a word that makes it a command name: a separator, then reserved words or assignments.
_COMMAND_START = re.compile(
    r"(?:\A|[\n;&|({`])[ \t]*(?:(?:!|then|do|else|elif|if|while|until|time|-p|coproc|builtin|command"
    r"|[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=[^ \t\n;&|]*)[ \t]+)*\Z"
)
_DECLARE = frozenset({"declare", "typeset", "local", "export", "readonly"})
_OPTIONS = re.compile(r"(?:[ \t]+[-+][A-Za-z]+)+")
#: `declare -A name` (or `typeset`, options combined as in `-gA`): the subscripts of an associative
#: array are strings, not arithmetic. Only the first name counts: later words may be inside quotes.
_ASSOCIATIVE_DECLARATION = re.compile(
    r"(?:declare|typeset)((?:[ \t]+-[A-Za-z]+)+)[ \t]+([A-Za-z_][A-Za-z0-9_]*)(?=[=\s;<>]|\Z)")
#: The options such a declaration may have (not `-a`, `-n`, `-f`, `-p`...: they make it something else).
_ASSOCIATIVE_OPTIONS = frozenset("-Agilrtux")
#: Words that open a compound command (`f() {` too), counted wherever they stand at top level: a word
#: miscounted as one only withdraws exemptions.
_COMPOUND_OPEN = re.compile(r"(?:if|case|while|until|for|select|\{)(?=[ \t\n;&|()<>]|\Z)")
#: Words that close one, counted only as the first word after a separator; not before `)` or `|`
#: (`fi)` is a `case` pattern).
_COMPOUND_CLOSE = re.compile(r"(?:fi|done|esac|\})(?=[ \t\n;&<>]|\Z)(?![ \t]*[)|])")
#: Text just before a name that only reads the variable: `$a`, `${a`, `${#a`, `${!a[` (its keys; but
#: `${!a*}` lists the names starting with `a`, which may be handed to `unset`).
_EXPANSION_BEFORE = re.compile(r"\$(?:\{#?)?\Z")
_KEYS_BEFORE = re.compile(r"\$\{!\Z")
#: Arrays bash makes indexed itself, which `declare -A` cannot convert (it fails, and they stay indexed).
_BASH_ARRAYS = re.compile(r"BASH_[A-Z_]+|DIRSTACK|FUNCNAME|GROUPS|PIPESTATUS")
#: The arguments of a declaration: with `-i` (`-ai`, `-gi`...) its names get the integer attribute.
_DECLARATION = re.compile(r"\b(?:declare|typeset|local|export|readonly)[ \t]([^;&|\n]*)")
_DECLARED_NAME = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?=[=\s\[+]|$)")
#: A word assigning a variable: `name=`, `name+=`, `name[...]=` (and `name=(` for an array).
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]\n]*\])?\+?=")
#: After `printf`: the `-v name` it assigns its output to.
_PRINTF_TARGET = re.compile(r"[ \t]+-v[ \t]*['\"]?([A-Za-z_][A-Za-z0-9_]*)")
#: After `for` or `select`: the variable each word is assigned to.
_LOOP_VARIABLE = re.compile(r"[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]+in(?=[ \t;\n]|\Z)")
#: The rest of a simple command (for the variables `read` and `mapfile` assign).
_REST_OF_COMMAND = re.compile(r"[^;&|\n]*")
_READERS = frozenset({"read", "mapfile", "readarray"})


def _declared(text: str, flag: str) -> set[str]:
    """The names that a declaration in `text` gives the attribute `flag` (`declare -i n`, `local -ai a`).

    Flow-insensitive on purpose: a name declared anywhere counts everywhere, which can only make
    more places arithmetic, never fewer."""
    return {name for args in _DECLARATION.findall(text) if re.search(rf"(?:^|\s)-[A-Za-z]*{flag}", args)
            for name in _DECLARED_NAME.findall(args)}


@dataclass(eq=False)
class _Frame:
    """One level of the quoter's stack.

    `kind` is plain | arith | double | single | ansi | comment | heredoc | qheredoc; `closer` what ends
    a nested plain/arith level, or the (delimiter, strip_tabs) of a here-document. `numeric` names the
    arithmetic context this level opens ("$(( ))"), "" for a command substitution (which leaves any),
    or None to be what the enclosing level is. `command` is the context of the arguments of the simple
    command being read (`let`, `local -i`). `pending` (a `[[ ]]` or a `name[` word) collects the values
    whose context is known only at its end: `decided` is then the context, or None for the enclosing one.
    `role`: cond (`[[ ]]`), group (`( )` inside it), array (`=( )`), element (a `name[` word),
    subscript (`${name[`) or brace (`${ }`). `quote` is the kind whose quoting references take, when
    not `kind` (bash reads no quotes in a double-quoted `$[ ]`).
    """

    kind: str
    closer: Any = None
    numeric: str | None = None
    role: str = ""
    quote: str = ""
    command: str | None = None
    pending: list[int] | None = None
    decided: str | None = None
    name: str = ""  # the array of a subscript
    test: str = ""  # `test` or `[` when the simple command being read is one (its `-v` is arithmetic)
    assigning: bool = False  # `command` comes from an assignment word, and ends with it
    declaring: bool = False  # the command is `declare`/`local`/...: its arguments may be assignments

    def end_command(self) -> None:
        """At `;`, `&`, `|` or a newline: the simple command being read is over."""
        self.command, self.test, self.assigning, self.declaring = None, "", False, False


class _ShellQuoter:
    """Puts each placeholder in the rendered text as a reference to its variable, quoted for where it is.

    A small scanner of bash's quoting: plain words, "double", 'single' and $'ansi' quotes,
    $( ) / ` ` / ( ) / ${ } / $(( )) nesting, # comments and here-documents. In plain text the
    reference is "${SQUALL_ARG_n}", inside double quotes and unquoted here-documents ${SQUALL_ARG_n},
    inside single quotes the quote is closed and reopened around "${SQUALL_ARG_n}". A quoted
    here-document expands nothing, so there the value itself is written, when it cannot end the
    document early.

    Quoting does not help where bash evaluates a variable's *contents* as arithmetic, which runs
    `$( )` inside array subscripts: `$(( ))`, `(( ))`, `$[ ]`, `[[ ]]` with -eq/-lt/... or -v, `[ -v ]`
    and `test -v`, the arguments of `let`, `unset` and `declare -i`, array subscripts (`${a[i]}`, `a[i]=`;
    not those of an array a top-level `declare -A` surely made associative first: `top_word`),
    substring offsets (`${s:i}`) and what is assigned to a variable declared with `-i` anywhere in the
    template (`n=`, `n+=`, `n[i]=`, `n=( )`, `${n:=}`, `printf -v n`, `for n in`); `read` into one
    is refused outright. A value there must be a plain number. With `analysis` the values are not looked at:
    the context of each placeholder is recorded there instead (None where it is not numeric).
    """

    def __init__(self, text: str, values: list[str], template: str,
                 analysis: dict[int, str | None] | None = None) -> None:
        self.text = text
        self.values = values
        self.template = template
        self.analysis = analysis
        self.out: list[str] = []
        self.stack: list[_Frame] = [_Frame("plain", numeric="")]
        self.pending: list[tuple[str, bool, bool]] = []  # here-documents opened on the current line
        self.prev = "\n"
        # Associative arrays, added as the scan passes a `declare -A` that bash surely runs first (`declaration`).
        self.associative: set[str] = set()
        self.declaration: tuple[str, int] | None = None  # (name, start) until its command ends
        self.separator = "\n"  # at top level: what ended the last command ("" inside one)
        self.compound: int | None = 0  # compound commands open at top level; None when lost count
        # Assigning to a variable with the integer attribute evaluates the value as arithmetic; so does
        # assigning through a nameref (`declare -n r=n`), which may point at one.
        self.integer = _declared(text, "i")
        if self.integer:
            self.integer |= _declared(text, "n")
        self.unsupported: str | None = None  # with `analysis`: why the template cannot be made safe

    def fail(self, reason: str) -> TemplateRenderError:
        return TemplateRenderError(f"cannot render cmd {self.template!r}: {reason}", template=self.template)

    def refuse(self, reason: str) -> None:
        """A construct whose values cannot be checked: rendering fails, and the analysis records it
        (so the action fails to load, whatever its parameters' types)."""
        if self.analysis is None:
            raise self.fail(reason)
        self.unsupported = self.unsupported or reason

    def reference(self, kind: str, index: int) -> str:
        ref = f"${{SQUALL_ARG_{index}}}"
        if kind in ("double", "heredoc"):
            return ref
        if kind == "single":
            return f"'\"{ref}\"'"
        if kind == "ansi":
            return f"'\"{ref}\"$'"
        return f'"{ref}"'

    # -- numeric contexts ---------------------------------------------------------------------

    def land(self, index: int) -> None:
        """A placeholder is at the top of the stack: check it for the context it is in (or defer)."""
        for frame in reversed(self.stack):
            if frame.command:
                return self.settle(index, frame.command)
            if frame.pending is not None:
                frame.pending.append(index)
                return None
            if frame.numeric is not None:
                return self.settle(index, frame.numeric)
        return None

    def settle(self, index: int, context: str) -> None:
        if self.analysis is not None:
            self.analysis[index] = context or None
        elif context and not _NUMBER.fullmatch(self.values[index]):
            raise self.fail(f"a {{{{ }}}} value inside {context} is not a plain number such as 42 or -1.5, and "
                            "bash evaluates it there as arithmetic (which runs $( ) inside array subscripts); "
                            "only an integer or number parameter may go there")
        return None

    def resolve(self, frame: _Frame, context: str | None) -> None:
        """`frame` (already popped) ended: its deferred values are in `context`, or the enclosing one."""
        for index in frame.pending or ():
            if context:
                self.settle(index, context)
            else:
                self.land(index)

    def pop_frame(self, context: str | None = None) -> _Frame:
        frame = self.stack.pop()
        if frame.pending is not None:
            self.resolve(frame, context)
        return frame

    def at_command_start(self, i: int) -> bool:
        return _COMMAND_START.search(self.text[max(0, i - 400) : i]) is not None

    def word_start(self, frame: _Frame, char: str, i: int) -> int | None:
        """At the start of an unquoted word in plain text: note `[[`, its arithmetic operators, `let`,
        `declare -i`, assignments to integer variables and `name[` words. Returns the next index when it
        copied something itself."""
        text = self.text
        if frame.assigning:  # the assignment word before this one is over
            frame.command, frame.assigning = None, False
        if text.startswith("[[", i) and text[i + 2 : i + 3] in ("", " ", "\t", "\n"):
            self.out.append("[[")
            self.stack.append(_Frame("plain", "]]", role="cond", pending=[]))
            self.prev = " "
            return i + 2
        if frame.role == "cond" and text.startswith("]]", i) and text[i + 2 : i + 3] in ("", *_WORD_BREAKS):
            self.out.append("]]")
            self.pop_frame(frame.decided)
            self.prev = "]"
            return i + 2
        test = _ARITH_TEST.match(text, i)
        if test:
            for owner in reversed(self.stack):
                if owner.role == "cond":
                    owner.decided = owner.decided or f"[[ {test[0]} ]]"
                if owner.role != "group":
                    break
            if test[0] == "-v" and frame.test:  # `[ -v name ]`, `test -v name`: bash evaluates its subscript
                frame.command = frame.command or ("[ -v ]" if frame.test == "[" else "test -v")
            return None
        if text.startswith("[", i) and text[i + 1 : i + 2] in (" ", "\t") and self.at_command_start(i):
            frame.test = "["
            return None
        self.assignment(frame, i)
        element = _ELEMENT.match(text, i)
        if element and element[0][:-1] not in self.associative:
            self.out.append(element[0])
            self.stack.append(_Frame("arith", "]", role="element", pending=[]))
            return element.end()
        if frame.role == "array" and char == "[":
            self.out.append(char)
            self.stack.append(_Frame("arith", "]", role="element", pending=[]))
            return i + 1
        self.command_word(frame, i)
        return None

    def assignment(self, frame: _Frame, i: int) -> None:
        """A word at `i` that assigns an integer variable (`n=`, `n+=`, `n[i]=`, `n=(...)`), as a command
        or an argument of `declare`/`local`/...: bash evaluates the value as arithmetic, to the word's end."""
        word = _ASSIGNMENT.match(self.text, i)
        if word and word[1] in self.integer and frame.command is None \
                and (frame.declaring or self.at_command_start(i)):
            frame.command, frame.assigning = f"an assignment to the integer variable {word[1]}", True

    def command_word(self, frame: _Frame, i: int) -> None:
        """A command's name at `i`: `let` and `declare -i` make its arguments arithmetic, and `test`
        its `-v` operand; so do `unset` (it evaluates a subscript in a name) and the commands that
        assign their arguments to an integer variable (`printf -v n`, `for n in`)."""
        text = self.text
        word = _COMMAND_WORD.match(text, i)
        if word and self.at_command_start(i):
            name = re.sub(r"""['"\\]""", "", word[0])
            if name in ("let", "unset"):
                frame.command = name
            elif name == "test":
                frame.test = "test"
            elif name in _DECLARE:
                options = _OPTIONS.match(text, word.end())
                if options and re.search(r"-[A-Za-z]*i", options[0]):
                    frame.command = f"{name} -i"
                frame.declaring = True
            elif name in ("printf", "for", "select"):
                target = (_PRINTF_TARGET if name == "printf" else _LOOP_VARIABLE).match(text, word.end())
                if target and target[1] in self.integer:
                    frame.command = f"printf -v {target[1]}" if name == "printf" else f"{name} {target[1]} in"
            elif name in _READERS and self.values:
                rest = _REST_OF_COMMAND.match(text, word.end())
                words = re.findall(r"""(?:^|[\s'"])([A-Za-z_][A-Za-z0-9_]*)""", rest[0] if rest else "")
                read = self.integer.intersection(words)
                if read:
                    self.refuse(f"{name} assigns what it reads to the integer variable {min(read)}, and bash "
                                "evaluates that as arithmetic (which runs $( ) inside array subscripts), so no "
                                "{{ }} value may reach it; read into a variable without -i, or pass the number as "
                                "an integer parameter and assign it directly")

    def open_brace(self, kind: str, i: int) -> int:
        """At `${`: an array subscript or a substring offset is arithmetic. Returns the next index."""
        match = _BRACE.match(self.text, i + 2)
        plain = kind in ("plain", "arith")
        subscript = match is not None and match[3] and (match[2][0].isalpha() or match[2][0] == "_")
        if not (subscript or (match is not None and match[4])):
            self.out.append("${")
            if plain:
                self.stack.append(_Frame("plain", "}", role="brace"))
                self.prev = "a"
            if match is not None and not match[1] and match[2] in self.integer \
                    and re.match(r":?=", self.text[match.end() : match.end() + 2]):  # `${n:=value}` assigns n
                self.numeric_brace(f"${{{match[2]}:=}}")
            return i + 2
        self.out.append("${" + match[0])
        name = match[2]
        if plain:
            self.stack.append(_Frame("plain", "}", role="brace"))
        if subscript:
            numeric = None if name in self.associative else f"${{{name}[ ]}}"
            self.stack.append(_Frame("arith", "]", numeric=numeric, role="subscript", name=name))
        else:
            self.offset(name)
        self.prev = "a"
        return match.end()

    def offset(self, name: str) -> None:
        """After `${name:` (or `${name[...]:`): the rest up to `}` is an offset and a length."""
        self.numeric_brace(f"${{{name}:offset}}")

    def numeric_brace(self, context: str) -> None:
        """The rest of the `${ }` being read, up to its `}`, is arithmetic."""
        top = self.stack[-1]
        if top.role == "brace":
            top.kind, top.numeric = "arith", context
        else:  # inside double quotes or a here-document, where `${ }` has no level of its own
            self.stack.append(_Frame("arith", "}", numeric=context, role="brace"))

    def close_bracket(self, frame: _Frame, i: int) -> int:
        """At the `]` that ends a subscript, an element word or `$[ ]`. Returns the next index."""
        self.out.append("]")
        self.prev = "a"
        if frame.role == "element":
            assigned = self.text.startswith("=", i + 1) or self.text.startswith("+=", i + 1)
            self.pop_frame("array subscript of an assignment" if assigned else None)
            return i + 1
        self.stack.pop()
        if frame.role == "subscript" and self.text.startswith(":", i + 1) \
                and self.text[i + 2 : i + 3] not in ("-", "=", "?", "+"):
            self.out.append(":")
            self.offset(frame.name)
            return i + 2
        return i + 1

    # -- associative arrays ---------------------------------------------------------------------

    def top_word(self, i: int) -> None:
        """A word at top level (outside any quote, substitution, subshell or here-document): count the
        compound commands it opens or closes, and note a `declare -A name` that starts a command there."""
        first, self.separator = self.separator, ""
        if _COMPOUND_OPEN.match(self.text, i):
            self.compound = None if self.compound is None else self.compound + 1
        elif first and _COMPOUND_CLOSE.match(self.text, i):
            self.compound = self.compound - 1 if self.compound else None
        elif first in ("\n", ";") and self.compound == 0:
            declaration = _ASSOCIATIVE_DECLARATION.match(self.text, i)
            flags = set(declaration[1].replace(" ", "").replace("\t", "")) if declaration else set()
            if declaration and "A" in flags and flags <= _ASSOCIATIVE_OPTIONS:
                self.declaration = (declaration[2], i)

    def top_separator(self, char: str, i: int) -> None:
        """`;`, `&`, `|` or a newline at top level. A pending `declare -A` ends here: it counts when bash
        runs it in this shell (`;`, a newline, `&&`, `||`), not in the background or a pipeline."""
        if self.declaration is not None:
            name, start = self.declaration
            self.declaration = None
            if (char in ";\n" or self.text.startswith(char * 2, i)) and self.keeps_associative(name, start, i):
                self.associative.add(name)
        if char != "\n" or self.separator not in ("|", "&"):  # after `|`, `&&`, `||` the command goes on
            self.separator = char

    def keeps_associative(self, name: str, start: int, end: int) -> bool:
        """Whether `name`, declared associative in `self.text[start:end]`, stays so wherever it is used:
        it appears nowhere before, and afterwards only read (`$name`, `${name...}`) or as a `name[key]=`
        command. Any other mention (`unset name`, `local name`, `name=(`, `declare -a name`, `r=name` for
        a nameref, a comment) may make it an indexed array again, and withdraws the exemption."""
        mention = re.compile(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])")
        if _BASH_ARRAYS.fullmatch(name) or mention.search(self.text, 0, start):
            return False
        for found in mention.finditer(self.text, end):
            at, subscript = found.start(), self.text.startswith("[", found.end())
            read = _EXPANSION_BEFORE.search(self.text, max(0, at - 3), at) is not None \
                or (subscript and _KEYS_BEFORE.search(self.text, max(0, at - 3), at) is not None)
            if not (read or (subscript and self.at_command_start(at))):
                return False
        return True

    # -- the scanner ----------------------------------------------------------------------------

    def run(self) -> str:
        text, n = self.text, len(self.text)
        i = 0
        at_line_start = True
        while i < n:
            frame = self.stack[-1]
            kind = frame.kind
            if kind in _HEREDOCS and at_line_start:
                whole_line = self.heredoc_line(i)
                if whole_line is not None:
                    i = whole_line
                    continue
            at_line_start = False
            char = text[i]
            if frame.role == "element" and char in "\n;":  # `name[` that is no assignment after all
                self.pop_frame()
                continue
            if char == "\x00":
                match = _PLACEHOLDER_RE.match(text, i)
                if match is None:
                    raise self.fail("a {% filter %} block cut a {{ }} value apart; apply the filter inside {{ }}")
                self.out.append(self.reference(frame.quote or kind, int(match[1])))
                self.land(int(match[1]))
                if frame is self.stack[0]:
                    self.separator = ""
                self.prev = "a"
                i = match.end()
                continue
            if char == "\n":
                if kind == "comment":
                    self.stack.pop()
                    frame = self.stack[-1]
                    kind = frame.kind
                self.out.append(char)
                self.prev = char
                frame.end_command()
                if frame is self.stack[0]:
                    self.top_separator(char, i)
                at_line_start = True
                if self.pending and kind in ("plain", "arith"):
                    self.stack.extend(_Frame("qheredoc" if quoted else "heredoc", (delimiter, strip), numeric="")
                                      for delimiter, quoted, strip in reversed(self.pending))
                    self.pending = []
                i += 1
                continue
            i = self.step(frame, char, text[i + 1] if i + 1 < n else "", i)
        while len(self.stack) > 1:  # unclosed levels: settle what they hold
            frame = self.stack[-1]
            self.pop_frame(frame.decided)
        return "".join(self.out)

    def push(self, kind: str, closer: Any = None, numeric: str | None = None, role: str = "") -> None:
        self.stack.append(_Frame(kind, closer, numeric, role))

    def pop(self) -> None:
        self.pop_frame()
        self.prev = "a"

    # Complex by nature: the shell tokenizer's state machine: one branch per state.
    def step(self, frame: _Frame, char: str, nxt: str, i: int) -> int:  # noqa: C901
        """Copy one character (or an escape pair) and follow the quoting; returns the next index."""
        kind, closer = frame.kind, frame.closer
        emit = self.out.append
        if kind == "plain" and (self.prev in _WORD_BREAKS or self.prev == "`") and char not in _WORD_BREAKS:
            if frame is self.stack[0] and char != "#":
                self.top_word(i)
            done = self.word_start(frame, char, i)
            if done is not None:
                return done
        if kind in ("plain", "arith"):
            if char == "\\":
                if nxt == "\x00":  # an escaped placeholder: the value is literal anyway
                    return i + 1
                emit(char + nxt)
                self.prev = "a"
                return i + 2
            if char == "'":
                self.push("single")
            elif char == '"':
                self.push("double")
            elif char == "$" and nxt == "'":
                emit("$'")
                self.push("ansi")
                return i + 2
            elif char == "$" and nxt == "(":
                if self.text.startswith("$((", i):
                    emit("$((")
                    self.push("arith", "))", "$(( ))")
                    return i + 3
                emit("$(")
                self.push("plain", ")", "")
                self.prev = "("
                return i + 2
            elif char == "$" and nxt == "[":
                emit("$[")
                self.push("arith", "]", "$[ ]")
                return i + 2
            elif char == "$" and nxt == "{":
                return self.open_brace(kind, i)
            elif char == "`":
                emit(char)
                if closer == "`":
                    self.pop()
                else:
                    self.push("plain", "`", "")
                    self.prev = "`"
                return i + 1
            elif kind == "arith" and closer == "))" and self.text.startswith("))", i):
                emit("))")
                self.pop()
                return i + 2
            elif kind == "arith" and char == "[":
                emit(char)
                self.push("arith", "]")
                return i + 1
            elif char == "]" and closer == "]":
                return self.close_bracket(frame, i)
            elif char == "(":
                emit(char)
                if kind == "plain" and nxt == "(":  # `((`, also in `if((` or `for((`
                    emit(nxt)
                    self.push("arith", "))", "(( ))")
                    return i + 2
                role = "group" if frame.role in ("cond", "group") else "array" if self.prev == "=" else ""
                self.push(kind, ")", role=role)
                self.prev = "("
                return i + 1
            elif (char == ")" and closer == ")") or (char == "}" and closer == "}"):
                emit(char)
                self.pop()
                return i + 1
            elif kind == "plain" and char in ";&|":
                frame.end_command()
                if frame is self.stack[0]:
                    self.top_separator(char, i)
            elif kind == "plain" and char == "#" and self.prev in _WORD_BREAKS:
                self.push("comment", numeric="")
            elif kind == "plain" and char == "<" and self.text.startswith("<<<", i):
                emit("<<<")  # a here-string: its word is a word, not a here-document's delimiter
                self.prev = "<"
                return i + 3
            elif kind == "plain" and char == "<" and self.text.startswith("<<", i):
                return self.heredoc_operator(i)
            emit(char)
            self.prev = char
            return i + 1
        if kind == "double":
            if char == "\\" and nxt and nxt in '$`"\\\n':
                emit(char + nxt)
                return i + 2
            if char == '"':
                emit(char)
                self.pop()
                return i + 1
        if kind in ("double", "heredoc"):
            if char == "\\" and nxt == "\x00":  # a literal backslash before the value, as written
                emit("\\\\")
                return i + 1
            if char == "\\" and nxt and nxt in "$`\\\n":
                emit(char + nxt)
                return i + 2
            if char == "$" and nxt == "(":
                if self.text.startswith("$((", i):
                    emit("$((")
                    self.push("arith", "))", "$(( ))")
                    return i + 3
                emit("$(")
                self.push("plain", ")", "")
                self.prev = "("
                return i + 2
            if char == "$" and nxt == "[":  # bash reads no quotes inside a double-quoted $[ ]
                emit("$[")
                self.stack.append(_Frame("arith", "]", "$[ ]", quote=kind))
                return i + 2
            if char == "$" and nxt == "{":
                return self.open_brace(kind, i)
            if char == "`":
                emit(char)
                self.push("plain", "`", "")
                self.prev = "`"
                return i + 1
        elif kind == "single" and char == "'":
            emit(char)
            self.pop()
            return i + 1
        elif kind == "ansi":
            if char == "\\" and nxt == "\x00":  # a literal backslash before the value, as written
                emit("\\\\")
                return i + 1
            if char == "\\" and nxt:
                emit(char + nxt)
                return i + 2
            if char == "'":
                emit(char)
                self.pop()
                return i + 1
        emit(char)
        return i + 1

    def heredoc_operator(self, i: int) -> int:
        """`<<WORD`, `<<-WORD`, `<<'WORD'`: note the document, which starts on the next line."""
        text, n = self.text, len(self.text)
        j = i + 2
        strip = j < n and text[j] == "-"
        j += strip
        while j < n and text[j] in " \t":
            j += 1
        start = j
        while j < n and text[j] not in _WORD_BREAKS:
            if text[j] in "'\"":
                close = text.find(text[j], j + 1)
                j = n if close < 0 else close + 1
            else:
                j += 2 if text[j] == "\\" else 1
        word = text[start:j]
        self.out.append(text[i:j])
        self.prev = "a"
        if "\x00" in word:
            raise self.fail("a {{ }} expression cannot be a here-document delimiter")
        if word:
            delimiter = _heredoc_delimiter(word)
            if delimiter is None:  # the action fails to load (`refuse`), whatever its values
                self.refuse(f"the here-document delimiter {word} uses $'...' with a backslash escape, whose "
                            "meaning Squall does not work out; write the delimiter plainly (<<'EOF')")
                delimiter = word
            self.pending.append((delimiter, any(c in word for c in "'\"\\"), strip))
        return j

    def heredoc_line(self, i: int) -> int | None:
        """At the start of a line in a here-document: copy its end or a quoted line (returns where
        the next line starts); None when the line is body text to scan normally."""
        kind, (delimiter, strip) = self.stack[-1].kind, self.stack[-1].closer
        end = self.text.find("\n", i)
        end = len(self.text) if end < 0 else end
        raw = self.text[i:end]
        line = raw
        if kind == "qheredoc":
            line = _PLACEHOLDER_RE.sub(lambda m: self.values[int(m[1])], raw)
            if line != raw and ("\n" in line or (line.lstrip("\t") if strip else line) == delimiter):
                raise self.fail(f"a value inside the quoted here-document <<{delimiter} could end it early; "
                                "use an unquoted delimiter")
        if (raw.lstrip("\t") if strip else raw) == delimiter:
            self.stack.pop()
        elif kind == "heredoc":
            return None
        self.out.append(line + self.text[end : end + 1])
        return end + 1



def _heredoc_delimiter(word: str) -> str | None:
    """The line that ends a here-document introduced by `word`, as bash reads it: quote removal, no
    expansion. Single quotes keep every character, backslashes too; in double quotes (and `$"..."`) a
    backslash escapes only `$`, a backquote, `"` and itself; outside quotes it escapes any character;
    the `$` of `$'...'` and `$"..."` quotes, it is no character of the word. A value equal to this line
    ends a quoted document early (`heredoc_line` refuses it), so getting it wrong is a way to run the
    next value as a command: `<<$'EOF'` ends at `EOF`, not `$EOF`, and `<<'E\\OF'` at `E\\OF`. None for an
    ANSI-C quoted part with a backslash escape (`$'E\\x4fF'`, which bash decodes): refused, not guessed."""
    out: list[str] = []
    i, n = 0, len(word)
    while i < n:
        char = word[i]
        if char == "$" and i + 1 < n and word[i + 1] in "'\"":
            i += 1  # `$'...'`, `$"..."`: the quotes that follow say the rest
            if word[i] == "'":
                close = word.find("'", i + 1)
                body = word[i + 1:] if close < 0 else word[i + 1:close]
                if "\\" in body:
                    return None
                out.append(body)
                i = n if close < 0 else close + 1
                continue
            char = word[i]
        if char == "'":
            close = word.find("'", i + 1)
            out.append(word[i + 1:] if close < 0 else word[i + 1:close])
            i = n if close < 0 else close + 1
        elif char == '"':
            i += 1
            while i < n and word[i] != '"':
                if word[i] == "\\" and i + 1 < n and word[i + 1] in '$`"\\':
                    i += 1
                out.append(word[i])
                i += 1
            i += 1
        elif char == "\\":
            out.append(word[i + 1:i + 2])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Load-time analysis: which {{ }} of a `cmd` template lands where bash does arithmetic
# ---------------------------------------------------------------------------------------------

#: `{% %}` tags whose body is output somewhere else (or not at all), not where it is written.
_ELSEWHERE = {"macro": "endmacro", "call": "endcall", "set": "endset"}
_NUMERIC_TYPES = {"integer", "number"}


def numeric_placeholders(template: str, env: jinja2.Environment | None = None) -> list[tuple[str, str]]:
    """The `{{ }}` expressions of a `cmd` template that land where bash evaluates text as arithmetic,
    each as (its source, that context), e.g. ("n", "$(( ))")."""
    return _analyse(template, env)[0]


def _analyse(template: str, env: jinja2.Environment | None) -> tuple[list[tuple[str, str]], str | None]:
    """`numeric_placeholders`, and why no value can be made safe in the template (a construct the
    quoter refuses whatever the value, such as `read` into an integer variable), or None.

    Static: every `{{ }}` becomes a placeholder, `{% %}` tags are dropped (so every branch and one
    pass of each loop is looked at) and the bodies of `{% set %}` blocks, macros and calls are left
    out (they are output where they are used). A template Jinja cannot read yields nothing here; it
    fails when it is rendered.
    """
    env = env or build_environment()
    try:
        tokens = list(env.lex(template))
    except jinja2.TemplateSyntaxError:
        return [], None
    pieces: list[str] = []
    sources: list[str] = []
    skipping: list[str] = []  # the end tags of the blocks being left out
    i = 0
    while i < len(tokens):
        kind = tokens[i][1]
        if kind in ("variable_begin", "block_begin"):
            end = "variable_end" if kind == "variable_begin" else "block_end"
            j = i + 1
            while j < len(tokens) and tokens[j][1] != end:
                j += 1
            inner = [value for _, token, value in tokens[i + 1 : j] if token != "whitespace"]
            if kind == "variable_begin" and not skipping:
                pieces.append(_PLACEHOLDER.format(len(sources)))
                sources.append("".join(value for _, _, value in tokens[i + 1 : j]).strip())
            elif kind == "block_begin" and inner:
                if skipping and inner[0] == skipping[-1]:
                    skipping.pop()
                elif inner[0] in _ELSEWHERE and not (inner[0] == "set" and "=" in inner):
                    skipping.append(_ELSEWHERE[inner[0]])
            i = j + 1
            continue
        if kind == "data" and not skipping:
            pieces.append(tokens[i][2])
        i += 1
    contexts: dict[int, str | None] = {}
    quoter = _ShellQuoter("".join(pieces), ["0"] * len(sources), template, analysis=contexts)
    with contextlib.suppress(TemplateRenderError):  # e.g. a {{ }} here-document delimiter: rendering says so
        quoter.run()
    return [(sources[index], context) for index, context in sorted(contexts.items()) if context], quoter.unsupported


def numeric_placeholder_problem(template: str, parameters: dict[str, dict[str, Any]],
                                env: jinja2.Environment | None = None) -> str | None:
    """Why a `cmd` template cannot be loaded: a `{{ }}` where bash does arithmetic that is not an
    integer or number parameter (optionally through `| int`); None when there is no such `{{ }}`."""
    env = env or build_environment()
    found, unsupported = _analyse(template, env)
    if unsupported:
        return unsupported
    for source, context in found:
        try:
            node = env.parse(f"{{{{ {source} }}}}").body[0].nodes[0]  # type: ignore[attr-defined]
        except (jinja2.TemplateSyntaxError, AttributeError, IndexError):
            node = None
        if isinstance(node, jinja2.nodes.Filter) and node.name == "int" and not node.args \
                and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None:
            node = node.node
        if isinstance(node, jinja2.nodes.Const) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            continue
        name = node.name if isinstance(node, jinja2.nodes.Name) else None
        spec = parameters.get(name) if name else None
        if spec is not None:
            ptype = spec.get("type")
            types = set(ptype) if isinstance(ptype, list) else {ptype} if ptype else set()
            if types - {"null"} and types - {"null"} <= _NUMERIC_TYPES:
                continue
            shown = " or ".join(sorted(types))
            what = (f'"{name}" is {"an" if shown[:1] in "aeiou" else "a"} {shown}' if types
                    else f'"{name}" has no type')
        elif name:
            what = f'"{name}" is not a parameter of this action'
        else:
            what = f'"{source}" is not a parameter name'
        return (f'"{{{{ {source} }}}}" is inside {context}, where bash evaluates it as arithmetic (and runs '
                f"$( ) inside array subscripts); only an integer or number parameter may go there, and {what}")
    return None




class EmptyCommand(ValueError):
    """An action whose `cmd` rendered to nothing."""


def command_of(request: RunRequest) -> tuple[str, dict[str, str]]:
    """The `cmd` of a shell-command execution, and the variables its `{{ }}` values travel in."""
    command = request.runner_parameters.get("cmd")
    if not command:
        raise EmptyCommand('parameter "cmd" is empty: nothing to run')
    template = request.templates.get("cmd")
    if template:
        return render_shell_command(template, request.template_context, request.jinja)
    return str(command), {}
