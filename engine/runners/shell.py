"""`local-shell-cmd` and `local-shell-script`: real subprocesses, StackStorm's results (spec §1.5, §1.7).

No parameter value ever reaches a shell unquoted. A script's parameters are passed as argv
entries, with no shell in between; a `cmd` template is rendered by `shell_template`, which hands
every `{{ }}` value to bash as data.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.compat.squall_paths import ST2_BIN, ST2_PACKS, ST2_VIRTUALENVS, under_squall
from engine.processes import LEDGER, dying_with_service
from engine.runners import OUTPUT_LIMIT, RunAs, RunOutcome, RunRequest, truncation
from engine.runners.environment import action_environment
from engine.runners.python import interpreter
from engine.runners.shell_template import EmptyCommand, command_of
from engine.templates import TemplateRenderError

log = logging.getLogger(__name__)

#: Seconds a killed command gets to exit and close its output before the run stops waiting for it:
#: what the service may not signal (a root process under `sudo`) or no longer reaches (a process that
#: left the group) would otherwise hold the run until it ends by itself, or forever.
KILL_GRACE = 5.0

#: The kernel's limit on one argument or environment string, its closing NUL included (MAX_ARG_STRLEN:
#: 32 pages, 128 KiB with 4 KiB pages). Past it `exec` fails with E2BIG, "Argument list too long".
STRING_LIMIT = 32 * os.sysconf("SC_PAGESIZE")

#: A part of a command line: the parameter it comes from (None for the runner's own words) and its text.
Part = tuple[str | None, str]

#: How much of a script's first line the kernel reads for its `#!` (BINPRM_BUF_SIZE).
SHEBANG_LIMIT = 256
#: A `#!` line naming StackStorm's own interpreter or a pack virtualenv's under StackStorm's root
#: (`/opt/stackstorm/virtualenvs/<pack>/bin/python`: its `pack`), `python`, `python3` or `python3.8`, with the
#: one argument the kernel would pass it (the rest of the line), trailing blanks removed.
_ST2_SHEBANG = re.compile(rb"#![ \t]*(?P<path>(?:" + re.escape(ST2_BIN.encode()) + rb"|"
                          + re.escape(ST2_VIRTUALENVS.encode()) + rb"/(?P<pack>[\w-]+)/bin)"
                          rb"/python(?:[23](?:\.[0-9]+)?)?)(?:[ \t]+(?P<argument>.+))?")


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


def _script_argument_parts(request: RunRequest) -> list[tuple[str, str]]:
    """(parameter, argument) in argv order: named first, then positional ones by position."""
    action = request.action
    kwarg_op = request.runner_parameters.get("kwarg_op") or "--"
    named: list[tuple[str, str]] = []
    positional: list[tuple[float, str, str]] = []
    for name, value in request.action_parameters.items():
        spec = action.parameters.get(name, {})
        if "position" in spec:
            positional.append((spec["position"], name, _positional_value(value, spec.get("type"))))
            continue
        if value is None or value == "" or value is False:
            continue
        named.append((name, f"{kwarg_op}{name}" if value is True else f"{kwarg_op}{name}={_named_value(value)}"))
    return named + [(name, text) for _, name, text in sorted(positional, key=lambda entry: (entry[0], entry[2]))]


def script_arguments(request: RunRequest) -> list[str]:
    """Named arguments first (`--name=value`, booleans as bare flags), then positional ones."""
    return [text for _, text in _script_argument_parts(request)]


def decode_output(text: str) -> Any:
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


def shell_result(code: int, out: bytes, err: bytes) -> dict[str, Any]:
    """StackStorm's result object of a shell command (local or per remote host), spec §1.7."""
    return {
        "failed": code != 0,
        "succeeded": code == 0,
        "return_code": code,
        "stdout": decode_output(out.decode("utf-8", "replace")),
        "stderr": decode_output(err.decode("utf-8", "replace")),
    }


