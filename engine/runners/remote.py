"""`remote-shell-cmd` and `remote-shell-script`: commands over SSH with asyncssh (spec §1.4, §1.5, §1.7).

One execution runs on every host in `hosts` (comma-separated, `host:port` allowed), one after
another or, with `parallel: true`, all at once. Each host gets StackStorm's shell result object
(`stdout`, `stderr`, `return_code`, `succeeded`, `failed`, plus `timeout`/`error`), keyed by the
host as written; a host that cannot be reached fails alone and the others' results are kept.

Host keys are NOT verified (`known_hosts=None`), as StackStorm's paramiko runner does not verify
them either: a host (or bastion) that presents an unknown or changed key is trusted all the same,
so a man in the middle would go unnoticed. Use it only on networks where that is acceptable.

What runs remotely is a bash script: the `export NAME='value';` lines (the `env` parameter,
StackStorm's `ST2_ACTION_*` variables, the execution's API token and the values of the `cmd`
template), `cd '<cwd>'`, then the command. As with the local runner, a `cmd` template's `{{ }}`
values never become shell code: they travel as exported variables and the command refers to them
("${SQUALL_ARG_0}"); a script's arguments are each shell-quoted. The script goes over the channel's
stdin, never on a command line: every user of a host reads every process's arguments (`ps -eo
args`). The command line is the same fixed text for every run (`_RUN_FROM_STDIN`, through
`sudo -E -n --` with `sudo` and no password; `_SUDO_WITH_PASSWORD` when there is one, so that sudo
reads the password and nothing else). The command's own stdin is empty (/dev/null).

`timeout` bounds the connection (TCP, key exchange, login: a host that takes longer fails as
unreachable, return code 255) and then, separately, copying the script plus running the command
(a host that takes longer gets `timeout: true`, return code -9). On timeout or cancellation the
remote process group is killed: Squall sends an SSH `signal` request (OpenSSH's killpg as the login
user) and closes the channel; the channel's stdin, left open while the command runs, then ends, and
the script's watcher kills its process group as the user the command runs as, root under sudo, whose
processes the login user cannot signal. A lost connection ends that stdin too, so it kills the
command as well. stdout and stderr keep at most `OUTPUT_LIMIT` bytes each; a host's result then says
which was cut in `truncated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import logging
import os
import posixpath
import re
import shlex
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from engine.runners import OUTPUT_LIMIT, RunOutcome, RunRequest, truncation
from engine.runners.environment import action_variables
from engine.runners.shell import carrier, script_arguments, shell_result
from engine.runners.shell_template import EmptyCommand, command_of
from engine.templates import TemplateRenderError

# asyncssh logs every connection and channel at INFO; a runner's log needs only its problems.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNREACHABLE = 255


@dataclass(frozen=True)
class Target:
    """One entry of `hosts`: the text as given (the result's key), the host name and the port."""

    given: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_hosts(text: str, default_port: int) -> list[Target]:
    """`"a, b:2222, [::1]:22"` into targets; duplicates dropped. Raises ValueError on a bad entry."""
    targets: dict[str, Target] = {}
    for raw in str(text or "").split(","):
        given = raw.strip()
        if not given or given in targets:
            continue
        targets[given] = parse_host(given, default_port)
    return list(targets.values())


def parse_host(given: str, default_port: int) -> Target:
    host, port = given, default_port
    if given.startswith("["):  # [ipv6] or [ipv6]:port
        close = given.find("]")
        rest = given[close + 1 :] if close > 0 else "?"
        if close < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid host {given!r}: expected [address] or [address]:port")
        host, port_text = given[1:close], rest[1:]
        if port_text:
            port = _port(given, port_text)
    elif given.count(":") == 1:
        host, port_text = given.split(":")
        port = _port(given, port_text)
    if not host:
        raise ValueError(f"invalid host {given!r}: the host name is empty")
    return Target(given, host, port)


def _port(given: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid host {given!r}: {text!r} is not a port number")
    return int(text)


def remote_script(command: str, variables: dict[str, str], cwd: str | None) -> str:
    """The bash text run on each host: exports, `cd`, then the command on a line of its own."""
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in variables.items())
    change = f"cd {shlex.quote(cwd)} || exit 1\n" if cwd else ""
    return f"{exports}\n{change}{command}"


#: What every host runs, as `bash -c` its one argument (the same text for every run): the script comes
#: on stdin, ended by a NUL byte, or from the FIFO named by "$1" (`_SUDO_WITH_PASSWORD`). The rest of that
#: input stays open while the command runs and ends only when Squall closes the channel (timeout,
#: cancel) or loses the connection: a watcher then kills the process group as this shell's user, root
#: under sudo. (The `signal` request OpenSSH serves is a killpg as the login user, which cannot reach
#: root's processes.) The FIFO is opened read-write first so that opening it never blocks, whether
#: or not its writer is still there. The script runs in a subshell, so that no `exit` or trap of its
#: own skips stopping the watcher, with empty positional parameters and stdin, as `bash -c` would.
_RUN_FROM_STDIN = r"""if [ -n "${1-}" ]; then
  exec 6<>"$1" 3<"$1" 6>&- || exit 255
  rm -rf -- "${1%/*}"
else
  exec 3<&0
fi
exec </dev/null
IFS= read -r -d '' -u 3 __squall_script || exit 255
{ while read -r -u 3 _; do :; done; kill -KILL 0; } >/dev/null 2>&1 &
__squall_watcher=$!
disown
(set --; eval "unset __squall_script __squall_watcher"$'\n'"$__squall_script") 3<&-
__squall_code=$?
kill -KILL "$__squall_watcher" 2>/dev/null
exit "$__squall_code"
"""

#: What runs, as the login user, when there is a sudo password. sudo's stdin holds that password and
#: nothing more: after a wrong one sudo asks again (three times by default), and it would read the
#: script's lines as the next tries, each one more failure counted against the account (pam_faillock
#: locks it at three). The rest of the channel's stdin (the script, then the open end) reaches
#: `_RUN_FROM_STDIN` through a FIFO in a private temporary folder, as sudo closes every descriptor but
#: 0, 1 and 2. `cat` holds the FIFO open read-write, so the FIFO keeps what it wrote until the root
#: side opens it; it closes when the channel's stdin ends or the login user's processes are killed.
_SUDO_WITH_PASSWORD = r"""IFS= read -r __squall_password || exit 255
__squall_dir=$(mktemp -d) || exit 255
mkfifo -m 600 "$__squall_dir/in" && exec 5<>"$__squall_dir/in" || { rm -rf -- "$__squall_dir"; exit 255; }
cat <&0 >&5 &
__squall_feeder=$!
disown
exec 5>&- </dev/null
sudo -E -S -- bash -c @RUN_FROM_STDIN@ bash "$__squall_dir/in" <<<"$__squall_password"
__squall_code=$?
kill "$__squall_feeder" 2>/dev/null
rm -rf -- "$__squall_dir"
exit "$__squall_code"
""".replace("@RUN_FROM_STDIN@", shlex.quote(_RUN_FROM_STDIN))


def wrap_command(*, sudo: bool, sudo_password: str | None) -> str:
    """The command line given to the login shell: fixed text, no value in it (the script is on stdin)."""
    if sudo and sudo_password:
        return f"bash -c {shlex.quote(_SUDO_WITH_PASSWORD)}"
    line = f"bash -c {shlex.quote(_RUN_FROM_STDIN)}"
    return f"sudo -E -n -- {line}" if sudo else line


def stdin_payload(script: str, sudo_password: str | None) -> bytes:
    """What is written to the channel's stdin: the sudo password's line (if any), then the script and
    the NUL that ends it. Nothing follows: the open end is the command's lifeline (`_RUN_FROM_STDIN`)."""
    password = f"{sudo_password}\n" if sudo_password else ""
    return f"{password}{script}\0".encode()


def _nul_problem(request: RunRequest, variables: dict[str, str], command: str, cwd: str | None) -> str | None:
    """Why the script cannot be sent, if a value holds a NUL byte (it ends the script on stdin, and no
    shell variable or command line can hold one), named by the parameter it came from as the local runner
    names it (`carrier`), never by the variable a `cmd` template's value travels in; None when none does."""
    user_env = {str(key) for key in (request.runner_parameters.get("env") or {})}
    found = [f'parameter "env" (variable "{name}")' if name in user_env else
             carrier(request, value, f'variable "{name}"') for name, value in variables.items() if "\0" in value]
    found += [carrier(request, command, "the command")] if "\0" in command else []
    found += ['parameter "cwd"'] if cwd and "\0" in cwd else []
    if not found:
        return None
    return (f"{found[0]} holds a NUL byte (\\0), which no shell variable or command on the remote host can hold: "
            "remove it, or encode the value (base64, JSON) and decode it in the command")


@dataclass
class _Job:
    """What is the same on every host of one execution."""

    execution_id: str
    username: str
    password: str | None
    key: asyncssh.SSHKey | None
    key_error: str | None
    bastion: Target | None
    script_body: str  # for remote-shell-cmd the whole script; for -script everything before the path
    script_tail: str  # the quoted arguments after the script path (remote-shell-script)
    upload: bytes | None  # the entry point's content (remote-shell-script)
    upload_name: str
    upload_dir: str
    sudo: bool
    sudo_password: str | None
    timeout: float
    #: The run's live output (`RunRequest.on_output`): every host's chunks as they come.
    on_output: Callable[[str, bytes], None] | None = None

    @property
    def command_line(self) -> str:
        return wrap_command(sudo=self.sudo, sudo_password=self.sudo_password)

    def stdin(self, uploaded: str | None) -> bytes:
        """The channel's input: the script, ending with the uploaded script's path and arguments if any."""
        body = self.script_body
        if uploaded is not None:
            body = f"{body}{shlex.quote(uploaded)}{self.script_tail}"
        return stdin_payload(body, self.sudo_password if self.sudo else None)


def _failure(error: str, code: int = _UNREACHABLE) -> dict[str, Any]:
    return {"failed": True, "succeeded": False, "return_code": code, "stdout": "", "stderr": "", "error": error}


def _timed_out(target: Target, timeout: float, stage: str, out: bytearray | None = None,
               err: bytearray | None = None) -> dict[str, Any]:
    return {
        **_output_result(-9, out or bytearray(), err or bytearray()),
        "timeout": True,
        "error": f"{stage} on {target.given} timed out: Action failed to complete in {timeout:g} seconds",
    }


def _output_result(code: int, out: bytearray, err: bytearray) -> dict[str, Any]:
    """The shell result of what was read: `_read` keeps one byte past `OUTPUT_LIMIT`, the sign of more.

    Without `truncated`, a cut output would look whole (the http runner says the same of a body)."""
    result = shell_result(code, bytes(out[:OUTPUT_LIMIT]), bytes(err[:OUTPUT_LIMIT]))
    if said := truncation([name for name, data in (("stdout", out), ("stderr", err)) if len(data) > OUTPUT_LIMIT],
                          OUTPUT_LIMIT):
        result["truncated"] = said
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror  # "Name or service not known": its errno is getaddrinfo's, not the OS's
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # "Connection refused", not "Connect call failed ('h', 22)"
    text = str(exc)
    return text if text else type(exc).__name__


async def _read(stream: asyncssh.SSHReader[bytes], sink: bytearray,
                on_output: Callable[[bytes], None] | None) -> None:
    """Collect a channel's stream for the host's result, reporting each chunk as it comes (live output).

    One byte past OUTPUT_LIMIT is kept, so that the result can tell a cut output from a whole one."""
    while chunk := await stream.read(65536):
        if on_output is not None:
            on_output(chunk)
        room = OUTPUT_LIMIT + 1 - len(sink)
        if room > 0:
            sink.extend(chunk[:room])


async def _close(conn: asyncssh.SSHClientConnection | None) -> None:
    if conn is None:
        return
    conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.wait_closed(), 5)


