"""`st2common.runners.paramiko_ssh` as Exchange packs import it (`ParamikoSSHClient`).

paramiko is not one of Squall's dependencies, so these tests give the compat module a small fake
`paramiko` that records how it is called and answers with canned channel data: what is checked is
the client's own behaviour (StackStorm's), not paramiko's. The scripts run in a process of their
own with `engine/compat` first on the path, as an action's would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine.runners.python import COMPAT_PATH
from tests.conftest import write

FAKE_PARAMIKO = '''
from . import ssh_exception
from .ssh_exception import SSHException

CONNECTS = []
COMMANDS = []


class AutoAddPolicy:
    pass


class RSAKey:
    @classmethod
    def from_private_key(cls, handle, password=None):
        text = handle.read()
        if "BEGIN RSA PRIVATE KEY" not in text:
            raise SSHException("not an RSA key")
        return "rsa-key"

    @classmethod
    def from_private_key_file(cls, path, password=None):
        if "ENCRYPTED" in open(path).read():
            raise ssh_exception.PasswordRequiredException("private key file is encrypted")
        return "rsa-key"


class Channel:
    """Answers a command with canned output: `fail` exits 3, `hang` never ends, `sudo` gets a pty."""

    def __init__(self):
        self.pty = False
        self.cmd = None
        self.out = b""
        self.err = b""

    def get_pty(self):
        self.pty = True

    def exec_command(self, cmd):
        COMMANDS.append(cmd)
        self.cmd = cmd
        newline = b"\\r\\n" if self.pty else b"\\n"
        self.out = b"x" * 3000 + newline + ("ran " + cmd).encode() + newline
        self.err = b"" if self.pty else b"warning: fake\\n"

    def makefile(self, mode, bufsize):
        return self

    def close(self):
        pass

    def exit_status_ready(self):
        return "hang" not in self.cmd

    def recv_ready(self):
        return bool(self.out)

    def recv(self, size):
        data, self.out = self.out[:size], self.out[size:]
        return data

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, size):
        data, self.err = self.err[:size], self.err[size:]
        return data

    def recv_exit_status(self):
        return 3 if "fail" in self.cmd else 0


class Transport:
    def open_session(self):
        return Channel()


class SSHClient:
    def set_missing_host_key_policy(self, policy):
        self.policy = policy

    def connect(self, **conninfo):
        CONNECTS.append({key: value for key, value in conninfo.items() if key != "sock"})
        if conninfo.get("password") == "wrong":
            raise SSHException("Authentication failed.")

    def get_transport(self):
        return Transport()

    def close(self):
        pass
'''

FAKE_SSH_EXCEPTION = '''
class SSHException(Exception):
    pass


class PasswordRequiredException(SSHException):
    pass
'''


def run_script(tmp_path: Path, script: str, *, with_paramiko: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `script` with the compat packages first on the path (and the fake paramiko, if asked)."""
    fake = tmp_path / "fake"
    if with_paramiko:
        write(fake / "paramiko" / "__init__.py", FAKE_PARAMIKO)
        write(fake / "paramiko" / "ssh_exception.py", FAKE_SSH_EXCEPTION)
    path = os.pathsep.join([str(COMPAT_PATH), str(fake)])
    # -I would drop PYTHONPATH; -S keeps Squall's own site-packages (where a real paramiko may be) away.
    return subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path, timeout=60)


