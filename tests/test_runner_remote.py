"""The remote shell runners (`remote-shell-cmd`, `remote-shell-script`) against a real OpenSSH server.

Spec §1.4 (runner parameters, result keyed by host, status rules), §1.5 (script arguments),
§1.7 (result shape, timeouts) and §1.8 (environment). `tests/sshd.py` starts an sshd of the
tests' own on 127.0.0.1 and 127.0.0.2 (two "hosts" on one port); everything runs through the
engine end to end. The "remote" processes run on this machine, so their pids can be checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from bot.app import Squall
from engine.parameters import ParameterError
from engine.runners import RUNNER_TYPES, RunRequest, remote
from engine.runners.remote import RemoteShellRunner, parse_hosts, remote_script, stdin_payload, wrap_command
from tests.conftest import server_missing, write
from tests.sshd import TEST_USER, SSHDUnavailable, SSHServer, running_sshd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sshd() -> Iterator[SSHServer]:
    try:
        with running_sshd() as server:
            yield server
    except SSHDUnavailable as exc:
        server_missing(f"no OpenSSH server for the remote runner tests: {exc}")


@pytest.fixture
def sudoer(sshd: SSHServer) -> Iterator[Callable[[bool], None]]:
    """Let the test user run anything as root through sudo (with `-E`, hence SETENV): `sudoer(False)`
    without a password (NOPASSWD), `sudoer(True)` with its own password (the server's `password`).
    The sudoers entry is this process's own file and is removed afterwards."""
    if os.geteuid() != 0 or sshd.user != TEST_USER or sshd.password is None:
        server_missing("the sudo tests need root, to give the test user a sudoers entry")
    if shutil.which("sudo") is None or not Path("/etc/sudoers.d").is_dir():
        server_missing("sudo is not installed (Debian package 'sudo'; .ci/run installs it)")
    entry = Path(f"/etc/sudoers.d/squall-tests-{os.getpid()}")

    def allow(password: bool) -> None:
        tags = "SETENV:" if password else "NOPASSWD:SETENV:"
        entry.write_text(f"{sshd.user} ALL=(ALL) {tags} ALL\n")
        entry.chmod(0o440)

    try:
        yield allow
    finally:
        entry.unlink(missing_ok=True)


@pytest.fixture
def home(home: Path) -> Path:
    """The conftest home plus a pack of remote actions, written before Squall starts."""
    pack = home / "packs" / "remotetest"
    write(pack / "pack.yaml", """
        name: remotetest
        description: remote runner test pack
        version: 0.1.0
        author: tests
    """)
    for name, cmd in {
        "unquoted": "printf '%s' {{ value }}",
        "double": "printf '%s' \"{{ value }}\"",
        "single": "printf '%s' '{{ value }}'",
    }.items():
        write(pack / "actions" / f"{name}.yaml", f"""
            name: {name}
            runner_type: remote-shell-cmd
            parameters:
              value:
                type: string
                required: true
              cmd:
                immutable: true
                default: {json.dumps(cmd)}
        """)
    write(pack / "actions" / "secretcmd.yaml", """
        name: secretcmd
        runner_type: remote-shell-cmd
        parameters:
          token:
            type: string
            secret: true
            required: true
          out:
            type: string
            required: true
          cmd:
            immutable: true
            default: 'printf "%s\\n" "$ST2_ACTION_AUTH_TOKEN" {{ token }} "$API_PW" > {{ out }}; sleep 30; echo done'
    """)
    write(pack / "actions" / "argv.sh", """
        #!/bin/bash
        printf '%s\\n' "$0" "$PWD" "$ST2_ACTION_EXECUTION_ID"
        printf '[%s]\\n' "$@"
    """)
    write(pack / "actions" / "argv.yaml", """
        name: argv
        runner_type: remote-shell-script
        entry_point: argv.sh
        parameters:
          name:
            type: string
          flag:
            type: boolean
          disabled:
            type: boolean
            default: false
          tags:
            type: array
          first:
            type: string
            position: 0
          second:
            type: integer
            position: 1
          third:
            type: array
            position: 2
    """)
    return home


def creds(server: SSHServer, **extra: Any) -> dict[str, Any]:
    """Parameters that log in to the test server with the unencrypted key file."""
    return {"hosts": server.host, "username": server.user, "private_key": str(server.key_path), **extra}


async def run(app: Squall, ref: str, params: dict[str, Any]) -> dict[str, Any]:
    record = await app.executions.request(ref, params)
    return await app.executions.wait(record["id"], timeout=30)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


async def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def _read_pids(path: Path) -> list[int]:
    for _ in range(200):
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n") and len(text.split()) >= 2:
            return [int(p) for p in text.split()]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was never written")


async def _read_lines(path: Path, count: int) -> list[str]:
    for _ in range(200):
        lines = path.read_text().split("\n") if path.exists() else []
        if len(lines) > count:
            return lines[:count]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never got {count} lines")


def _uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("Uid:"))
    except FileNotFoundError:
        return None