def _load_key(private_key: str, passphrase: str | None) -> asyncssh.SSHKey:
    if "PRIVATE KEY" in private_key:
        return asyncssh.import_private_key(private_key, passphrase)
    return asyncssh.read_private_key(private_key, passphrase)


#: What a private_key that names a file looks like: one short line of path characters, starting as a
#: path does. Only such a value is quoted in an error (its file name and folder); anything else may be
#: key material that lost its BEGIN/END lines, and masking hides only the whole value, not a piece.
_KEY_PATH = re.compile(r"[/~.][\w./~+@=,: -]{0,254}")


def _key_error(private_key: str, exc: Exception) -> str:
    if "PRIVATE KEY" in private_key:
        return f"cannot use the private_key given: {_key_reason(exc)}"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _key_reason(exc)
    if not _KEY_PATH.fullmatch(private_key):
        return ("private_key is neither a readable key file nor key material: give the path of a key file "
                f"(starting with /, ~ or .) or the whole key, its BEGIN and END lines included ({reason})")
    reason = reason.replace(private_key, "the file")
    path = Path(private_key)
    # The path is a secret parameter's value, so the execution record masks it; the folder and the
    # file name stay readable there.
    return (f"cannot read the private_key file {private_key} (file {path.name!r} in folder {str(path.parent)!r}): "
            f"{reason}")


