"""`squall serve`'s console chat at a real terminal (a pseudo-terminal): in the background of its terminal it
leaves the terminal alone, and the end of input says that Squall keeps running.

Before, `squall serve &` read the terminal from the background: SIGTTIN stopped the whole process before
the API listened (`Stopped (tty input)`), and SIGTERM did nothing until `fg`. Ctrl-D stopped the chat
without a word while the service went on, and nothing said how to stop it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from tests.conftest import free_port, wait_until_answering

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminal job control")

SQUALL = Path(sys.executable).parent / "squall"
WARNING = "the console chat is off: Squall runs in the background of its terminal"
CLOSED = "Input closed: the console chat stopped; Squall keeps running (Ctrl-C stops it)"
QUIT = "The console chat stopped; Squall keeps running (Ctrl-C stops it)"

# A shell's job control, as small as it gets: it leads a new session whose terminal is the pty on its
# stdin, starts `squall serve` as a job (a process group of its own), in the background (`&`) unless argv[3]
# is `fg`, writes its pid to argv[2] and obeys the lines on fd argv[1]: `fg` (bring the job to the foreground) and `bg`
# (Ctrl-Z then `bg`: stop the job, take the terminal back, continue the job in the background).
SHELL = r"""
import fcntl, os, signal, subprocess, sys, termios, threading
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
def foreground():
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())
job = subprocess.Popen(sys.argv[4:], preexec_fn=foreground if sys.argv[3] == "fg" else None, process_group=0)
with open(sys.argv[2] + ".new", "w") as file:
    file.write(str(job.pid))
os.rename(sys.argv[2] + ".new", sys.argv[2])
def obey():
    for command in os.fdopen(int(sys.argv[1])):
        if command.strip() == "fg":
            os.tcsetpgrp(0, job.pid)
            os.killpg(job.pid, signal.SIGCONT)
        elif command.strip() == "bg":
            os.killpg(job.pid, signal.SIGTSTP)
            os.waitpid(job.pid, os.WUNTRACED)
            os.tcsetpgrp(0, os.getpgrp())
            os.killpg(job.pid, signal.SIGCONT)
threading.Thread(target=obey, daemon=True).start()
sys.exit(job.wait())
"""


class Terminal:
    """A pty whose output is collected on a thread (a full pty would block the writers)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.output = b""
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # every writer gone: EIO
                return
            if not data:
                return
            self.output += data

    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())