def _every_command_line() -> list[str]:
    """The arguments of every process on this machine (the "remote" host), as `ps -eo args` shows them
    to any user: what no secret may appear in."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:  # gone meanwhile
                continue
    return lines


def _sudo_params(sshd: SSHServer, password: bool) -> dict[str, Any]:
    """The sudo_password parameter when sudo asks for one (`core.remote_sudo` has `sudo: true` already)."""
    return {"sudo_password": sshd.password} if password else {}


SUDO_PASSWORD = pytest.mark.parametrize("password", [False, True], ids=["nopasswd", "password"])


# ---------------------------------------------------------------------------------------------
# Runner table, pack core, pure helpers
# ---------------------------------------------------------------------------------------------


def test_runner_types_have_stackstorms_parameters() -> None:
    cmd, script = RUNNER_TYPES["remote-shell-cmd"], RUNNER_TYPES["remote-shell-script"]
    for runner in (cmd, script):
        params = runner.parameters
        assert params["hosts"] == {**params["hosts"], "type": "string", "required": True}
        for secret in ("password", "private_key", "passphrase", "sudo_password"):
            assert params[secret]["secret"] is True
        assert params["port"]["default"] == 22
        assert params["cwd"]["default"] == "/tmp" and params["dir"]["default"] == "/tmp"
        assert params["kwarg_op"]["default"] == "--"
        assert params["parallel"]["default"] is False and not params["parallel"].get("immutable")
        assert params["sudo"]["default"] is False and params["timeout"]["default"] == 60
        assert {"username", "bastion_host", "env"} <= set(params)
    assert "cmd" in cmd.parameters and "cmd" not in script.parameters
    assert cmd.forbids_entry_point and script.needs_entry_point


def test_parse_hosts() -> None:
    targets = parse_hosts(" a, b:2222 ,a,, [::1]:23, [fe80::1], ::1", 22)
    assert [(t.given, t.host, t.port) for t in targets] == [
        ("a", "a", 22), ("b:2222", "b", 2222), ("[::1]:23", "::1", 23), ("[fe80::1]", "fe80::1", 22),
        ("::1", "::1", 22),
    ]
    for bad in ("a:b", "a:0", "a:70000", ":22", "[::1"):
        with pytest.raises(ValueError, match="invalid host"):
            parse_hosts(bad, 22)


def test_remote_command_quotes_everything() -> None:
    script = remote_script("echo \"${SQUALL_ARG_0}\"", {"SQUALL_ARG_0": "it's $(x)"}, "/my dir")
    assert script == "export SQUALL_ARG_0='it'\"'\"'s $(x)'; \ncd '/my dir' || exit 1\necho \"${SQUALL_ARG_0}\""


def test_the_command_line_is_fixed_and_the_script_goes_on_stdin() -> None:
    """`ps` shows every process's arguments to every user of the host: the command line is the same
    text for every run, and the script (values, auth token) and the sudo password go on stdin."""
    plain = wrap_command(sudo=False, sudo_password=None)
    no_password = wrap_command(sudo=True, sudo_password=None)
    password = wrap_command(sudo=True, sudo_password="pw-1")
    assert plain.startswith("bash -c '") and no_password == f"sudo -E -n -- {plain}"
    assert password.startswith("bash -c '") and "sudo -E -S -- bash -c" in password and "pw-1" not in password
    assert wrap_command(sudo=True, sudo_password="other") == password
    assert stdin_payload("echo 'a b'", None) == b"echo 'a b'\0"
    assert stdin_payload("echo 'a b'", "pw-1") == b"pw-1\necho 'a b'\0"


async def test_core_pack_has_remote_actions(squall: Squall) -> None:
    remote = squall.registry.action("core.remote")
    sudo = squall.registry.action("core.remote_sudo")
    for action in (remote, sudo):
        assert action.runner_type == "remote-shell-cmd"
        assert action.parameters["cmd"]["required"] is True
        assert action.parameters["sudo"]["immutable"] is True
    assert remote.parameters["sudo"]["default"] is False
    assert sudo.parameters["sudo"]["default"] is True


# ---------------------------------------------------------------------------------------------
# Logging in
# ---------------------------------------------------------------------------------------------


async def test_key_file_login_and_result_shape(squall: Squall, sshd: SSHServer) -> None:
    done = await run(squall, "core.remote", creds(sshd, cmd="whoami; echo '{\"a\": 1}' >&2"))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"] == {
        sshd.host: {"failed": False, "succeeded": True, "return_code": 0, "stdout": sshd.user, "stderr": {"a": 1}},
    }


async def test_key_material_login_is_not_stored(squall: Squall, sshd: SSHServer) -> None:
    params = {"hosts": sshd.host, "username": sshd.user, "private_key": sshd.key_text, "cmd": "echo 42"}
    done = await run(squall, "core.remote", params)
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"][sshd.host]["stdout"] == 42
    assert "PRIVATE KEY" not in json.dumps(done)
    assert "PRIVATE KEY" not in json.dumps(squall.store.get_execution(done["id"]), default=str)


async def test_encrypted_key_with_passphrase(squall: Squall, sshd: SSHServer) -> None:
    params = {"hosts": sshd.host, "username": sshd.user, "private_key": str(sshd.encrypted_key_path), "cmd": "echo ok"}
    done = await run(squall, "core.remote", {**params, "passphrase": sshd.passphrase})
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"][sshd.host]["stdout"] == "ok"

    done = await run(squall, "core.remote", {**params, "passphrase": "wrong-passphrase"})
    assert done["status"] == "failed"
    error = done["result"][sshd.host]["error"]
    assert "private_key" in error and "passphrase" in error.lower()


async def test_password_login_and_the_password_is_secret(squall: Squall, sshd: SSHServer) -> None:
    if sshd.password is None:
        server_missing("password login needs root to set the test user's password")
    params = {"hosts": sshd.host, "username": sshd.user, "password": sshd.password, "cmd": "echo pw-login"}
    record = await squall.executions.request("core.remote", params)
    assert record["parameters"]["password"] != sshd.password
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"][sshd.host]["stdout"] == "pw-login"
    assert sshd.password not in json.dumps(record)
    assert sshd.password not in json.dumps(done)
    stored = squall.store.get_execution(record["id"])
    assert sshd.password not in json.dumps(stored, default=str)


async def test_wrong_password_fails_naming_the_host(squall: Squall, sshd: SSHServer) -> None:
    params = {"hosts": sshd.host, "username": sshd.user, "password": "not-the-password", "cmd": "true"}
    done = await run(squall, "core.remote", params)
    assert done["status"] == "failed"
    result = done["result"][sshd.host]
    assert result["return_code"] == 255 and result["failed"] is True and result["succeeded"] is False
    assert "authentication failed" in result["error"] and sshd.host.split(":")[0] in result["error"]


async def test_wrong_key_path_names_the_path(squall: Squall, sshd: SSHServer, tmp_path: Path) -> None:
    missing = tmp_path / "keys" / "no_such_key"
    done = await run(squall, "core.remote", creds(sshd, private_key=str(missing), cmd="true"))
    assert done["status"] == "failed"
    error = done["result"][sshd.host]["error"]
    # The full path is a secret parameter's value and is masked in the record; its parts are not.
    assert "no_such_key" in error and str(missing.parent) in error
    assert "No such file or directory" in error


async def test_runner_error_names_the_key_path_itself(squall: Squall, sshd: SSHServer, tmp_path: Path) -> None:
    """Before the engine masks secret values in the record, the runner's error has the whole path."""
    missing = str(tmp_path / "nope_key")
    params = {"hosts": sshd.host, "private_key": missing, "cmd": "true"}
    request = RunRequest("x1", squall.registry.action("core.remote"), params, {}, {}, {})
    outcome = await RemoteShellRunner().run(request)
    assert outcome.status == "failed"
    assert missing in outcome.result[sshd.host]["error"]