def result_of(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_without_paramiko_the_import_says_which_requirement_is_missing(tmp_path: Path) -> None:
    done = run_script(tmp_path, """
        import sys
        sys.modules["paramiko"] = None  # as in a virtualenv without it, whatever this machine has
        from st2common.runners.paramiko_ssh import ParamikoSSHClient
    """, with_paramiko=False)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: st2common.runners.paramiko_ssh needs the 'paramiko' package")
    assert "add 'paramiko' to the pack's requirements.txt" in last


def test_connect_and_run_as_stackstorm_does(tmp_path: Path) -> None:
    done = run_script(tmp_path, """
        import getpass, json, paramiko
        from st2common.runners.paramiko_ssh import ParamikoSSHClient

        seen = []
        client = ParamikoSSHClient("db1", port=2222, username="ops", password="pw", timeout=30,
                                   handle_stdout_line_func=lambda line: seen.append(line))
        assert client.connect() is True
        out, err, status = client.run("uptime", call_line_handler_func=True)
        failed = client.run("fail now")
        sudo = client.run("sudo id")
        quoted = client.run("echo a b", quote=True)
        default = ParamikoSSHClient("db2")
        default.connect()
        print(json.dumps({"connects": paramiko.CONNECTS, "commands": paramiko.COMMANDS,
                          "out": out, "err": err, "status": status, "failed": failed, "sudo": sudo,
                          "seen": seen[-1], "user": getpass.getuser(), "close": client.close(),
                          "timeout": client.ssh_connect_timeout, "repr": repr(client)}))
    """)
    result = result_of(done)
    first, second = result["connects"]
    assert first == {"hostname": "db1", "port": 2222, "username": "ops", "password": "pw",
                     "allow_agent": False, "look_for_keys": False, "timeout": 28}  # 2 s under the action's
    # Neither password nor key: the agent and ~/.ssh keys, as the user the action runs as.
    assert second == {"hostname": "db2", "port": 22, "username": result["user"], "allow_agent": True,
                      "look_for_keys": True, "timeout": 120}
    assert result["commands"] == ["uptime", "fail now", "sudo id", "'echo a b'"]
    # Output read in chunks across CHUNK_SIZE, decoded, the last newline stripped.
    assert result["out"] == "x" * 3000 + "\nran uptime"
    assert result["err"] == "warning: fake" and result["status"] == 0
    assert result["failed"] == ["x" * 3000 + "\nran fail now", "warning: fake", 3]
    assert result["sudo"] == ["x" * 3000 + "\nran sudo id", "", 0]  # the pty's CRLFs are LFs again
    assert result["seen"] == "ran uptime\n"
    assert result["close"] is True
    assert result["repr"].startswith("<ParamikoSSHClient hostname=db1,port=2222,username=ops,id=")


def test_a_command_that_does_not_end_raises_with_what_it_printed(tmp_path: Path) -> None:
    done = run_script(tmp_path, """
        import json
        from st2common.runners.paramiko_ssh import ParamikoSSHClient, SSHCommandTimeoutError

        client = ParamikoSSHClient("db1", username="ops", password="pw")
        client.SLEEP_DELAY = 0.01
        client.connect()
        try:
            client.run("hang here", timeout=0.05)
        except SSHCommandTimeoutError as exc:
            print(json.dumps({"message": str(exc), "cmd": exc.cmd, "stdout": exc.stdout[-13:],
                              "stderr": exc.stderr}))
    """)
    assert result_of(done) == {
        "message": "Command didn't finish in 0.05 seconds or the SSH connection did not succeed in 120 seconds",
        "cmd": "hang here", "stdout": "ran hang here", "stderr": "warning: fake"}


@pytest.mark.parametrize(("arguments", "error"), [
    ('key_files="/k", key_material="m"', "ValueError: key_files and key_material arguments are mutually exclusive"),
    ('passphrase="p"', "ValueError: passphrase should accompany private key material"),
    ('key_material="/home/me/.ssh/id_rsa"', 'SSHException: "private_key" parameter needs to contain private key '
                                            'data / content and not a path'),
    ('password="wrong"', "SSHException: Error connecting to host db1 with connection parameters"),
])
def test_connection_errors_are_stackstorms(tmp_path: Path, arguments: str, error: str) -> None:
    done = run_script(tmp_path, f"""
        from st2common.runners.paramiko_ssh import ParamikoSSHClient

        ParamikoSSHClient("db1", username="ops", {arguments}).connect()
    """)
    last = done.stderr.strip().splitlines()[-1]
    assert error in last
    assert "'wrong'" not in done.stderr  # a refused password is redacted from the message


def test_a_passphrase_protected_key_file_needs_its_passphrase(tmp_path: Path) -> None:
    key = write(tmp_path / "id_rsa", "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n")
    done = run_script(tmp_path, f"""
        import json, paramiko
        from st2common.runners.paramiko_ssh import ParamikoSSHClient
        from paramiko.ssh_exception import PasswordRequiredException

        try:
            ParamikoSSHClient("db1", username="ops", key_files={str(key)!r}).connect()
        except PasswordRequiredException as exc:
            refused = str(exc)
        ParamikoSSHClient("db1", username="ops", key_files={str(key)!r}, passphrase="secret").connect()
        print(json.dumps({{"refused": refused, "connect": paramiko.CONNECTS[-1]}}))
    """)
    result = result_of(done)
    assert result["refused"] == f"Private key file {key} is passphrase protected. Supply a passphrase."
    assert result["connect"]["key_filename"] == str(key) and result["connect"]["password"] == "secret"


def test_ssh_exceptions_module(tmp_path: Path) -> None:
    done = run_script(tmp_path, """
        import json
        from st2common.exceptions.ssh import InvalidCredentialsException, NoHostsConnectedToException

        print(json.dumps([issubclass(InvalidCredentialsException, Exception),
                          str(NoHostsConnectedToException("none of 3 hosts"))]))
    """, with_paramiko=False)
    assert result_of(done) == [True, "none of 3 hosts"]
