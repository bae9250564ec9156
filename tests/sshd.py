"""A real OpenSSH server of the tests' own, on loopback, for the remote runners.

`running_sshd()` starts `/usr/sbin/sshd -D -e -f <config>` from a temporary folder: its own host
key, pid file, authorized_keys file and log, listening on one free port on 127.0.0.1 and 127.0.0.2
(two "hosts" for multi-host executions). The system's sshd is never started or touched.

Run as root, it logs in as a dedicated user (`squall-ssh`, created with `useradd -m` if missing)
whose password is set to a fresh random one for each server. Run as anyone else, it can only log
in as that user itself, with keys (`password` is then None).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
#: One user per pytest-xdist worker: each server sets its user's password, which another worker's
#: server must not change under it.
TEST_USER = "squall-ssh" + (f"-{os.environ['PYTEST_XDIST_WORKER']}" if "PYTEST_XDIST_WORKER" in os.environ else "")
ADDRESSES = ("127.0.0.1", "127.0.0.2")


class SSHDUnavailable(RuntimeError):
    """sshd (or a user to log in as) is not available on this machine."""


@dataclass(frozen=True)
class SSHServer:
    port: int
    user: str
    password: str | None
    key_path: Path  # unencrypted ed25519 private key
    key_text: str
    encrypted_key_path: Path  # the same kind of key, protected by `passphrase`
    passphrase: str
    folder: Path  # the server's temporary folder (config, keys, log)
    scratch: Path  # a folder the login user may write to
    log: Path

    @property
    def hosts(self) -> list[str]:
        """`host:port` for each loopback address the server listens on."""
        return [f"{address}:{self.port}" for address in ADDRESSES]

    @property
    def host(self) -> str:
        return self.hosts[0]


def _free_port() -> int:
    """A port free on every address in ADDRESSES."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((ADDRESSES[0], 0))
            port = first.getsockname()[1]
            try:
                for address in ADDRESSES[1:]:
                    with socket.socket() as other:
                        other.bind((address, port))
            except OSError:
                continue
            return port
    raise SSHDUnavailable("no port is free on both 127.0.0.1 and 127.0.0.2")


def _login_user() -> tuple[str, str | None]:
    """The user to log in as and its password (None when it cannot be set)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name, None
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            raise SSHDUnavailable("cannot create the test user: useradd is missing") from None
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", TEST_USER], check=True, capture_output=True)
    password = "pw-" + secrets.token_urlsafe(12)
    subprocess.run(["chpasswd"], input=f"{TEST_USER}:{password}\n", text=True, check=True, capture_output=True)
    return TEST_USER, password


def _keygen(path: Path, passphrase: str = "") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "squall-test", "-f", str(path)],
                   check=True, capture_output=True)


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    pending = list(ADDRESSES)
    while pending:
        if process.poll() is not None:
            raise SSHDUnavailable(f"sshd exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((pending[0], port), timeout=1):
                pending.pop(0)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SSHDUnavailable(f"sshd did not listen on {pending[0]}:{port}: {log.read_text()[-2000:]}") from exc
            time.sleep(0.05)


@contextlib.contextmanager
def running_sshd() -> Iterator[SSHServer]:
    """Start a throwaway sshd and stop it afterwards; raises SSHDUnavailable when it cannot run."""
    if not os.access(SSHD, os.X_OK):
        raise SSHDUnavailable(f"{SSHD} is missing (Debian package 'openssh-server'; .ci/run installs it)")
    if shutil.which("ssh-keygen") is None:
        raise SSHDUnavailable("ssh-keygen is missing (Debian package 'openssh-client')")
    user, password = _login_user()
    folder = Path(tempfile.mkdtemp(prefix="squall-sshd-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        folder.chmod(0o755)  # the login user reads authorized_keys from here
        host_key = folder / "host_key"
        _keygen(host_key)
        key_path, encrypted = folder / "client_key", folder / "client_key_encrypted"
        _keygen(key_path)
        passphrase = "pass-" + secrets.token_urlsafe(8)
        _keygen(encrypted, passphrase)
        authorized = folder / "authorized_keys"
        authorized.write_text("".join((folder / f"{key.name}.pub").read_text() for key in (key_path, encrypted)))
        authorized.chmod(0o644)
        scratch = folder / "scratch"
        scratch.mkdir()
        scratch.chmod(0o1777)
        port = _free_port()
        config = folder / "sshd_config"
        config.write_text("\n".join([
            *(f"ListenAddress {address}:{port}" for address in ADDRESSES),
            f"HostKey {host_key}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {user}",
            "AllowTcpForwarding yes",
            "MaxStartups 200",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            "",
        ]))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation folder
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise SSHDUnavailable(f"sshd rejects the test configuration: {check.stderr.strip()}")
        log = folder / "sshd.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=sink, stderr=sink,
                                       stdin=subprocess.DEVNULL)
        _wait_listening(process, port, log)
        yield SSHServer(
            port=port, user=user, password=password, key_path=key_path, key_text=key_path.read_text(),
            encrypted_key_path=encrypted, passphrase=passphrase, folder=folder, scratch=scratch, log=log,
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)