def _pieces(secret: str, size: int = 6) -> list[str]:
    """Every `size`-character run of `secret`: none may show in an error (masking hides only the whole)."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize("joined", ["", "\n"], ids=["one-line", "lines"])
async def test_key_material_without_its_armor_is_not_quoted(squall: Squall, joined: str) -> None:
    """The base64 body of a key whose BEGIN/END lines were lost is no file path: the error says what
    private_key must be and quotes none of it (it once quoted the "file" and "folder", most of the key)."""
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    body = joined.join(line for line in key.splitlines() if "PRIVATE KEY" not in line)
    params = {"hosts": "127.0.0.1:1", "private_key": body, "cmd": "true"}
    outcome = await RemoteShellRunner().run(RunRequest("x1", squall.registry.action("core.remote"), params,
                                                       {}, {}, {}))
    error = outcome.result["127.0.0.1:1"]["error"]
    assert outcome.status == "failed"
    assert "private_key is neither a readable key file nor key material" in error
    assert [piece for piece in _pieces(body) if piece in error] == []
    done = await run(squall, "core.remote", params)  # and so the stored record
    stored = squall.store.get_execution(done["id"])["result"]["127.0.0.1:1"]["error"]
    assert [piece for piece in _pieces(body) if piece in stored] == []


async def test_key_import_errors_do_not_quote_what_they_read(squall: Squall) -> None:
    """asyncssh names what it could not use ("Unknown cipher: <the bytes read>"): a mangled key's bytes
    stand there, so the error keeps asyncssh's words up to the colon."""
    def string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    field = b"k3y-m4teri4l-s3cret"
    blob = (b"openssh-key-v1\0" + string(field) + string(b"bcrypt") + string(b"") + (1).to_bytes(4, "big")
            + string(b"") + string(b""))
    key = ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.b64encode(blob).decode()
           + "\n-----END OPENSSH PRIVATE KEY-----\n")
    params = {"hosts": "127.0.0.1:1", "private_key": key, "passphrase": "pass", "cmd": "true"}
    outcome = await RemoteShellRunner().run(RunRequest("x1", squall.registry.action("core.remote"), params,
                                                       {}, {}, {}))
    error = outcome.result["127.0.0.1:1"]["error"]
    assert "cannot use the private_key given: Unknown cipher" in error
    assert field.decode() not in error


