"""`local-shell-cmd` and `local-shell-script`: real subprocesses, StackStorm's results (spec §1.5, §1.7).

No parameter value ever reaches a shell unquoted. A script's parameters are passed as argv
entries, with no shell in between; a `cmd` template is rendered by `shell_template`, which hands
every `{{ }}` value to bash as data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from engine.processes import LEDGER, dying_with_service
from engine.runners import OUTPUT_LIMIT, RunAs, RunOutcome, RunRequest
from engine.runners.environment import action_environment
from engine.runners.shell_template import EmptyCommand, command_of
from engine.templates import TemplateRenderError

log = logging.getLogger(__name__)


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


async def _read(stream: asyncio.StreamReader, sink: bytearray, on_output: Callable[[bytes], None] | None) -> None:
    """Collect a pipe for the result, reporting each chunk as it comes when someone records live output."""
    while chunk := await stream.read(65536):
        if on_output is not None:
            on_output(chunk)
        room = OUTPUT_LIMIT - len(sink)
        if room > 0:
            sink.extend(chunk[:room])


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _stop_reading(readers: asyncio.Future[Any]) -> None:
    """Cancel the output readers, and take their outcome when it comes: a canceled gather ends with a
    CancelledError as its exception, which asyncio logs as "never retrieved" if nobody reads it."""
    readers.cancel()
    readers.add_done_callback(lambda future: future.cancelled() or future.exception())


async def run_process(
    argv: list[str], *, env: dict[str, str], cwd: str | None, timeout: float, stdin: bytes | None = None,
    run_as: RunAs | None = None, on_output: Callable[[str, bytes], None] | None = None,
) -> dict[str, Any]:
    """Run one command in its own process group; returns StackStorm's shell result object.

    With `run_as` the process starts as that user and its groups (the service must be root).
    On timeout or cancellation the whole group is killed, so no stray children outlive it; if the
    service dies, the leader dies with it and the group is in this process's owner file.
    """
    argv, dying = dying_with_service(argv)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        **dying,
        **(run_as.process_options() if run_as is not None else {}),
    )
    LEDGER.track(process.pid)
    try:
        return await _communicate(process, stdin, timeout, on_output)
    finally:
        if process.returncode is not None:
            LEDGER.untrack(process.pid)


async def _communicate(process: asyncio.subprocess.Process, stdin: bytes | None, timeout: float,
                       on_output: Callable[[str, bytes], None] | None) -> dict[str, Any]:
    out, err = bytearray(), bytearray()
    live = {name: functools.partial(on_output, name) if on_output else None for name in ("stdout", "stderr")}
    readers = asyncio.gather(_read(process.stdout, out, live["stdout"]),  # type: ignore[arg-type]
                             _read(process.stderr, err, live["stderr"]))  # type: ignore[arg-type]
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
                _stop_reading(readers)
    except asyncio.CancelledError:
        _kill_group(process)
        _stop_reading(readers)
        await asyncio.shield(process.wait())
        raise
    code = -9 if timed_out else process.returncode
    result = shell_result(code, bytes(out), bytes(err))
    if timed_out:
        result["error"] = f"Action failed to complete in {timeout:g} seconds"
    return result


def status_for(code: int) -> str:
    return _STATUS.get(code, "failed")


class LocalShellRunner:
    """Both local shell runners; which one is decided by the action's runner type.

    With `run_as` (`runners.user`, the service running as root) commands start as that user, in
    its home folder unless the action sets `cwd`. `sudo: true` is no way around it: `sudo` then
    runs as that user, and the host's sudoers decides what it may do as root (as with
    StackStorm's `stanley`); otherwise any chat user allowed `!run` could ask for root.
    """

    def __init__(self, run_as: RunAs | None = None) -> None:
        self.run_as = run_as

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
            try:
                command, extra_env = command_of(request)
            except (EmptyCommand, TemplateRenderError) as exc:  # a bad value fails the run, plainly
                return RunOutcome("failed", {"error": str(exc)})
            argv = ["bash", "-c", command]
        stdin = None
        if params.get("sudo"):
            password = params.get("sudo_password")
            argv = ["sudo", "-E", *(["-S"] if password else ["-n"]), "--", *argv]
            stdin = f"{password}\n".encode() if password else None
        run_as = self.run_as
        env = action_environment(request, extra_env, run_as)
        cwd = params.get("cwd") or (run_as.workdir if run_as is not None else None)
        try:
            result = await run_process(
                argv, env=env, cwd=cwd, timeout=float(params.get("timeout") or 60), stdin=stdin, run_as=run_as,
                on_output=request.on_output)
        except OSError as exc:
            if run_as is None:
                raise
            return RunOutcome("failed", {"error": f"the command could not start as user '{run_as.name}' "
                                                  f"(runners.user): {exc}"})
        if params.get("sudo") and "incorrect password" in str(result["stderr"]).lower():
            user = run_as.name if run_as is not None else os.environ.get("USER", "squall")
            result.update(return_code=-1, error="Invalid sudo password provided or sudo is not configured "
                          f"for this user ({user})")
        return RunOutcome(status_for(result["return_code"]), result)