def _key_reason(exc: Exception) -> str:
    """Why asyncssh could not use a key, without what it read from it.

    asyncssh appends what it found to some messages ("Unknown cipher: <field>", "Unknown PEM key type:
    <name>"); in a mangled key that field may be key bytes, so only the words before the colon are
    kept. A decoding error quotes a byte and its position: it is said in words instead."""
    if isinstance(exc, UnicodeError):
        return "the key is not ASCII text"
    return _describe(exc).split(":", 1)[0]


class RemoteShellRunner:
    """Both remote shell runners; which one is decided by the action's runner type."""

    async def run(self, request: RunRequest) -> RunOutcome:
        params = request.runner_parameters
        try:
            targets = parse_hosts(params.get("hosts") or "", int(params.get("port") or 22))
            bastion = parse_host(str(params["bastion_host"]).strip(), 22) if params.get("bastion_host") else None
        except ValueError as exc:
            return RunOutcome("failed", {"error": str(exc)})
        if not targets:
            return RunOutcome("failed", {"error": 'parameter "hosts" names no host: nothing to run'})
        variables = action_variables(request)
        upload: bytes | None = None
        upload_name = tail = ""
        if request.action.runner_type == "remote-shell-script":
            entry = request.action.entry_path
            assert entry is not None  # the action loader requires one for this runner
            upload, upload_name = entry.read_bytes(), entry.name
            tail = "".join(f" {shlex.quote(arg)}" for arg in script_arguments(request))
            command = ""
        else:
            try:
                command, values = command_of(request)
            except (EmptyCommand, TemplateRenderError) as exc:  # a bad value fails the run, plainly
                return RunOutcome("failed", {"error": str(exc)})
            variables.update(values)
        bad = sorted(name for name in variables if not _ENV_NAME.match(name))
        if bad:
            return RunOutcome("failed", {"error": f"env names must be letters, digits and '_': {bad}"})
        nul = _nul_problem(request, variables, f"{command}{tail}", params.get("cwd") or None)
        if nul:
            return RunOutcome("failed", {"error": nul})
        script = remote_script(str(command), variables, params.get("cwd") or None)

        key: asyncssh.SSHKey | None = None
        key_error = None
        private_key = params.get("private_key")
        if private_key:
            try:
                key = await asyncio.to_thread(_load_key, str(private_key), params.get("passphrase") or None)
            except (OSError, asyncssh.KeyImportError, ValueError) as exc:
                key_error = _key_error(str(private_key), exc)

        job = _Job(
            execution_id=request.execution_id,
            username=params.get("username") or getpass.getuser(),
            password=params.get("password") or None,
            key=key,
            key_error=key_error,
            bastion=bastion,
            script_body=script,
            script_tail=tail,
            upload=upload,
            upload_name=upload_name,
            upload_dir=params.get("dir") or "/tmp",
            sudo=bool(params.get("sudo")),
            sudo_password=params.get("sudo_password") or None,
            timeout=float(params.get("timeout") or 60),
            on_output=request.on_output,
        )
        if params.get("parallel"):
            results = await asyncio.gather(*(self._host(target, job) for target in targets))
        else:
            results = [await self._host(target, job) for target in targets]
        by_host = {target.given: result for target, result in zip(targets, results, strict=True)}
        if all(r["succeeded"] for r in results):
            status = "succeeded"
        elif all(r.get("timeout") for r in results):
            status = "timeout"
        else:
            status = "failed"
        return RunOutcome(status, by_host)

    # -- one host ------------------------------------------------------------------------------
    async def _host(self, target: Target, job: _Job) -> dict[str, Any]:
        """Run on one host; every failure becomes that host's result, never an exception."""
        if job.key_error:
            return _failure(f"{target.given}: {job.key_error}")
        conn = tunnel = None
        who = via = f"{job.username}@{target.address}"
        try:
            try:
                if job.bastion is not None:
                    via = f"bastion {job.username}@{job.bastion.address}"
                    tunnel = await self._connect(job.bastion, job, None)
                    via = who
                    conn = await self._connect(target, job, tunnel)
                else:
                    via = who
                    conn = await self._connect(target, job, None)
            except asyncssh.PermissionDenied as exc:
                return _failure(f"authentication failed for {via}: {_describe(exc)}")
            except TimeoutError:
                return _failure(f"cannot connect to {via}: timed out after {job.timeout:g} seconds")
            except (OSError, asyncssh.Error) as exc:
                return _failure(f"cannot connect to {via}: {_describe(exc)}")
            return await self._execute(conn, target, job)
        except (OSError, asyncssh.Error) as exc:
            return _failure(f"SSH error on {target.given}: {_describe(exc)}")
        except Exception as exc:  # one host's surprise must not lose the other hosts' results
            return _failure(f"{target.given}: {type(exc).__name__}: {exc}", -1)
        finally:
            await asyncio.shield(self._close_all(conn, tunnel))

    @staticmethod
    async def _close_all(*conns: asyncssh.SSHClientConnection | None) -> None:
        for conn in conns:
            await _close(conn)

    async def _connect(self, target: Target, job: _Job,
                       tunnel: asyncssh.SSHClientConnection | None) -> asyncssh.SSHClientConnection:
        options: dict[str, Any] = {
            "username": job.username,
            "known_hosts": None,  # StackStorm does not verify host keys either (see the module docstring)
            "connect_timeout": job.timeout,
        }
        if tunnel is not None:
            options["tunnel"] = tunnel
        if job.password is not None:
            options["password"] = job.password
        if job.key is not None:
            options.update(client_keys=[job.key], agent_path=None)
        elif job.password is not None:
            options.update(client_keys=None, agent_path=None)
        return await asyncssh.connect(target.host, target.port, **options)

    async def _execute(self, conn: asyncssh.SSHClientConnection, target: Target, job: _Job) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + job.timeout
        if job.upload is None:
            return await self._command(conn, target, job, job.stdin(None), deadline)
        path = posixpath.join(job.upload_dir, f"squall-{job.execution_id}-{uuid.uuid4().hex[:8]}-{job.upload_name}")
        sftp = None
        try:
            try:
                sftp = await asyncio.wait_for(conn.start_sftp_client(), max(0.01, deadline - loop.time()))
                await asyncio.wait_for(self._upload(sftp, path, job.upload), max(0.01, deadline - loop.time()))
            except TimeoutError:
                return _timed_out(target, job.timeout, "copying the script")
            except (OSError, asyncssh.Error) as exc:
                return _failure(f"cannot copy the script to {target.given}:{path}: {_describe(exc)}")
            return await self._command(conn, target, job, job.stdin(path), deadline)
        finally:
            if sftp is not None:
                await asyncio.shield(self._remove(sftp, path))

    @staticmethod
    async def _upload(sftp: asyncssh.SFTPClient, path: str, data: bytes) -> None:
        async with sftp.open(path, "wb") as handle:
            await handle.write(data)
        await sftp.chmod(path, 0o755)

    @staticmethod
    async def _remove(sftp: asyncssh.SFTPClient, path: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sftp.remove(path), 5)
        sftp.exit()

    async def _command(self, conn: asyncssh.SSHClientConnection, target: Target, job: _Job, stdin: bytes,
                       deadline: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        process = await conn.create_process(job.command_line, encoding=None)
        out, err = bytearray(), bytearray()
        finished = False

        async def drain() -> None:
            live = job.on_output
            await asyncio.gather(_read(process.stdout, out, functools.partial(live, "stdout") if live else None),
                                 _read(process.stderr, err, functools.partial(live, "stderr") if live else None))
            await process.wait_closed()

        try:
            process.stdin.write(stdin)  # and no EOF: its end is what kills the command (_RUN_FROM_STDIN)
            try:
                await asyncio.wait_for(drain(), max(0.01, deadline - loop.time()))
                finished = True
            except TimeoutError:
                return _timed_out(target, job.timeout, "the command", out, err)
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    process.send_signal("KILL")  # OpenSSH kills the session's process group as the login user
                process.close()  # stdin ends: the script's watcher kills the rest (root's, under sudo)
        error = None
        if process.exit_signal:  # killed by a signal: a negative number, as for local processes
            code = -int(getattr(signal, f"SIG{process.exit_signal[0]}", 1))
        elif process.exit_status is not None:
            code = process.exit_status
        else:
            code, error = _UNREACHABLE, f"{target.given}: the channel closed without an exit status"
        result = _output_result(code, out, err)
        if job.sudo and "incorrect password" in str(result["stderr"]).lower():
            code, error = -1, ("Invalid sudo password provided or sudo is not configured "
                               f"for this user ({job.username}) on {target.given}")
            result.update(return_code=code, failed=True, succeeded=False)
        if error:
            result["error"] = error
        return result