# ---------------------------------------------------------------------------------------------
# Several hosts, unreachable hosts, parallel
# ---------------------------------------------------------------------------------------------

_SERVER_ADDRESS = "echo $SSH_CONNECTION | cut -d' ' -f3"


async def test_two_hosts_in_one_execution(squall: Squall, sshd: SSHServer) -> None:
    done = await run(squall, "core.remote", creds(sshd, hosts=",".join(sshd.hosts), cmd=_SERVER_ADDRESS))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert list(done["result"]) == sshd.hosts
    for host in sshd.hosts:
        assert done["result"][host]["stdout"] == host.split(":")[0]


async def test_port_parameter_for_hosts_without_a_port(squall: Squall, sshd: SSHServer) -> None:
    done = await run(squall, "core.remote", creds(sshd, hosts="127.0.0.2", port=sshd.port, cmd=_SERVER_ADDRESS))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"] == {"127.0.0.2": {**done["result"]["127.0.0.2"], "stdout": "127.0.0.2"}}


async def test_unreachable_host_fails_alone(squall: Squall, sshd: SSHServer) -> None:
    bad = f"127.0.0.3:{sshd.port}"  # sshd does not listen on 127.0.0.3: refused at once
    for parallel in (False, True):
        done = await run(squall, "core.remote", creds(sshd, hosts=f"{bad},{sshd.host}", cmd="echo fine",
                                                       parallel=parallel))
        assert done["status"] == "failed"
        assert list(done["result"]) == [bad, sshd.host]
        assert done["result"][sshd.host]["stdout"] == "fine"
        assert done["result"][sshd.host]["succeeded"] is True
        failure = done["result"][bad]
        assert {k: v for k, v in failure.items() if k != "error"} == {
            "failed": True, "succeeded": False, "return_code": 255, "stdout": "", "stderr": ""}
        assert "cannot connect" in failure["error"] and "127.0.0.3" in failure["error"]
        assert "refused" in failure["error"].lower()


async def test_an_unknown_host_name_says_so(squall: Squall) -> None:
    host = "no-such-host.invalid"  # RFC 6761: never resolves
    with pytest.raises(socket.gaierror) as lookup:
        socket.getaddrinfo(host, 22, type=socket.SOCK_STREAM)
    done = await run(squall, "core.remote", {"hosts": host, "username": "someone", "cmd": "true"})
    assert done["status"] == "failed"
    error = done["result"][host]["error"]
    assert error == f"cannot connect to someone@{host}:22: {lookup.value.strerror}"
    assert "Unknown error" not in error


async def test_output_past_the_limit_is_cut_and_the_result_says_so(
        squall: Squall, sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "OUTPUT_LIMIT", 1000)
    many = "head -c 5000 /dev/zero | tr '\\0' {}"
    done = await run(squall, "core.remote", creds(sshd, cmd=f"{many.format('a')}; echo err >&2"))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    result = done["result"][sshd.host]
    assert result["stdout"] == "a" * 1000 and result["stderr"] == "err"
    assert result["truncated"] == "stdout was cut at 1000 bytes"

    done = await run(squall, "core.remote", creds(sshd, cmd=f"{many.format('a')}; {many.format('b')} >&2; sleep 30",
                                                  timeout=2))
    assert done["status"] == "timeout"
    result = done["result"][sshd.host]
    assert result["stdout"] == "a" * 1000 and result["stderr"] == "b" * 1000
    assert result["truncated"] == "stdout and stderr were cut at 1000 bytes each"

    done = await run(squall, "core.remote", creds(sshd, cmd="head -c 1000 /dev/zero | tr '\\0' c"))
    assert done["result"][sshd.host]["stdout"] == "c" * 1000 and "truncated" not in done["result"][sshd.host]


