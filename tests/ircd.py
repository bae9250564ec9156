"""A real IRC server of the tests' own: ngircd (Debian package `ngircd`) on a free loopback port.

`running_ngircd()` writes a config into a temporary folder and runs `ngircd -n -f <config>` in the
foreground, so the test owns the process: `stop()` and `start()` take it down and bring it back on
the same port (the adapter's reconnect test), and the context manager always kills it. The system
service is never touched. DNS and ident lookups are off, so registration is immediate.

Also here: `Person`, a small raw asyncio IRC client that plays the human in the channel, keeping
every line it receives as bytes so tests can check line lengths and UTF-8 exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port, server_missing

NGIRCD = shutil.which("ngircd") or "/usr/sbin/ngircd"


class NgircdUnavailable(RuntimeError):
    """ngircd is not installed or would not start."""


@dataclass
class IrcServer:
    port: int
    folder: Path
    password: str | None = None
    tls_port: int | None = None
    cert: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.folder / "ngircd.conf"

    @property
    def log(self) -> Path:
        return self.folder / "ngircd.log"

    def start(self) -> None:
        """Start ngircd and wait until it accepts connections on its port(s)."""
        if self.process is not None and self.process.poll() is None:
            return
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen([NGIRCD, "-n", "-f", str(self.config)], stdout=sink, stderr=sink,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        for port in (self.port, self.tls_port):
            while port is not None:
                if self.process.poll() is not None:
                    raise NgircdUnavailable(f"ngircd exited with {self.process.returncode}: "
                                            f"{self.log.read_text(errors='replace')[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise NgircdUnavailable(f"ngircd did not listen on {port}") from None
                    time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (SIGTERM, as a restart would), waiting until the process is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _write_config(server: IrcServer) -> None:
    root = os.geteuid() == 0
    lines = [
        "[Global]",
        "    Name = irc.test.local",
        "    Info = squall test ircd",
        "    AdminInfo1 = squall tests",
        "    AdminInfo2 = loopback",
        "    AdminEMail = tests@localhost",
        "    Listen = 127.0.0.1",
        f"    Ports = {server.port}",
        '    MotdPhrase = "test server"',
        f"    PidFile = {server.folder / 'ngircd.pid'}",
        *(["    ServerUID = nobody", "    ServerGID = nogroup"] if root else []),
        *([f"    Password = {server.password}"] if server.password else []),
        "[Limits]",
        "    MaxConnectionsIP = 0",
        "    MaxJoins = 0",
        "    MaxNickLength = 30",
        "    PingTimeout = 120",
        "    PongTimeout = 20",
        "[Options]",
        "    PAM = no",
        "    DNS = no",
        "    Ident = no",
    ]
    if server.tls_port is not None and server.cert is not None:
        lines += ["[SSL]", f"    CertFile = {server.cert}", f"    KeyFile = {server.folder / 'key.pem'}",
                  f"    Ports = {server.tls_port}"]
    server.config.write_text("\n".join(lines) + "\n")


def _make_cert(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 and localhost (a throwaway, readable by `nobody`)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o644)
    return cert_path


@contextlib.contextmanager
def running_ngircd(password: str | None = None, tls: bool = False) -> Iterator[IrcServer]:
    """A started ngircd; raises NgircdUnavailable when the binary is missing or refuses to run."""
    if not os.access(NGIRCD, os.X_OK):
        raise NgircdUnavailable(f"{NGIRCD} is missing (Debian package 'ngircd'; .ci/run installs it)")
    folder = Path(tempfile.mkdtemp(prefix="squall-ircd-"))
    folder.chmod(0o777)  # ngircd drops to `nobody` and writes its pid file here
    server = IrcServer(port=free_port(), folder=folder, password=password)
    try:
        if tls:
            server.cert = _make_cert(folder)
            server.tls_port = free_port()
        _write_config(server)
        check = subprocess.run([NGIRCD, "-t", "-f", str(server.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise NgircdUnavailable(f"ngircd rejects the test configuration: {check.stdout[-1000:]}"
                                    f"{check.stderr[-1000:]}")
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ircd() -> Iterator[IrcServer]:
    """A fresh ngircd for one test (it starts in a few milliseconds)."""
    try:
        with running_ngircd() as server:
            yield server
    except NgircdUnavailable as exc:
        server_missing(str(exc))


# -- the person on the other side ----------------------------------------------------------------

class Person:
    """A raw IRC client: registers, joins, talks, and records every line it receives (as bytes)."""

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.lines: list[bytes] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def connect(self, port: int, password: str | None = None) -> Person:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._task = asyncio.create_task(self._read(), name=f"person-{self.nick}")
        if password:
            await self.send(f"PASS {password}")
        await self.send(f"NICK {self.nick}")
        await self.send(f"USER {self.nick} 0 * :{self.nick}")
        await self.wait_for(lambda words, _: words[1] == "001")
        return self

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            raw = await self._reader.readline()
            if not raw:
                break
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"PING"):
                await self.send("PONG" + line[4:].decode(errors="replace"))
                continue
            async with self._changed:
                self.lines.append(raw)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def send(self, line: str) -> None:
        assert self._writer is not None
        self._writer.write(line.encode() + b"\r\n")
        await self._writer.drain()

    async def say(self, target: str, text: str) -> None:
        await self.send(f"PRIVMSG {target} :{text}")

    async def join(self, channel: str, *, wait_for: str | None = None) -> None:
        """Join `channel`; with `wait_for`, also wait until that nick is in it."""
        mark = len(self.lines)
        await self.send(f"JOIN {channel}")
        await self.wait_for(lambda words, _: words[1] == "366", start=mark)
        if wait_for is not None:
            await self.wait_member(channel, wait_for)

    async def wait_member(self, channel: str, nick: str, timeout: float = 20) -> None:
        """Wait until `nick` is in `channel` (asking NAMES again each second)."""
        deadline = time.monotonic() + timeout
        while True:
            mark = len(self.lines)
            await self.send(f"NAMES {channel}")
            names = await self.wait_for(lambda words, _: words[1] in ("353", "366"), start=mark)
            listed = names.decode(errors="replace").split(" :", 1)[-1].split()
            if nick in (n.lstrip("@+") for n in listed):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{nick} never joined {channel}")
            await asyncio.sleep(1)

    def privmsgs(self, sender: str, target: str | None = None, start: int = 0) -> list[str]:
        """Texts of PRIVMSGs from `sender` (to `target`), decoded strictly: bad UTF-8 fails the test."""
        found = []
        for raw in self.lines[start:]:
            words = raw.split(b" ", 3)
            if (len(words) == 4 and words[1] == b"PRIVMSG" and words[0][1:].split(b"!")[0] == sender.encode()
                    and (target is None or words[2] == target.encode())):
                found.append(words[3].rstrip(b"\r\n")[1:].decode("utf-8"))
        return found

    async def wait_for(self, predicate: Callable[[list[str], bytes], bool], timeout: float = 20,
                       start: int = 0) -> bytes:
        """The first received line (from index `start`) for which `predicate(words, raw)` holds."""
        def find() -> bytes | None:
            for raw in self.lines[start:]:
                words = raw.decode(errors="replace").rstrip("\r\n").split(" ")
                if len(words) > 1 and predicate(words, raw):
                    return raw
            return None

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None or self._task.done()), timeout)
        found = find()
        assert found is not None, f"{self.nick} was disconnected; last lines: {self.lines[-5:]}"
        return found

    async def wait_privmsgs(self, sender: str, count: int, target: str | None = None, start: int = 0,
                            timeout: float = 20) -> list[str]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(
                lambda: len(self.privmsgs(sender, target, start)) >= count), timeout)
        return self.privmsgs(sender, target, start)

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self.send("QUIT :bye")
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