def until(predicate: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def state(pid: int) -> str:
    """The process state letter of /proc/<pid>/stat: `T` is stopped (SIGTTIN, SIGTSTP)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@pytest.fixture
def job(home: Path, request: pytest.FixtureRequest
        ) -> Iterator[tuple[Terminal, subprocess.Popen[bytes], Callable[[str], None], int, str]]:
    """`squall serve` with the console on, started in the background of a pty (`squall serve &`), or in
    its foreground when the test is parametrized `fg`: its terminal, the shell, a way to give the shell a
    job-control command, the serve's pid, its API."""
    mode = getattr(request, "param", "bg")
    port = free_port()
    config = home / "config.yml"
    text = config.read_text()
    config.write_text("\n".join(line if not line.strip().startswith("port:") else f"  port: {port}"
                                for line in text.splitlines())
                      + "\nadapters:\n  console: {enabled: true, user: ops}\n")
    terminal = Terminal()
    commands_read, commands = os.pipe()
    pid_file = home / "serve.pid"
    shell = subprocess.Popen([sys.executable, "-c", SHELL, str(commands_read), str(pid_file), mode,
                              str(SQUALL), "-c", str(config), "serve"],
                             cwd=home, stdin=terminal.slave, stdout=terminal.slave, stderr=terminal.slave,
                             start_new_session=True, pass_fds=(commands_read,))
    os.close(commands_read)
    os.close(terminal.slave)
    serve_pid = 0
    try:
        until(pid_file.exists, "the shell to start squall serve", 30)
        serve_pid = int(pid_file.read_text())

        def command(line: str) -> None:
            os.write(commands, f"{line}\n".encode())

        yield terminal, shell, command, serve_pid, f"http://127.0.0.1:{port}"
    finally:
        os.close(commands)
        if shell.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(serve_pid, signal.SIGCONT)
                os.kill(serve_pid, signal.SIGKILL)
            shell.wait(timeout=30)
        os.close(terminal.master)


def test_serve_started_in_the_background_serves_and_leaves_the_terminal_alone(job) -> None:
    terminal, shell, _, serve_pid, base = job
    wait_until_answering(base, shell)  # before, stopped by SIGTTIN before the API listened
    until(lambda: WARNING in terminal.text(), "the console's warning")
    assert "squall chat" in terminal.text() and "`fg`" in terminal.text()
    assert state(serve_pid) != "T"
    os.kill(serve_pid, signal.SIGTERM)  # before, nothing happened until `fg`
    assert shell.wait(timeout=60) == 0
    assert terminal.text().count(WARNING) == 1
    assert "Ctrl-C stops Squall" not in terminal.text()  # Ctrl-C does not reach a background job


def test_serve_sent_to_the_background_later_keeps_running_and_chats_again_in_the_foreground(job) -> None:
    """Ctrl-Z then `bg` while the console waits for a line: the read it had started must not stop the
    process when it goes on in the background; `fg` brings the chat back."""
    terminal, shell, command, serve_pid, base = job
    wait_until_answering(base, shell)
    until(lambda: WARNING in terminal.text(), "the console's warning")
    command("fg")
    until(lambda: "ops> " in terminal.text(), "the prompt in the foreground")
    terminal.type("!ping\n")
    until(lambda: "pong" in terminal.text(), "the console to answer !ping in the foreground")
    until(lambda: terminal.text().count("ops> ") == 2, "the console to wait for the next line")
    command("bg")
    until(lambda: terminal.text().count(WARNING) == 2, "the warning at the move to the background")
    wait_until_answering(base, shell)
    assert state(serve_pid) != "T"
    command("fg")
    before = terminal.text().count("pong")
    terminal.type("!ping\n")
    until(lambda: terminal.text().count("pong") > before, "the console to answer again after fg")
    os.kill(serve_pid, signal.SIGTERM)
    assert shell.wait(timeout=60) == 0


@pytest.mark.parametrize("job", ["fg"], indirect=True)
def test_end_of_input_under_serve_says_squall_keeps_running(job) -> None:
    """`make run`, then Ctrl-D: the chat stops, and says so and how to stop Squall, which goes on."""
    terminal, shell, _, serve_pid, base = job
    wait_until_answering(base, shell)
    until(lambda: "Console chat as ops: type !help; Ctrl-C stops Squall." in terminal.text(), "the start line")
    until(lambda: "ops> " in terminal.text(), "the prompt")
    terminal.type("!ping\n")
    until(lambda: "pong" in terminal.text(), "the console to answer !ping")
    until(lambda: terminal.text().count("ops> ") == 2, "the console to wait for the next line")
    terminal.type("\x04")  # Ctrl-D at the start of a line: the end of input
    until(lambda: CLOSED in terminal.text(), "the line saying the console stopped")
    wait_until_answering(base, shell)  # the service goes on
    assert terminal.text().count(CLOSED) == 1
    os.kill(serve_pid, signal.SIGTERM)
    assert shell.wait(timeout=60) == 0


def test_a_line_typed_in_the_background_is_read_after_fg_under_one_prompt(job) -> None:
    """A line typed while serve ran in the background waits in the terminal (its echo shown already); `fg`
    reads it at once. Before, a prompt was written just before that read and another after it: `ops> ops> `."""
    terminal, shell, command, serve_pid, base = job
    wait_until_answering(base, shell)
    until(lambda: WARNING in terminal.text(), "the console's warning")
    terminal.type("!ping\n")
    command("fg")
    until(lambda: "pong" in terminal.text(), "the console to answer the line typed ahead")
    assert terminal.text().count("ops> ") == 1  # written once the line was handled, for the next one
    os.kill(serve_pid, signal.SIGTERM)
    assert shell.wait(timeout=60) == 0


@pytest.mark.parametrize("job", ["fg"], indirect=True)
@pytest.mark.parametrize("word", ["quit", "!exit"])
def test_quit_under_serve_stops_the_console_and_says_squall_keeps_running(job, word: str) -> None:
    """`make run`, then `quit`: as Ctrl-D, the chat stops and says how to stop Squall, which goes on."""
    terminal, shell, _, serve_pid, base = job
    wait_until_answering(base, shell)
    until(lambda: "ops> " in terminal.text(), "the prompt")
    terminal.type(f"{word}\n")
    until(lambda: QUIT in terminal.text(), "the line saying the console stopped")
    wait_until_answering(base, shell)  # the service goes on
    assert "I don't know" not in terminal.text()
    assert terminal.text().count(QUIT) == 1 and terminal.text().count("ops> ") == 1  # no more lines read
    os.kill(serve_pid, signal.SIGTERM)
    assert shell.wait(timeout=60) == 0


# -- the foreground check itself, on a pty whose foreground group is another one -------------------

def test_in_background_follows_the_terminals_foreground_group() -> None:
    """A child in a session of its own owns the pty; its foreground group is itself, then a group of a
    grandchild: the check answers as a read would behave (no read is tried, so nothing can stop)."""
    script = r"""
import fcntl, os, signal, subprocess, sys, termios
from adapters.console import ConsoleAdapter
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
console = ConsoleAdapter("ops", stdin=sys.stdin, stdout=sys.stderr, serve=True)
first = console.in_background()
other = subprocess.Popen(["sleep", "30"], process_group=0)
os.tcsetpgrp(0, other.pid)
second = console.in_background()
os.tcsetpgrp(0, os.getpgrp())
third = console.in_background()
other.kill()
print(first, second, third, file=sys.stderr)
"""
    master, slave = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", script], stdin=slave, capture_output=True,
                              start_new_session=True, timeout=60, text=True,
                              cwd=Path(__file__).parent.parent)
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 0, done.stderr
    assert done.stderr.split() == ["False", "True", "False"]


def test_in_background_is_false_off_a_terminal() -> None:
    import io

    assert not ConsoleAdapter("ops", stdin=io.StringIO(""), stdout=io.StringIO(), serve=True).in_background()
    with open(os.devnull) as null:
        assert not ConsoleAdapter("ops", stdin=null, stdout=io.StringIO(), serve=True).in_background()


async def test_end_of_input_under_chat_ends_the_session_without_the_serve_line() -> None:
    """`squall chat`: the end of input ends the session, as before; the serve line is not written."""
    import io

    out = io.StringIO()
    console = ConsoleAdapter("ops", stdin=io.StringIO(""), stdout=out)

    async def on_message(message: object) -> None:
        raise AssertionError("no line was typed")

    await console.start(on_message)
    await console.finished.wait()
    assert out.getvalue() == ""


async def test_end_of_input_under_serve_without_a_terminal_names_sigterm() -> None:
    import io

    out = io.StringIO()
    console = ConsoleAdapter("ops", stdin=io.StringIO("\n"), stdout=out, serve=True)

    async def on_message(message: object) -> None:
        raise AssertionError("only an empty line was typed")

    await console.start(on_message)
    await console.finished.wait()
    assert out.getvalue() == "Input closed: the console chat stopped; Squall keeps running (SIGTERM stops it)\n"
