"""Rendering `cmd` templates for bash so that no `{{ }}` value is ever parsed as shell code.

Each expression's value is collected through a Jinja `finalize` hook and replaced by a reference
to an environment variable ("${SQUALL_ARG_0}") quoted for the spot it lands in: plain words,
double or single quotes, `$'...'`, command substitutions, backticks, comments and here-documents.
Bash then expands the variable as data. StackStorm pastes the text in and is injectable.
"""

from __future__ import annotations

import contextvars
import functools
import re
from typing import Any

import jinja2

from engine.runners import RunRequest
from engine.templates import TemplateRenderError, build_environment

_PLACEHOLDER = "\x00{}\x00"
_PLACEHOLDER_RE = re.compile("\x00([0-9]+)\x00")
_collected: contextvars.ContextVar[list[str]] = contextvars.ContextVar("squall_shell_values")


def _capture(value: Any) -> str:
    values = _collected.get()
    text = "" if value is None else str(value)
    if "\x00" in text:  # output captured by {% set %}/{% filter %}/macros: give back the real values
        text = _PLACEHOLDER_RE.sub(lambda m: values[int(m[1])], text)
    values.append(text)
    return _PLACEHOLDER.format(len(values) - 1)


@functools.lru_cache(maxsize=8)
def _shell_environment(base: jinja2.Environment) -> jinja2.Environment:
    """`base` (with its filters and `decrypt_kv`) whose `{{ }}` output goes through `_capture`."""
    return base.overlay(finalize=_capture)


def render_shell_command(template: str, context: dict[str, Any],
                         env: jinja2.Environment | None = None) -> tuple[str, dict[str, str]]:
    """Render a `cmd` template into bash text plus the environment variables it refers to."""
    shell_env = _shell_environment(env or build_environment())
    values: list[str] = []
    token = _collected.set(values)
    try:
        text = shell_env.from_string(template).render(context)
    except Exception as exc:  # jinja raises many types; callers want one
        raise TemplateRenderError(f"cannot render cmd {template!r}: {exc}", template=template) from exc
    finally:
        _collected.reset(token)
    return _ShellQuoter(text, values, template).run(), {f"SQUALL_ARG_{n}": v for n, v in enumerate(values)}


#: Characters after which a `#` starts a comment (it must begin a word).
_WORD_BREAKS = frozenset(" \t\n;&|()<>")
_HEREDOCS = ("heredoc", "qheredoc")


class _ShellQuoter:
    """Puts each placeholder in the rendered text as a reference to its variable, quoted for where it is.

    A small scanner of bash's quoting: plain words, "double", 'single' and $'ansi' quotes,
    $( ) / ` ` / ( ) / ${ } / $(( )) nesting, # comments and here-documents. In plain text the
    reference is "${SQUALL_ARG_n}", inside double quotes and unquoted here-documents ${SQUALL_ARG_n},
    inside single quotes the quote is closed and reopened around "${SQUALL_ARG_n}". A quoted
    here-document expands nothing, so there the value itself is written, when it cannot end the
    document early.
    """

    def __init__(self, text: str, values: list[str], template: str) -> None:
        self.text = text
        self.values = values
        self.template = template
        self.out: list[str] = []
        # (kind, closer): kind is plain | arith | double | single | ansi | comment | heredoc | qheredoc.
        # closer: what ends a nested plain/arith context; the (delimiter, strip_tabs) of a here-document.
        self.stack: list[tuple[str, Any]] = [("plain", None)]
        self.pending: list[tuple[str, bool, bool]] = []  # here-documents opened on the current line
        self.prev = "\n"

    def fail(self, reason: str) -> TemplateRenderError:
        return TemplateRenderError(f"cannot render cmd {self.template!r}: {reason}", template=self.template)

    def reference(self, kind: str, index: int) -> str:
        ref = f"${{SQUALL_ARG_{index}}}"
        if kind in ("double", "heredoc"):
            return ref
        if kind == "single":
            return f"'\"{ref}\"'"
        if kind == "ansi":
            return f"'\"{ref}\"$'"
        return f'"{ref}"'

    def run(self) -> str:
        text, n = self.text, len(self.text)
        i = 0
        at_line_start = True
        while i < n:
            kind, closer = self.stack[-1]
            if kind in _HEREDOCS and at_line_start:
                whole_line = self.heredoc_line(i)
                if whole_line is not None:
                    i = whole_line
                    continue
            at_line_start = False
            char = text[i]
            if char == "\x00":
                match = _PLACEHOLDER_RE.match(text, i)
                if match is None:
                    raise self.fail("a {% filter %} block cut a {{ }} value apart; apply the filter inside {{ }}")
                self.out.append(self.reference(kind, int(match[1])))
                self.prev = "a"
                i = match.end()
                continue
            if char == "\n":
                if kind == "comment":
                    self.stack.pop()
                    kind, closer = self.stack[-1]
                self.out.append(char)
                self.prev = char
                at_line_start = True
                if self.pending and kind in ("plain", "arith"):
                    self.stack.extend(("qheredoc" if quoted else "heredoc", (delimiter, strip))
                                      for delimiter, quoted, strip in reversed(self.pending))
                    self.pending = []
                i += 1
                continue
            i = self.step(kind, closer, char, text[i + 1] if i + 1 < n else "", i)
        return "".join(self.out)

    def push(self, kind: str, closer: Any = None) -> None:
        self.stack.append((kind, closer))

    def pop(self) -> None:
        self.stack.pop()
        self.prev = "a"

    def step(self, kind: str, closer: Any, char: str, nxt: str, i: int) -> int:
        """Copy one character (or an escape pair) and follow the quoting; returns the next index."""
        emit = self.out.append
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
                    self.push("arith", "))")
                    return i + 3
                emit("$(")
                self.push("plain", ")")
                self.prev = "("
                return i + 2
            elif char == "$" and nxt == "{":
                emit("${")
                self.push("plain", "}")
                self.prev = "a"
                return i + 2
            elif char == "`":
                emit(char)
                if closer == "`":
                    self.pop()
                else:
                    self.push("plain", "`")
                    self.prev = "`"
                return i + 1
            elif kind == "arith" and closer == "))" and self.text.startswith("))", i):
                emit("))")
                self.pop()
                return i + 2
            elif char == "(":
                emit(char)
                if kind == "plain" and nxt == "(" and self.prev in _WORD_BREAKS:
                    emit(nxt)
                    self.push("arith", "))")
                    return i + 2
                self.push(kind, ")")
                self.prev = "("
                return i + 1
            elif (char == ")" and closer == ")") or (char == "}" and closer == "}"):
                emit(char)
                self.pop()
                return i + 1
            elif kind == "plain" and char == "#" and self.prev in _WORD_BREAKS:
                self.push("comment")
            elif kind == "plain" and char == "<" and self.text.startswith("<<", i) \
                    and not self.text.startswith("<<<", i):
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
                emit("$(")
                self.push("plain", ")")
                self.prev = "("
                return i + 2
            if char == "`":
                emit(char)
                self.push("plain", "`")
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
            delimiter = re.sub(r"\\(.)", r"\1", word.replace("'", "").replace('"', ""))
            self.pending.append((delimiter, any(c in word for c in "'\"\\"), strip))
        return j

    def heredoc_line(self, i: int) -> int | None:
        """At the start of a line in a here-document: copy its end or a quoted line (returns where
        the next line starts); None when the line is body text to scan normally."""
        kind, (delimiter, strip) = self.stack[-1]
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