async def test_a_value_longer_than_a_command_line_may_be_reaches_the_host(squall: Squall, sshd: SSHServer) -> None:
    """The script travels on stdin, so the kernel's 128 KiB limit on one argument does not apply."""
    done = await run(squall, "core.remote", creds(sshd, cmd='echo "${#BIG}"', env={"BIG": "x" * 200_000}))
    assert done["status"] == "succeeded", json.dumps(done["result"])[:500]
    assert done["result"][sshd.host]["stdout"] == 200_000


async def test_a_nul_character_is_refused_naming_where_it_is(squall: Squall, sshd: SSHServer) -> None:
    done = await run(squall, "core.remote", creds(sshd, cmd="echo hi", env={"GOOD": "x", "BAD": "a\x00b"}))
    assert done["status"] == "failed"
    assert done["result"] == {"error": 'parameter "env" (variable "BAD") holds a NUL byte (\\0), which no shell '
                                       "variable or command on the remote host can hold: remove it, or encode the "
                                       "value (base64, JSON) and decode it in the command"}


async def test_a_nul_character_in_a_templated_value_names_its_parameter(squall: Squall, sshd: SSHServer) -> None:
    """A `cmd` template's value travels in a variable of Squall's own (SQUALL_ARG_0): the error names the
    parameter the person gave, as the local runner's does, not that variable."""
    done = await run(squall, "remotetest.double", creds(sshd, value="a\x00b"))
    assert done["status"] == "failed"
    assert done["result"]["error"].startswith('parameter "value" holds a NUL byte'), done["result"]
    assert "SQUALL_ARG" not in done["result"]["error"]


async def test_a_failing_command_on_one_host_fails_the_execution(squall: Squall, sshd: SSHServer) -> None:
    cmd = f'[ "$({_SERVER_ADDRESS})" = 127.0.0.1 ] || exit 3; echo one'
    done = await run(squall, "core.remote", creds(sshd, hosts=",".join(sshd.hosts), cmd=cmd))
    assert done["status"] == "failed"
    first, second = (done["result"][h] for h in sshd.hosts)
    assert first["succeeded"] is True and first["stdout"] == "one"
    assert second["return_code"] == 3 and second["failed"] is True and "error" not in second


async def test_parallel_runs_hosts_at_once(squall: Squall, sshd: SSHServer) -> None:
    hosts = ",".join(sshd.hosts)
    cmd = "sleep 0.6; " + _SERVER_ADDRESS
    timings = {}
    for parallel in (True, False):
        start = time.monotonic()
        done = await run(squall, "core.remote", creds(sshd, hosts=hosts, cmd=cmd, parallel=parallel))
        timings[parallel] = time.monotonic() - start
        assert done["status"] == "succeeded", json.dumps(done["result"])
        assert {h: r["stdout"] for h, r in done["result"].items()} == {h: h.split(":")[0] for h in sshd.hosts}
    assert timings[False] >= 1.2
    assert timings[True] < 1.1, timings


async def test_bastion_host(squall: Squall, sshd: SSHServer) -> None:
    target = sshd.hosts[1]
    done = await run(squall, "core.remote", creds(sshd, hosts=target, bastion_host=sshd.hosts[0], cmd=_SERVER_ADDRESS))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"][target]["stdout"] == "127.0.0.2"
    closed = f"127.0.0.3:{sshd.port}"
    done = await run(squall, "core.remote", creds(sshd, hosts=target, bastion_host=closed, cmd="true"))
    assert done["status"] == "failed"
    assert "bastion" in done["result"][target]["error"] and closed in done["result"][target]["error"]


# ---------------------------------------------------------------------------------------------
# Timeout and cancel
# ---------------------------------------------------------------------------------------------


async def test_timeout_kills_the_remote_command(squall: Squall, sshd: SSHServer) -> None:
    pids = sshd.scratch / "timeout.pids"
    cmd = f"sleep 30 & echo $$ $! > {pids}; echo started; sleep 30"
    start = time.monotonic()
    done = await run(squall, "core.remote", creds(sshd, cmd=cmd, timeout=2))
    assert time.monotonic() - start < 6
    assert done["status"] == "timeout"
    result = done["result"][sshd.host]
    assert result["timeout"] is True and result["return_code"] == -9
    assert result["failed"] is True and result["succeeded"] is False
    assert "timed out" in result["error"] and "2 seconds" in result["error"]
    assert result["stdout"] == "started"
    for pid in await _read_pids(pids):
        assert await _wait_gone(pid), f"remote process {pid} outlived the timeout"


