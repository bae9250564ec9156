"""`local-shell-cmd` and `local-shell-script`: real subprocesses, StackStorm's results (spec §1.5, §1.7).

No parameter value ever reaches a shell unquoted. A script's parameters are passed as argv
entries, with no shell in between. A `cmd` template such as `echo "{{message}}"` is rendered so
that each `{{ }}` expression becomes a reference to an environment variable holding its value
("${SQUALL_ARG_0}"), placed correctly for the quoting around it; bash then expands it as data, so
`message='"; rm -rf ~; "'` is printed, not run. StackStorm pastes the text in and is injectable.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import re
import signal
from typing import Any

from engine.runners import RunOutcome, RunRequest
from engine.runners.environment import action_environment
from engine.templates import TemplateRenderError, build_environment

_PLACEHOLDER = "\x00{}\x00"
_PLACEHOLDER_RE = re.compile("\x00([0-9]+)\x00")
_collected: contextvars.ContextVar[list[str]] = contextvars.ContextVar("squall_shell_values")
_OUTPUT_LIMIT = 8 * 1024 * 1024


def _capture(value: Any) -> str:
    values = _collected.get()
    text = "" if value is None else str(value)
    if "\x00" in text:  # output captured by {% set %}/{% filter %}/macros: give back the real values
        text = _PLACEHOLDER_RE.sub(lambda m: values[int(m[1])], text)
    values.append(text)
    return _PLACEHOLDER.format(len(values) - 1)


_shell_env = build_environment().overlay(finalize=_capture)


def render_shell_command(template: str, context: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Render a `cmd` template into bash text plus the environment variables it refers to."""
    values: list[str] = []
    token = _collected.set(values)
    try:
        text = _shell_env.from_string(template).render(context)
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


def _named_value(value: Any) -> str:
    return str(value)


def _positional_value(value: Any, ptype: Any) -> str:
    """Serialise a positional argument by its declared type, as StackStorm's action_db does."""
    if value is None:
        return ""
    if ptype == "boolean":
        return "1" if value else "0"
    if ptype in ("array", "list"):
        return ",".join(str(item) for item in value) if value else ""
    if ptype == "object":
        return json.dumps(value) if value else ""
    if ptype == "null":
        return ""
    if ptype in ("string", "number", "integer", "float"):
        return str(value)
    return str(value) if value else ""


def script_arguments(request: RunRequest) -> list[str]:
    """Named arguments first (`--name=value`, booleans as bare flags), then positional ones."""
    action = request.action
    kwarg_op = request.runner_parameters.get("kwarg_op") or "--"
    named: list[str] = []
    positional: list[tuple[float, str]] = []
    for name, value in request.action_parameters.items():
        spec = action.parameters.get(name, {})
        if "position" in spec:
            positional.append((spec["position"], _positional_value(value, spec.get("type"))))
            continue
        if value is None or value == "" or value is False:
            continue
        named.append(f"{kwarg_op}{name}" if value is True else f"{kwarg_op}{name}={_named_value(value)}")
    return named + [text for _, text in sorted(positional)]


def _decode(text: str) -> Any:
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


_STATUS = {0: "succeeded", 1: "failed", -9: "timeout", -15: "abandoned"}


async def _read(stream: asyncio.StreamReader, sink: bytearray) -> None:
    while chunk := await stream.read(65536):
        room = _OUTPUT_LIMIT - len(sink)
        if room > 0:
            sink.extend(chunk[:room])


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


async def run_process(
    argv: list[str], *, env: dict[str, str], cwd: str | None, timeout: float, stdin: bytes | None = None
) -> dict[str, Any]:
    """Run one command in its own process group; returns StackStorm's shell result object.

    On timeout or cancellation the whole group is killed, so no stray children outlive it.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    out, err = bytearray(), bytearray()
    readers = asyncio.gather(_read(process.stdout, out), _read(process.stderr, err))  # type: ignore[arg-type]
    if stdin is not None and process.stdin is not None:
        process.stdin.write(stdin)
        process.stdin.close()
    timed_out = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        try:
            await asyncio.wait_for(process.wait(), timeout)
            # Children that inherited the pipes may keep them open after the shell exits.
            await asyncio.wait_for(asyncio.shield(readers), max(0.05, deadline - loop.time()))
        except TimeoutError:
            timed_out = True
            _kill_group(process)
            await process.wait()
            try:
                await asyncio.wait_for(asyncio.shield(readers), 2)
            except TimeoutError:
                readers.cancel()
    except asyncio.CancelledError:
        _kill_group(process)
        readers.cancel()
        await asyncio.shield(process.wait())
        raise
    code = -9 if timed_out else process.returncode
    result: dict[str, Any] = {
        "failed": code != 0,
        "succeeded": code == 0,
        "return_code": code,
        "stdout": _decode(out.decode("utf-8", "replace")),
        "stderr": _decode(err.decode("utf-8", "replace")),
    }
    if timed_out:
        result["error"] = f"Action failed to complete in {timeout:g} seconds"
    return result


def status_for(code: int) -> str:
    return _STATUS.get(code, "failed")


class LocalShellRunner:
    """Both local shell runners; which one is decided by the action's runner type."""

    async def run(self, request: RunRequest) -> RunOutcome:
        params = request.runner_parameters
        extra_env: dict[str, str] = {}
        if request.action.runner_type == "local-shell-script":
            script = str(request.action.entry_path)
            if not os.access(script, os.X_OK) and os.access(script, os.W_OK):
                os.chmod(script, os.stat(script).st_mode | 0o111)
            with open(script, "rb") as handle:
                has_shebang = handle.read(2) == b"#!"
            argv = ([script] if has_shebang else ["bash", script]) + script_arguments(request)
            if params.get("debug") and not has_shebang:
                argv.insert(1, "-x")
        else:
            command = params.get("cmd")
            if not command:
                return RunOutcome("failed", {"error": 'parameter "cmd" is empty: nothing to run'})
            template = request.templates.get("cmd")
            if template:
                command, extra_env = render_shell_command(template, request.template_context)
            argv = ["bash", "-c", str(command)]
        stdin = None
        if params.get("sudo"):
            password = params.get("sudo_password")
            argv = ["sudo", "-E", *(["-S"] if password else ["-n"]), "--", *argv]
            stdin = f"{password}\n".encode() if password else None
        env = action_environment(request, extra_env)
        result = await run_process(
            argv, env=env, cwd=params.get("cwd") or None, timeout=float(params.get("timeout") or 60), stdin=stdin
        )
        if params.get("sudo") and "incorrect password" in str(result["stderr"]).lower():
            result.update(return_code=-1, error="Invalid sudo password provided or sudo is not configured "
                          f"for this user ({os.environ.get('USER', 'squall')})")
        return RunOutcome(status_for(result["return_code"]), result)
