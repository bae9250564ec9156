"""The terminal chat (`squall chat`, and serve's console): `quit` and `exit` end it where no alias claims
them, and replies are written as they read in a terminal.

Before, `quit` and `exit` were answered "I don't know `quit`", a fenced block's ``` lines were printed
as they were, and `help`'s header of the `squall` pack read `squall: squall:`. serve's console is tested at
a terminal in tests/test_console_tty.py.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from adapters.base import Message, Reply
from adapters.console import ConsoleAdapter
from adapters.markup import code_block
from tests.conftest import write
from tests.test_cli import SQUALL


def chat(home: Path, typed: str) -> str:
    """What `squall chat` wrote for the lines `typed` on its stdin; it must end by itself."""
    done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "chat", "--user", "ops"],
                          input=typed, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("word", ["quit", "!exit", "Exit"])
def test_quit_or_exit_ends_squall_chat_as_the_end_of_input(home: Path, word: str) -> None:
    out = chat(home, f"!run echo ran before\n{word}\n!ping\n")
    assert "I don't know" not in out
    assert "squall:     ran before\n" in out  # what it started still finishes and is shown, as at the end of input
    assert "pong" not in out  # nothing after it is read


def test_quit_addressed_amid_a_forms_question_ends_the_chat(home: Path) -> None:
    """`!quit` addressed explicitly is the command, not the answer, as `!help` is amid a question."""
    out = chat(home, "!run\n!quit\n!ping\n")
    assert "cmd (Arbitrary Linux command" in out  # the form's question waited
    assert "Running core.local" not in out and "pong" not in out


def test_an_alias_named_quit_wins_over_ending_the_chat(home: Path) -> None:
    pack = home / "packs" / "term"
    write(pack / "pack.yaml", "ref: term\nname: term\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "bye.yaml", """
        name: bye
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: "echo see you later", immutable: true}
    """)
    write(pack / "aliases" / "quit.yaml", """
        name: quit
        action_ref: term.bye
        formats: ["quit"]
        result:
          format: "{{ execution.result.stdout }}"
    """)
    out = chat(home, "quit\nexit\n!ping\n")
    assert "see you later" in out
    assert "pong" not in out  # `exit`, which no alias claims, still ended it


def test_help_reads_the_squall_packs_header_once(home: Path) -> None:
    out = chat(home, "help\n")
    assert "squall: squall:" not in out
    assert "        squall:\nsquall:   !echo {{message}}" in out  # under the tag's width, as the other packs' headers


async def test_a_fenced_block_is_shown_indented_without_its_fence_lines() -> None:
    out = io.StringIO()
    console = ConsoleAdapter("ops", stdin=io.StringIO(""), stdout=out)
    block = code_block("one\n```\n\ntwo")
    text = f"✔ core.local succeeded (e1)\n{block}\nI don't know `quit`. Try `!help`."
    await console.send(Reply(adapter="console", channel="console", text=text))
    await console.send(Reply(adapter="console", channel="console", text="```json\n{\"a\": 1}\n```"))
    assert out.getvalue() == ("squall: ✔ core.local succeeded (e1)\n"
                              "squall:     one\n"
                              "squall:     ```\n"  # the person's own fence, shown as it was (no zero-width spaces)
                              "squall: \n"
                              "squall:     two\n"
                              "squall: I don't know `quit`. Try `!help`.\n"  # inline code as it was
                              'squall:     {"a": 1}\n')


async def test_leave_under_serve_stops_reading_and_says_squall_keeps_running() -> None:
    """What the dispatcher calls for `quit` (the console alone has `leave`): the lines after are not read."""
    out = io.StringIO()
    console = ConsoleAdapter("ops", stdin=io.StringIO("quit\n!ping\n"), stdout=out, serve=True)
    seen: list[str] = []

    async def on_message(message: Message) -> None:
        seen.append(message.text)
        console.leave()

    await console.start(on_message)
    await console.finished.wait()
    assert seen == ["quit"]
    assert out.getvalue() == "The console chat stopped; Squall keeps running (SIGTERM stops it)\n"