async def test_timeout_on_one_host_only_is_failed(squall: Squall, sshd: SSHServer) -> None:
    cmd = f'[ "$({_SERVER_ADDRESS})" = 127.0.0.1 ] || sleep 30; echo done'
    done = await run(squall, "core.remote", creds(sshd, hosts=",".join(sshd.hosts), cmd=cmd, timeout=1,
                                                   parallel=True))
    assert done["status"] == "failed"
    first, second = (done["result"][h] for h in sshd.hosts)
    assert first["succeeded"] is True and "timeout" not in first
    assert second["timeout"] is True and second["return_code"] == -9


async def test_cancel_kills_the_remote_command(squall: Squall, sshd: SSHServer) -> None:
    pids = sshd.scratch / "cancel.pids"
    pids.unlink(missing_ok=True)
    cmd = f"sleep 30 & echo $$ $! > {pids}; sleep 30"
    record = await squall.executions.request("core.remote", creds(sshd, cmd=cmd))
    remote = await _read_pids(pids)
    assert all(_alive(pid) for pid in remote)
    await squall.executions.cancel(record["id"])
    done = await squall.executions.wait(record["id"], timeout=10)
    assert done["status"] == "canceled"
    for pid in remote:
        assert await _wait_gone(pid), f"remote process {pid} outlived the cancel"


def _group(pgid: int) -> list[int]:
    """The processes of a process group (field 5 of /proc/<pid>/stat, after the command's name)."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(int(entry.name))
        except (OSError, IndexError):  # gone meanwhile
            continue
    return members


async def test_a_command_that_ends_leaves_its_own_background_processes(squall: Squall, sshd: SSHServer) -> None:
    """Only a timeout, a cancel or a lost connection kills the process group: a command that ends lets
    what it started in the background (a daemon, output redirected) run on, as `bash -c` did."""
    pids = sshd.scratch / "daemon.pids"
    pids.unlink(missing_ok=True)
    cmd = f"sleep 30 >/dev/null 2>&1 & echo $! $! > {pids}; echo started"
    done = await run(squall, "core.remote", creds(sshd, cmd=cmd))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    daemon = (await _read_pids(pids))[0]
    pgid = os.getpgid(daemon)
    for _ in range(100):  # the run's shell and its watcher end; the daemon stays
        if _group(pgid) == [daemon]:
            break
        await asyncio.sleep(0.05)
    try:
        assert _group(pgid) == [daemon] and _alive(daemon)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, 9)


# ---------------------------------------------------------------------------------------------
# sudo: root's processes end with their run, and the password is read once
# ---------------------------------------------------------------------------------------------


@SUDO_PASSWORD
async def test_sudo_runs_as_root_and_the_command_reads_no_password(
        squall: Squall, sshd: SSHServer, sudoer: Callable[[bool], None], password: bool) -> None:
    sudoer(password)
    cmd = 'echo "$(id -u) $FOO"; cat; echo end'
    done = await run(squall, "core.remote_sudo", creds(sshd, cmd=cmd, env={"FOO": "it's"},
                                                       **_sudo_params(sshd, password)))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"][sshd.host]["stdout"] == "0 it's\nend"  # `cat` read nothing: stdin was empty


async def test_a_sudo_password_not_asked_for_is_not_the_commands_input(
        squall: Squall, sshd: SSHServer, sudoer: Callable[[bool], None]) -> None:
    sudoer(False)  # NOPASSWD: sudo never reads the password sent
    done = await run(squall, "core.remote_sudo", creds(sshd, cmd="id -u; cat", sudo_password="unused-pw"))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"][sshd.host]["stdout"] == 0


async def test_a_wrong_sudo_password_is_tried_once_and_fails(
        squall: Squall, sshd: SSHServer, sudoer: Callable[[bool], None]) -> None:
    """sudo asks three times: the lines after the password (the script) must never be the next tries,
    or one wrong password would count three failures (pam_faillock locks the account at three)."""
    sudoer(True)
    done = await run(squall, "core.remote_sudo", creds(sshd, cmd="echo never", sudo_password="wrong-pw",
                                                       timeout=20))
    assert done["status"] == "failed"
    result = done["result"][sshd.host]
    assert "timeout" not in result and result["stdout"] == "" and result["return_code"] == -1
    assert "Invalid sudo password" in result["error"] and sshd.host in result["error"]
    assert "1 incorrect password attempt" in result["stderr"]


@SUDO_PASSWORD
async def test_sudo_timeout_kills_the_root_command(
        squall: Squall, sshd: SSHServer, sudoer: Callable[[bool], None], password: bool) -> None:
    """OpenSSH's `signal` request is a killpg as the login user, which cannot reach root's processes."""
    sudoer(password)
    pids = sshd.scratch / f"sudo-timeout-{password}.pids"
    pids.unlink(missing_ok=True)
    cmd = f"sleep 30 & echo $$ $! > {pids}; echo started $(id -u); sleep 30"
    done = await run(squall, "core.remote_sudo", creds(sshd, cmd=cmd, timeout=3, **_sudo_params(sshd, password)))
    assert done["status"] == "timeout", json.dumps(done["result"])
    assert done["result"][sshd.host]["stdout"] == "started 0"
    for pid in await _read_pids(pids):
        assert await _wait_gone(pid), f"root's remote process {pid} outlived the timeout"


@SUDO_PASSWORD
async def test_sudo_cancel_kills_the_root_command(
        squall: Squall, sshd: SSHServer, sudoer: Callable[[bool], None], password: bool) -> None:
    sudoer(password)
    pids = sshd.scratch / f"sudo-cancel-{password}.pids"
    pids.unlink(missing_ok=True)
    cmd = f"sleep 30 & echo $$ $! > {pids}; sleep 30"
    record = await squall.executions.request("core.remote_sudo", creds(sshd, cmd=cmd, **_sudo_params(sshd, password)))
    remote = await _read_pids(pids)
    assert [_uid(pid) for pid in remote] == [0, 0]
    await squall.executions.cancel(record["id"])
    done = await squall.executions.wait(record["id"], timeout=10)
    assert done["status"] == "canceled"
    for pid in remote:
        assert await _wait_gone(pid), f"root's remote process {pid} outlived the cancel"


# ---------------------------------------------------------------------------------------------
# Secrets never show in the host's process list
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sudo", [None, False, True], ids=["plain", "sudo-nopasswd", "sudo-password"])
async def test_no_secret_shows_in_the_hosts_process_list(
        squall: Squall, sshd: SSHServer, sudoer: Callable[[bool], None], sudo: bool | None) -> None:
    """Every user of the host reads every process's arguments (`ps -eo args`): a secret parameter's
    value, the `env` values and the execution's API token must be in none of them while it runs."""
    extra: dict[str, Any] = {}
    if sudo is not None:
        sudoer(sudo)
        extra = {"sudo": True, **_sudo_params(sshd, sudo)}
    out = sshd.scratch / f"seen-{sudo}"
    out.unlink(missing_ok=True)
    token, password = "tok-" + secrets.token_hex(8), "pw-" + secrets.token_hex(8)
    record = await squall.executions.request("remotetest.secretcmd", creds(
        sshd, token=token, out=str(out), env={"API_PW": password}, **extra))
    auth_token, seen_token, seen_password = await _read_lines(out, 3)
    assert (seen_token, seen_password) == (token, password) and len(auth_token) > 16
    secret_values = [token, password, auth_token] + ([sshd.password] if sudo else [])
    leaks = [line for line in _every_command_line() if any(value in line for value in secret_values)]
    await squall.executions.cancel(record["id"])
    assert (await squall.executions.wait(record["id"], timeout=10))["status"] == "canceled"
    assert leaks == []