_STATUS = {0: "succeeded", 1: "failed", -9: "timeout", -15: "abandoned"}


class _Capture:
    """One output stream: the bytes kept for the result (at most `OUTPUT_LIMIT`) and how many came, so
    a result can say it was cut instead of ending short without a word."""

    __slots__ = ("data", "seen")

    def __init__(self) -> None:
        self.data = bytearray()
        self.seen = 0


async def _read(stream: asyncio.StreamReader, capture: _Capture, on_output: Callable[[bytes], None] | None) -> None:
    """Collect a pipe for the result, reporting each chunk as it comes when someone records live output."""
    while chunk := await stream.read(65536):
        if on_output is not None:
            on_output(chunk)
        capture.seen += len(chunk)
        room = OUTPUT_LIMIT - len(capture.data)
        if room > 0:
            capture.data.extend(chunk[:room])


def _truncation(captures: Mapping[str, _Capture]) -> str | None:
    """The result's `truncated`: the streams cut at `OUTPUT_LIMIT` (`truncation`)."""
    return truncation([name for name, capture in captures.items() if capture.seen > OUTPUT_LIMIT], OUTPUT_LIMIT)


async def _kill_group(process: asyncio.subprocess.Process, sudo_path: str | None) -> str | None:
    """SIGKILL the command's process group; with `sudo_path` also through sudo, as root.

    A service that is not root may not signal what `sudo` started as root: `os.killpg` ends sudo
    itself and leaves the command. StackStorm kills such commands with `sudo pkill -TERM -s <pid>`.
    Returns what sudo answered when it did not kill, for the result's error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if sudo_path is None:
        return None
    return await _sudo_kill(process.pid, sudo_path)


async def _sudo_kill(pgid: int, path: str) -> str | None:
    """`sudo -n kill -KILL -- -<pgid>`, at most `KILL_GRACE` seconds; None when it killed."""
    try:
        killer = await asyncio.create_subprocess_exec(
            "sudo", "-n", "--", "kill", "-KILL", "--", f"-{pgid}", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env={"PATH": path},
            start_new_session=True)
    except OSError as exc:
        return f"`sudo -n kill` could not start: {exc}"
    try:
        _, err = await asyncio.wait_for(killer.communicate(), KILL_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            killer.kill()
        _close(killer)
        return f"`sudo -n kill` did not answer in {KILL_GRACE:g} s"
    if killer.returncode == 0:
        return None
    return f"`sudo -n kill` answered: {err.decode('utf-8', 'replace').strip() or f'exit {killer.returncode}'}"


def _close(process: asyncio.subprocess.Process) -> None:
    """Close the process's pipes and transport, so waiting for it no longer waits for whatever still
    holds them (`Process` has no public way: engine/sensors.py `_close_reader` does the same)."""
    transport = getattr(process, "_transport", None)
    if transport is not None:
        transport.close()


def _stop_reading(readers: asyncio.Future[Any]) -> None:
    """Cancel the output readers, and take their outcome when it comes: a canceled gather ends with a
    CancelledError as its exception, which asyncio logs as "never retrieved" if nobody reads it."""
    readers.cancel()
    readers.add_done_callback(lambda future: future.cancelled() or future.exception())


async def _end_killed(process: asyncio.subprocess.Process, readers: asyncio.Future[Any],
                      sudo_path: str | None) -> str | None:
    """After a timeout or a cancel: kill the command, and give it `KILL_GRACE` seconds to exit and close
    its output (still read, for the result); then stop waiting, so the run ends whatever survived.
    Returns what may still be running, for the result, or None."""
    refusal = await _kill_group(process, sudo_path)
    exited = asyncio.ensure_future(process.wait())
    await asyncio.wait([exited, readers], timeout=KILL_GRACE)
    if exited.done() and readers.done():
        return None
    held = not readers.done()
    _stop_reading(readers)
    _close(process)
    await asyncio.wait([exited], timeout=1)
    exited.cancel()
    note = _stray_note(process.pid, held, refusal)
    log.warning("command in process group %d: %s", process.pid, note)
    return note


def _stray_note(pgid: int, held: bool, refusal: str | None) -> str:
    """What a kill left behind, in the result's words."""
    what = "a process still held its output open" if held else f"its first process ({pgid}) had not exited"
    if refusal is not None:
        why = (f": it runs as root through sudo, and {refusal} (`sudo pkill -KILL -g {pgid}` ends what is left "
               f"of process group {pgid})")
    else:
        why = (" (one that left its process group, such as a daemon or a setsid child, or one the service may not "
               "signal)")
    return f"{what} {KILL_GRACE:g} s after the kill{why}; Squall stopped waiting, and it may still be running"


