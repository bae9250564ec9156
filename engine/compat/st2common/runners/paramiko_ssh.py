"""`st2common.runners.paramiko_ssh`: StackStorm's `ParamikoSSHClient`, for packs that import it.

Exchange packs (and StackStorm's own linux pack before Squall rewrote `wait_for_ssh`) connect with
`ParamikoSSHClient(hostname, port, username, password=..., key_files=..., timeout=...)`, then call
`connect()`, `run(cmd)` -> `[stdout, stderr, exit_status]`, `put`/`put_dir`/`exists`/`mkdir`/
`delete_file`/`delete_dir` over SFTP and `close()`. This is the same client on the same paramiko
calls, so a pack sees StackStorm's behaviour, with what comes from st2.conf in StackStorm fixed here:

- no `[system_user]`: the user defaults to the one the action runs as, and with neither a password
  nor a key the SSH agent and `~/.ssh` keys are tried (StackStorm would use stanley's key file);
- no `[ssh_runner]`: `~/.ssh/config` is not read (`use_ssh_config` is off by default in
  StackStorm too) and the connect timeout is 120 s (its default), less when `timeout` is shorter.

paramiko is not part of Squall: StackStorm's virtualenv has it, a pack's may not. Importing this
module without it raises an ImportError that says to add `paramiko` to the pack's requirements.txt.
"""

from __future__ import annotations

import getpass
import io
import os
import posixpath
import time
from collections.abc import Callable
from typing import Any

try:
    import paramiko
    from paramiko.ssh_exception import SSHException
except ImportError as exc:  # said for people: the usual cause is a requirement the pack never listed
    raise ImportError(
        "st2common.runners.paramiko_ssh needs the 'paramiko' package, which this pack's virtualenv does "
        "not have (StackStorm's own virtualenv ships it, Squall does not): add 'paramiko' to the pack's "
        f"requirements.txt and run `squall pack install` for the pack again ({exc})", name="paramiko") from exc

from st2common.log import getLogger
from st2common.util.shell import quote_unix

__all__ = ["ParamikoSSHClient", "SSHCommandTimeoutError"]

DEFAULT_SSH_PORT = 22
#: StackStorm's `[ssh_runner] ssh_connect_timeout` default.
SSH_CONNECT_TIMEOUT = 120
#: What StackStorm looks for to tell key material from a path to a key file.
PRIVATE_KEY_HEADER = "BEGIN"


class SSHCommandTimeoutError(Exception):
    """A command did not finish in time; what it printed until then is kept."""

    def __init__(self, cmd: str, timeout: float, ssh_connect_timeout: float, stdout: str | None = None,
                 stderr: str | None = None) -> None:
        self.cmd = cmd
        self.timeout = timeout
        self.ssh_connect_timeout = ssh_connect_timeout
        self.stdout = stdout
        self.stderr = stderr
        self.message = (f"Command didn't finish in {timeout} seconds or the SSH connection did not succeed "
                        f"in {ssh_connect_timeout} seconds")
        super().__init__(self.message)

    def __repr__(self) -> str:
        return (f'<SSHCommandTimeoutError: cmd="{self.cmd}", timeout={self.timeout}, '
                f"ssh_connect_timeout={self.ssh_connect_timeout})>")

    def __str__(self) -> str:
        return self.message


def strip_shell_chars(text: str) -> str:
    """One trailing newline, then one trailing carriage return, removed (StackStorm's `util.misc`)."""
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


def sanitize_output(text: str, uses_pty: bool = False) -> str:
    """The output as StackStorm returns it: trailing newline stripped; a pty's CRLF turned into LF."""
    text = strip_shell_chars(text)
    return text.replace("\r\n", "\n") if uses_pty else text