# ---------------------------------------------------------------------------------------------
# cwd, env, the action's variables, templates
# ---------------------------------------------------------------------------------------------


async def test_default_cwd_is_tmp_and_cwd_parameter(squall: Squall, sshd: SSHServer) -> None:
    done = await run(squall, "core.remote", creds(sshd, cmd="pwd"))
    assert done["result"][sshd.host]["stdout"] == "/tmp"
    folder = sshd.scratch / "a dir; with 'quotes'"
    folder.mkdir(exist_ok=True)
    done = await run(squall, "core.remote", creds(sshd, cmd="pwd", cwd=str(folder)))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    assert done["result"][sshd.host]["stdout"] == str(folder)
    done = await run(squall, "core.remote", creds(sshd, cmd="echo never", cwd=str(sshd.scratch / "missing")))
    assert done["status"] == "failed"
    assert done["result"][sshd.host]["return_code"] == 1
    assert "missing" in done["result"][sshd.host]["stderr"] and done["result"][sshd.host]["stdout"] == ""


async def test_env_and_action_variables_reach_the_host(squall: Squall, sshd: SSHServer) -> None:
    hostile = "it's \"$(touch /tmp/squall-env-pwned)\" `id` $HOME"
    env = {"FOO": hostile, "N": 5, "ST2_ACTION_PACK_NAME": "spoofed"}
    cmd = 'printf "%s\\n" "$FOO" "$N" "$ST2_ACTION_PACK_NAME" "$ST2_ACTION_EXECUTION_ID" "$SQUALL_ACTION_EXECUTION_ID"'
    record = await squall.executions.request("core.remote", creds(sshd, cmd=cmd, env=env))
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "succeeded", json.dumps(done["result"])
    lines = done["result"][sshd.host]["stdout"].split("\n")
    assert lines == [hostile, "5", "core", record["id"], record["id"]]
    assert not Path("/tmp/squall-env-pwned").exists()