async def run_process(
    argv: list[str], *, env: dict[str, str], cwd: str | None, timeout: float, stdin: bytes | None = None,
    run_as: RunAs | None = None, on_output: Callable[[str, bytes], None] | None = None,
    on_stray: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one command in its own process group; returns StackStorm's shell result object.

    With `run_as` the process starts as that user and its groups (the service must be root).
    On timeout or cancellation the whole group is killed, so no stray children outlive it; if the
    service dies, the leader dies with it and the group is in this process's owner file. A command
    run through `sudo` (`argv[0]`) by a service that is not root is killed through sudo as well. What
    survives a kill is said in a timeout's error, and to `on_stray` on a cancel.
    """
    sudo_path = env.get("PATH", os.defpath) if argv[0] == "sudo" and os.geteuid() != 0 else None
    argv, dying = dying_with_service(argv)
    creating = asyncio.ensure_future(asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        **dying,
        **(run_as.process_options() if run_as is not None else {}),
    ))
    cut = False
    try:
        process = await asyncio.shield(creating)
    except asyncio.CancelledError:
        # Cut while asyncio connected the pipes: its own clean-up kills the leader alone (sudo, not the command
        # sudo started as root) and then waits for the pipes to close, which the survivors hold open: the
        # cancel hung for as long as the command ran (Python 3.11). The start is let finish, and the run is
        # ended as one canceled later is: its whole group killed (`_communicate`).
        cut = True
        while not creating.done():  # a second cancel meanwhile changes nothing: the start is seen through
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(creating)
        process = creating.result()
    LEDGER.track(process.pid)
    try:
        return await _communicate(process, stdin, timeout, on_output, sudo_path, on_stray, cut)
    finally:
        if process.returncode is not None:
            LEDGER.untrack(process.pid)


async def _communicate(process: asyncio.subprocess.Process, stdin: bytes | None, timeout: float,
                       on_output: Callable[[str, bytes], None] | None, sudo_path: str | None,
                       on_stray: Callable[[str], None] | None, cut: bool = False) -> dict[str, Any]:
    """The run of a started `process` to its end, its timeout or its cancel (`cut`: canceled while it started)."""
    captures = {"stdout": _Capture(), "stderr": _Capture()}
    live = {name: functools.partial(on_output, name) if on_output else None for name in captures}
    readers = asyncio.gather(*(_read(getattr(process, name), captures[name], live[name]) for name in captures))
    if stdin is not None and process.stdin is not None:
        process.stdin.write(stdin)
        process.stdin.close()
    timed_out, stray = False, None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        try:
            if cut:
                raise asyncio.CancelledError
            await asyncio.wait_for(process.wait(), timeout)
            # Children that inherited the pipes may keep them open after the shell exits.
            await asyncio.wait_for(asyncio.shield(readers), max(0.05, deadline - loop.time()))
        except TimeoutError:
            timed_out = True
            stray = await _end_killed(process, readers, sudo_path)
    except asyncio.CancelledError:
        stray = await asyncio.shield(_end_killed(process, readers, sudo_path))
        if stray is not None and on_stray is not None:
            on_stray(stray)
        raise
    code = -9 if timed_out else process.returncode
    result = shell_result(code, bytes(captures["stdout"].data), bytes(captures["stderr"].data))
    if timed_out:
        result["error"] = f"Action failed to complete in {timeout:g} seconds" + (f"; {stray}" if stray else "")
    if truncated := _truncation(captures):
        result["truncated"] = truncated
    return result


def status_for(code: int) -> str:
    return _STATUS.get(code, "failed")


def _size(text: str) -> int:
    """Bytes `text` takes as the OS gets it (UTF-8; counted, never refused, whatever it holds)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _problem(source: str, text: str, name_bytes: int = 0) -> str | None:
    """Why the OS cannot carry `text` (an argument, or an environment variable's value whose name and `=`
    take `name_bytes`), naming where it came from; None when it can."""
    if "\x00" in text:
        return (f"{source} holds a NUL byte (\\0), which a command's arguments and environment cannot carry: "
                "remove it, or encode the value (base64, JSON) and decode it in the command")
    if name_bytes + _size(text) + 1 > STRING_LIMIT:
        return (f"{source} is {_size(text)} bytes: the kernel gives a command at most {STRING_LIMIT} bytes "
                f"({STRING_LIMIT // 1024} KiB) per argument or environment variable, name included; pass large "
                "data in a file or through the datastore instead")
    return None


def carrier(request: RunRequest, text: str, fallback: str) -> str:
    """The parameter whose value `text` carries, for an error: the one that is itself the trouble (a NUL,
    or at least half the size) and appears whole in `text`; else `fallback`."""
    for name, value in request.action_parameters.items():
        if isinstance(value, str) and value and value in text and ("\x00" in value or 2 * len(value) >= len(text)):
            return f'parameter "{name}"'
    return fallback


def _env_problem(request: RunRequest, env: Mapping[str, str]) -> str | None:
    """The first environment variable the OS cannot carry, named by where it came from (names are checked
    when the run is requested: `engine.parameters`)."""
    user_env = {str(key) for key in (request.runner_parameters.get("env") or {})}
    for key, value in env.items():
        if key in user_env:
            source = f'parameter "env" (variable "{key}")'
        elif key.startswith("SQUALL_ARG_"):
            source = carrier(request, value, f"a value the cmd template inserts ({key})")
        else:
            source = f'the service\'s environment variable "{key}"'
        if problem := _problem(source, value, _size(key) + 1):
            return problem
    return None


def _uncarried(request: RunRequest, parts: list[Part], env: Mapping[str, str], cwd: str | None) -> str | None:
    """Why the command cannot start as asked, before it is tried: a NUL byte, which no argument or
    variable can hold (Python's "embedded null byte"), or a value over the kernel's limit on one string
    (E2BIG, "Argument list too long"), named by the parameter it came from. None when it can start."""
    for source, text in [*parts, ("cwd", cwd or "")]:
        if source is not None and (problem := _problem(f'parameter "{source}"', text)):
            return problem
    return _env_problem(request, env)


def _too_long_together(argv: list[str], env: Mapping[str, str]) -> str:
    """E2BIG with every string under the limit: the arguments and environment together pass ARG_MAX."""
    total = sum(_size(text) + 1 for text in argv) + sum(_size(k) + _size(v) + 2 for k, v in env.items())
    return (f"the command's arguments and environment are {total} bytes together, more than the kernel takes "
            f"({os.sysconf('SC_ARG_MAX')} bytes here, a quarter of the stack limit): pass large data in a file or "
            "through the datastore instead")


def _st2_interpreter(first_line: bytes, venv: Path | None) -> list[str] | None:
    """What runs a script whose `first_line` names StackStorm's own interpreter (`squall_paths.ST2_BIN`) or
    a pack virtualenv's python under StackStorm's root (`ST2_VIRTUALENVS/<pack>/bin/python`), which a Squall
    host does not have: the Exchange's ansible pack starts `#!/opt/stackstorm/st2/bin/python`, other Exchange
    packs `#!/opt/stackstorm/virtualenvs/<pack>/bin/python`, and their scripts could not start ("No such file or
    directory"). The pack's virtualenv python (`venv`; for a virtualenv's line, that of the pack it names, kept
    beside `venv` under `packs.virtualenvs_path`), else Squall's own, then the `#!` line's argument if it has
    one, as the kernel passes it; None for any other first line, or where that interpreter really is (a link
    an administrator made wins, as for `/opt/stackstorm/packs`)."""
    match = _ST2_SHEBANG.fullmatch(first_line.rstrip(b" \t\r\n"))
    if match is None or os.access(os.fsdecode(match["path"]), os.X_OK):
        return None
    if venv is not None and match["pack"]:
        venv = venv.parent / os.fsdecode(match["pack"])
    python = interpreter(venv) if venv is not None else sys.executable
    return [python, *([os.fsdecode(match["argument"])] if match["argument"] else [])]


def _command_parts(request: RunRequest, venv: Path | None = None) -> tuple[list[Part], dict[str, str]]:
    """The command line (each part with the parameter it comes from) and the variables a `cmd`'s values
    travel in; a script naming StackStorm's interpreter (or a virtualenv's under its root) is handed to the
    pack's (`venv`'s, `_st2_interpreter`), the file left as it is. Raises `EmptyCommand` or
    `TemplateRenderError` for a `cmd` that cannot run."""
    if request.action.runner_type != "local-shell-script":
        command, extra_env = command_of(request)
        return [(None, "bash"), (None, "-c"), ("cmd", command)], extra_env
    script = str(request.action.entry_path)
    with open(script, "rb") as handle:
        first_line = handle.readline(SHEBANG_LIMIT)
    if (interpreter := _st2_interpreter(first_line, venv)) is not None:
        return [(None, word) for word in (*interpreter, script)] + list(_script_argument_parts(request)), {}
    if not os.access(script, os.X_OK) and os.access(script, os.W_OK):
        os.chmod(script, os.stat(script).st_mode | 0o111)
    has_shebang = first_line.startswith(b"#!")
    parts: list[Part] = [(None, script)] if has_shebang else [(None, "bash"), (None, script)]
    if request.runner_parameters.get("debug") and not has_shebang:
        parts.insert(1, (None, "-x"))
    return parts + list(_script_argument_parts(request)), {}


class LocalShellRunner:
    """Both local shell runners; which one is decided by the action's runner type.

    With `run_as` (`runners.user`, the service running as root) commands start as that user, in
    its home folder unless the action sets `cwd`. `sudo: true` is no way around it: `sudo` then
    runs as that user, and the host's sudoers decides what it may do as root (as with
    StackStorm's `stanley`); otherwise any chat user allowed `!run` could ask for root.
    """

    def __init__(self, run_as: RunAs | None = None, virtualenvs: Path | None = None) -> None:
        self.run_as = run_as
        #: Where the packs' virtualenvs are (`packs.virtualenvs_path`), for a `cwd` under StackStorm's.
        self.virtualenvs = virtualenvs
        #: What a canceled run's kill left running, by execution, until the cancel's result is stored.
        self._strays: dict[str, str] = {}

    def interrupted_result(self, execution_id: str) -> dict[str, Any] | None:
        """What the canceled result adds (`ExecutionService` asks as it stores a cancel): the processes
        the kill may have left running, which a canceled result's error cannot say."""
        stray = self._strays.pop(execution_id, None)
        return {"stray_processes": stray} if stray is not None else None

    async def run(self, request: RunRequest) -> RunOutcome:
        params = request.runner_parameters
        try:
            parts, extra_env = _command_parts(request, self._virtualenv(request))
        except (EmptyCommand, TemplateRenderError) as exc:  # a bad value fails the run, plainly
            return RunOutcome("failed", {"error": str(exc)})
        argv = [text for _, text in parts]
        stdin = None
        if params.get("sudo"):
            password = params.get("sudo_password")
            argv = ["sudo", "-E", *(["-S"] if password else ["-n"]), "--", *argv]
            stdin = f"{password}\n".encode() if password else None
        run_as = self.run_as
        env = action_environment(request, extra_env, run_as)
        asked = str(params["cwd"]) if params.get("cwd") else None
        cwd = self._folder(request, asked) if asked else (run_as.workdir if run_as is not None else None)
        if problem := _uncarried(request, parts, env, cwd):
            return RunOutcome("failed", {"error": problem})
        try:
            result = await run_process(
                argv, env=env, cwd=cwd, timeout=float(params.get("timeout") or 60), stdin=stdin, run_as=run_as,
                on_output=request.on_output, on_stray=functools.partial(self._strays.__setitem__, request.execution_id))
        except OSError as exc:
            return self._not_started(exc, argv, env, cwd, asked)
        if params.get("sudo") and "incorrect password" in str(result["stderr"]).lower():
            user = run_as.name if run_as is not None else os.environ.get("USER", "squall")
            result.update(return_code=-1, error="Invalid sudo password provided or sudo is not configured "
                          f"for this user ({user})")
        return RunOutcome(status_for(result["return_code"]), result)

    def _virtualenv(self, request: RunRequest) -> Path | None:
        """The action's pack's virtualenv folder (`packs.virtualenvs_path`/<pack>), None when not configured."""
        return self.virtualenvs / request.action.pack if self.virtualenvs is not None else None

    def _folder(self, request: RunRequest, asked: str) -> str:
        """The folder `cwd` names. Under StackStorm's pack or virtualenv roots (the Exchange's ansible
        actions default to `/opt/stackstorm/packs/{{ pack }}`) it is read where Squall keeps the pack or
        its virtualenv, as pack code's own paths are (`squall_paths.under_squall`); else as it is."""
        folder = under_squall(asked, ST2_PACKS, str(request.pack_path), request.action.pack)
        if folder is asked and (venv := self._virtualenv(request)) is not None:
            folder = under_squall(asked, ST2_VIRTUALENVS, str(venv))
        return folder

    def _not_started(self, exc: OSError, argv: list[str], env: Mapping[str, str], cwd: str | None = None,
                     asked: str | None = None) -> RunOutcome:
        """A command that could not start: the `cwd` it `asked` for (read as `cwd`) is no folder to run in,
        the action's to fix and said so, with no traceback of Squall's; too big for the kernel altogether, or
        not as `runners.user` (anything else is the service's trouble, and raised)."""
        if asked is not None and exc.filename == cwd:  # how subprocess reports a failed chdir
            return RunOutcome("failed", {"error": _cwd_problem(exc, asked, cwd)})
        if exc.errno == errno.E2BIG:
            return RunOutcome("failed", {"error": _too_long_together(argv, env)})
        if self.run_as is None:
            raise exc
        return RunOutcome("failed", {"error": f"the command could not start as user '{self.run_as.name}' "
                                              f"(runners.user): {exc}"})


def _cwd_problem(exc: OSError, asked: str, cwd: str) -> str:
    """Why the folder the `cwd` parameter names (`asked`, read as `cwd`) cannot be a command's working folder."""
    what = {errno.ENOENT: "does not exist", errno.ENOTDIR: "is not a folder"}.get(
        exc.errno or 0, f"cannot be entered ({exc.strerror})")
    shown = asked if cwd == asked else f"{asked} (read as {cwd})"
    hint = ""
    if cwd == asked and any(asked == root or asked.startswith(root + "/") for root in (ST2_PACKS, ST2_VIRTUALENVS)):
        hint = (f" (Squall reads {ST2_PACKS}/<pack> from its packs' folders and {ST2_VIRTUALENVS}/<pack> from "
                "packs.virtualenvs_path, and has no folder for this one)")
    return (f"cwd {shown} {what}{hint}: the \"cwd\" parameter must name a folder on this host to run the command "
            "in; give it one that exists, or leave it out")