class ParamikoSSHClient:
    """An SSH client powered by paramiko, with StackStorm's constructor, methods and results."""

    #: Bytes read from the channel at once.
    CHUNK_SIZE = 1024
    #: Seconds between looks at a running command (no busy waiting).
    SLEEP_DELAY = 0.2

    def __init__(self, hostname: str, port: int = DEFAULT_SSH_PORT, username: str | None = None,
                 password: str | None = None, bastion_host: str | None = None, key_files: Any = None,
                 key_material: str | None = None, timeout: float | None = None, passphrase: str | None = None,
                 handle_stdout_line_func: Callable[..., Any] | None = None,
                 handle_stderr_line_func: Callable[..., Any] | None = None) -> None:
        self.hostname = hostname
        self.port = port
        self.username = username
        self.password = password
        self.key_files = key_files
        self.timeout = timeout
        self.key_material = key_material
        self.bastion_host = bastion_host
        self.passphrase = passphrase
        self.ssh_connect_timeout: float = SSH_CONNECT_TIMEOUT
        if self.timeout and int(self.ssh_connect_timeout) > int(self.timeout) - 2:
            # the connection must not take longer than the action may (StackStorm's rule)
            self.ssh_connect_timeout = int(self.timeout) - 2
        self._handle_stdout_line_func = handle_stdout_line_func
        self._handle_stderr_line_func = handle_stderr_line_func
        self.ssh_config_file = os.path.expanduser("~/.ssh/config")
        self.logger = getLogger(__name__)
        self.client: Any = None
        self.sftp_client: Any = None
        self.bastion_client: Any = None
        self.bastion_socket: Any = None
        self.socket: Any = None

    def connect(self) -> bool:
        """Connect (through the bastion host when one is given); True, or an exception."""
        if self.bastion_host:
            self.logger.debug("Bastion host specified, connecting")
            self.bastion_client = self._connect(host=self.bastion_host)
            transport = self.bastion_client.get_transport()
            self.bastion_socket = transport.open_channel("direct-tcpip", (self.hostname, self.port), ("", 0))
        self.client = self._connect(host=self.hostname, socket=self.bastion_socket)
        return True

    def put(self, local_path: str, remote_path: str, mode: int | str | None = None,
            mirror_local_mode: bool = False) -> Any:
        """Upload a file over SFTP; the remote file's attributes. `mode` may be an octal string."""
        if not local_path or not remote_path:
            raise Exception(f"Need both local_path and remote_path. local: {local_path}, remote: {remote_path}")
        local_path = quote_unix(local_path)
        remote_path = quote_unix(remote_path)
        self.logger.debug("Uploading file", extra={"_local_path": local_path, "_remote_path": remote_path,
                                                   "_mode": mode, "_mirror_local_mode": mirror_local_mode})
        if not os.path.exists(local_path):
            raise Exception(f"Path {local_path} does not exist locally.")
        attributes = self.sftp.put(local_path, remote_path)
        if mode or mirror_local_mode:
            local_mode = mode if mode and not mirror_local_mode else os.stat(local_path).st_mode
            if isinstance(local_mode, str):
                local_mode = int(local_mode, 8)
            local_mode = int(local_mode) & 0o7777
            remote_mode = attributes.st_mode
            if remote_mode is not None:
                remote_mode &= 0o7777
            if local_mode != remote_mode:
                self.sftp.chmod(remote_path, local_mode)
        return attributes

    def put_dir(self, local_path: str, remote_path: str, mode: int | str | None = None,
                mirror_local_mode: bool = False) -> list[Any]:
        """Upload a folder (the folder itself, under `remote_path`); the uploaded files' attributes."""
        self.logger.debug("Uploading dir", extra={"_local_path": local_path, "_remote_path": remote_path,
                                                  "_mode": mode, "_mirror_local_mode": mirror_local_mode})
        strip = os.path.dirname(local_path) if os.path.basename(local_path) else \
            os.path.dirname(os.path.dirname(local_path))
        uploaded = []
        for context, dirs, files in os.walk(local_path):
            relative = context.replace(strip, "", 1).replace(os.sep, "/").lstrip("/")
            remote_context = posixpath.join(remote_path, relative)
            if not self.exists(remote_context):
                self.sftp.mkdir(remote_context)
            for name in dirs:
                folder = posixpath.join(remote_context, name)
                if not self.exists(folder):
                    self.sftp.mkdir(folder)
            for name in files:
                uploaded.append(self.put(local_path=os.path.join(context, name),
                                         remote_path=posixpath.join(remote_context, name),
                                         mirror_local_mode=mirror_local_mode, mode=mode))
        return uploaded

    def exists(self, remote_path: str) -> bool:
        """Whether a remote file or folder exists."""
        try:
            self.sftp.lstat(remote_path)
        except OSError:
            return False
        return True

    def mkdir(self, dir_path: str) -> Any:
        dir_path = quote_unix(dir_path)
        self.logger.debug("mkdir", extra={"_dir_path": dir_path})
        return self.sftp.mkdir(dir_path)

    def delete_file(self, path: str) -> bool:
        path = quote_unix(path)
        self.logger.debug("Deleting file", extra={"_path": path})
        self.sftp.unlink(path)
        return True

    def delete_dir(self, path: str, force: bool = False, timeout: float | None = None) -> Any:
        """Remove a remote folder: empty over SFTP, or with `force` by `rm -rf` (the `run` result)."""
        path = quote_unix(path)
        if force:
            command = f"rm -rf {path}"
            self.logger.debug("Deleting dir", extra={"_path": path, "_command": command, "_force": force})
            return self.run(command, timeout=timeout)
        self.logger.debug("Deleting dir", extra={"_path": path})
        return self.sftp.rmdir(path)

    def run(self, cmd: str, timeout: float | None = None, quote: bool = False,
            call_line_handler_func: bool = False) -> list[Any]:
        """Run `cmd`; `[stdout, stderr, exit_status]`, or SSHCommandTimeoutError after `timeout` seconds.

        A command starting with `sudo` gets a pty (sudo may insist on one), which merges stderr into
        stdout; its CRLFs are turned back into LFs. Standard input is closed at once, so a command
        asking a question fails instead of hanging."""
        if quote:
            cmd = quote_unix(cmd)
        self.logger.info("Executing command", extra={"_cmd": cmd})
        channel = self.client.get_transport().open_session()
        started = time.time()
        uses_pty = cmd.startswith("sudo")
        if uses_pty:
            channel.get_pty()
        channel.exec_command(cmd)
        stdout, stderr = io.StringIO(), io.StringIO()
        channel.makefile("wb", -1).close()
        while True:
            done = channel.exit_status_ready()  # before reading: output may come with the exit
            stdout.write(self._consume_stdout(channel, call_line_handler_func).getvalue())
            stderr.write(self._consume_stderr(channel, call_line_handler_func).getvalue())
            if done:
                break
            if timeout and time.time() - started > timeout:
                channel.close()
                raise SSHCommandTimeoutError(cmd=cmd, timeout=timeout, ssh_connect_timeout=self.ssh_connect_timeout,
                                             stdout=sanitize_output(stdout.getvalue(), uses_pty=uses_pty),
                                             stderr=sanitize_output(stderr.getvalue(), uses_pty=uses_pty))
            time.sleep(self.SLEEP_DELAY)
        status = channel.recv_exit_status()
        out = sanitize_output(stdout.getvalue(), uses_pty=uses_pty)
        err = sanitize_output(stderr.getvalue(), uses_pty=uses_pty)
        self.logger.debug("Command finished", extra={"_status": status, "_stdout": out, "_stderr": err})
        return [out, err, status]

    def close(self) -> bool:
        for part in (self.socket, self.client, self.sftp_client, self.bastion_socket, self.bastion_client):
            if part:
                part.close()
        return True

    @property
    def sftp(self) -> Any:
        """The SFTP session, opened on first use."""
        if not self.sftp_client:
            self.sftp_client = self.client.open_sftp()
        return self.sftp_client

    def _consume_stdout(self, channel: Any, call_line_handler_func: bool = False) -> io.StringIO:
        return self._consume(channel.recv_ready, channel.recv, self._handle_stdout_line_func,
                             call_line_handler_func)

    def _consume_stderr(self, channel: Any, call_line_handler_func: bool = False) -> io.StringIO:
        return self._consume(channel.recv_stderr_ready, channel.recv_stderr, self._handle_stderr_line_func,
                             call_line_handler_func)

    def _consume(self, ready: Callable[[], bool], receive: Callable[[int], Any], handler: Callable[..., Any] | None,
                 call_handler: bool) -> io.StringIO:
        """What the channel has ready now, decoded; never waits (a read on a channel with nothing
        ready would block)."""
        data = bytearray()
        while ready():
            chunk = receive(self.CHUNK_SIZE)
            if not chunk:
                break
            data += chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        text = io.StringIO(self._get_decoded_data(data))
        if handler and call_handler:
            for line in strip_shell_chars(text.getvalue()).split("\n"):
                if line:
                    handler(line=line + "\n")
        return text

    def _get_decoded_data(self, data: bytes | bytearray) -> str:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            self.logger.exception("Non UTF-8 character found in data: %s", data)
            raise

    @staticmethod
    def _key_classes() -> list[Any]:
        """paramiko's private key types that this paramiko has (DSS is gone from paramiko 4)."""
        names = ("RSAKey", "DSSKey", "ECDSAKey", "Ed25519Key")
        return [getattr(paramiko, name) for name in names if hasattr(paramiko, name)]

    def _get_pkey_object(self, key_material: str, passphrase: str | None) -> Any:
        """The private key in `key_material` (its text, not a path), whatever its type."""
        for cls in self._key_classes():
            try:
                return cls.from_private_key(io.StringIO(key_material), password=passphrase)
            except SSHException:
                continue
        if PRIVATE_KEY_HEADER.lower() not in key_material.lower() and ("/" in key_material or "\\" in key_material):
            message = '"private_key" parameter needs to contain private key data / content and not a path'
        elif passphrase:
            message = "Invalid passphrase or invalid/unsupported key type"
        else:
            message = "Invalid or unsupported key type"
        raise SSHException(message)

    @classmethod
    def _is_key_file_needs_passphrase(cls, file: str) -> bool:
        for key_class in cls._key_classes():
            try:
                key_class.from_private_key_file(file, password=None)
            except paramiko.ssh_exception.PasswordRequiredException:
                return True
            except SSHException:
                continue
        return False

    def _connect(self, host: str, socket: Any = None) -> Any:
        """A connected `paramiko.SSHClient`; the password is redacted from the error of a failure."""
        self.username = self.username or getpass.getuser()
        self.port = self.port or DEFAULT_SSH_PORT
        if self.key_files and self.key_material:
            raise ValueError("key_files and key_material arguments are mutually exclusive. Supply only one.")
        if self.passphrase and not (self.key_files or self.key_material):
            raise ValueError("passphrase should accompany private key material")
        conninfo: dict[str, Any] = {"hostname": host, "port": self.port, "username": self.username,
                                    "allow_agent": False, "look_for_keys": False,
                                    "timeout": self.ssh_connect_timeout}
        if self.password:
            conninfo["password"] = self.password
        if self.key_files:
            conninfo["key_filename"] = self.key_files
            if self._is_key_file_needs_passphrase(self.key_files) and not self.passphrase:
                raise paramiko.ssh_exception.PasswordRequiredException(
                    f"Private key file {self.key_files} is passphrase protected. Supply a passphrase.")
            if self.passphrase:
                conninfo["password"] = self.passphrase
        if self.key_material:
            conninfo["pkey"] = self._get_pkey_object(key_material=self.key_material, passphrase=self.passphrase)
        if not self.password and not (self.key_files or self.key_material):
            conninfo["allow_agent"] = True  # StackStorm would use [system_user] ssh_key_file here
            conninfo["look_for_keys"] = True
        self.logger.debug("Connecting to server", extra={"_hostname": host, "_port": self.port,
                                                         "_username": self.username,
                                                         "_timeout": self.ssh_connect_timeout})
        self.socket = socket
        if socket:
            conninfo["sock"] = socket
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # nosec: as StackStorm (no host keys)
        try:
            client.connect(**conninfo)
        except SSHException as exc:
            if conninfo.get("password"):
                conninfo["password"] = "<redacted>"
            conninfo.pop("pkey", None)
            raise SSHException(f"Error connecting to host {host} with connection parameters {conninfo}."
                               f"Paramiko error: {exc}.") from exc
        return client

    def __repr__(self) -> str:
        return (f"<ParamikoSSHClient hostname={self.hostname},port={self.port},username={self.username},"
                f"id={id(self)}>")