async def test_env_names_must_be_shell_names(squall: Squall, sshd: SSHServer) -> None:
    # Refused when requested, before anything is stored or sent over SSH.
    with pytest.raises(ParameterError, match="is not an environment variable name"):
        await run(squall, "core.remote", creds(sshd, cmd="true", env={"A; touch /tmp/x": "v"}))


def _decoded(text: str) -> Any:
    """stdout is JSON-decoded when it is JSON (spec §1.7): `"; touch x; echo "` is a JSON string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


NASTY = [
    "$(touch {dir}/pwned1)",
    '"; touch {dir}/pwned2; echo "',
    "'; touch {dir}/pwned3; echo '",
    "`touch {dir}/pwned4`",
    "it's a 'quoted' \"value\" $HOME ${{PATH}} \\ trailing\\",
    "line one\nline two; touch {dir}/pwned5",
]


async def test_cmd_template_values_are_data(squall: Squall, sshd: SSHServer) -> None:
    folder = sshd.scratch / "nasty"
    folder.mkdir(exist_ok=True)
    cases = [(ref, value.format(dir=folder)) for value in NASTY for ref in ("unquoted", "double", "single")]
    records = [await squall.executions.request(f"remotetest.{ref}", creds(sshd, value=value)) for ref, value in cases]
    for (ref, value), record in zip(cases, records, strict=True):
        done = await squall.executions.wait(record["id"], timeout=30)
        assert done["status"] == "succeeded", (ref, value, done["result"])
        assert done["result"][sshd.host]["stdout"] == _decoded(value), (ref, value)
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# remote-shell-script
# ---------------------------------------------------------------------------------------------


async def test_script_gets_named_then_positional_arguments(squall: Squall, sshd: SSHServer) -> None:
    folder = sshd.scratch / "scripts"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o777)  # the login user copies the script into it
    params = {
        "name": "it's $(touch /tmp/squall-pwned) a name",
        "flag": True,
        "tags": ["a", "b"],
        "first": "one two  three",
        "second": 7,
        "third": ["x", "y z"],
    }
    record = await squall.executions.request("remotetest.argv", creds(sshd, dir=str(folder), **params))
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "succeeded", json.dumps(done["result"])
    lines = done["result"][sshd.host]["stdout"].split("\n")
    script, cwd, execution_id, *args = lines
    assert script.startswith(str(folder) + "/") and script.endswith("argv.sh")
    assert cwd == "/tmp" and execution_id == record["id"]
    assert args == [
        "[--name=it's $(touch /tmp/squall-pwned) a name]", "[--flag]", "[--tags=['a', 'b']]",
        "[one two  three]", "[7]", "[x,y z]",
    ]
    assert not Path("/tmp/squall-pwned").exists()
    assert list(folder.iterdir()) == []  # the copied script is removed afterwards


async def test_script_on_two_hosts_with_a_missing_dir(squall: Squall, sshd: SSHServer) -> None:
    done = await run(squall, "remotetest.argv", creds(sshd, hosts=",".join(sshd.hosts), parallel=True,
                                                      name="n", first="p", kwarg_op="-"))
    assert done["status"] == "succeeded", json.dumps(done["result"])
    for host in sshd.hosts:
        assert done["result"][host]["stdout"].split("\n")[3:] == ["[-name=n]", "[p]", "[]", "[]"]
    done = await run(squall, "remotetest.argv", creds(sshd, dir=str(sshd.scratch / "no-such-dir")))
    assert done["status"] == "failed"
    assert "cannot copy the script" in done["result"][sshd.host]["error"]


async def test_script_through_sudo_with_a_password(
        squall: Squall, sshd: SSHServer, sudoer: Callable[[bool], None]) -> None:
    sudoer(True)
    record = await squall.executions.request("remotetest.argv", creds(
        sshd, sudo=True, sudo_password=sshd.password, first="it's", name="$(id)", env={"A": "b"}))
    done = await squall.executions.wait(record["id"], timeout=30)
    assert done["status"] == "succeeded", json.dumps(done["result"])
    script, cwd, execution_id, *args = done["result"][sshd.host]["stdout"].split("\n")
    assert script.startswith("/tmp/") and cwd == "/tmp" and execution_id == record["id"]
    assert args == ["[--name=$(id)]", "[it's]", "[]", "[]"]
