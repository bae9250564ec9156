"""Control characters from packs and keys reach no terminal raw: a listing writes them as escapes (an ESC
sequence in a key's value or a pack's description cleared the screen or retitled the terminal of whoever
listed it), `--json` stays exact JSON, and a script reading `squall key get` gets the value as before."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import like_a_process

SQUALL = Path(sys.executable).parent / "squall"
HOSTILE = "hello\x1b[2J\x1b]0;owned\x07\rFAKE"


def test_a_table_cell_shows_control_characters_as_escapes_and_keeps_its_lines() -> None:
    """`add_row`: control characters written as `engine.logs.printable` writes them, rich markup still shown as
    text, and a newline kept, for the cells meant to hold lines (`alias list`'s formats)."""
    from rich.console import Console

    from bot.cli.common import add_row, new_table

    table = new_table("a", "b")
    add_row(table, HOSTILE + " [bold]x[/bold]", "first\nsecond")
    console = Console(width=200, force_terminal=True, color_system=None, legacy_windows=False)
    with console.capture() as captured:
        console.print(table)
    shown = captured.get()
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert "hello\\x1b[2J\\x1b]0;owned\\x07\\rFAKE [bold]x[/bold]" in shown
    assert any(line.rstrip(" │").endswith("first") for line in shown.splitlines())
    assert any("second" in line and "first" not in line for line in shown.splitlines())


def test_key_list_escapes_a_value_json_keeps_it_exact(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    assert squall("key", "set", "banner", HOSTILE).returncode == 0
    listed = squall("key", "list")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout and "\r" not in listed.stdout
    assert "hello\\x1b[2J" in listed.stdout
    assert json.loads(squall("key", "list", "--json").stdout)[0]["value"] == HOSTILE


def test_key_get_escapes_for_a_terminal_and_gives_a_script_the_value(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall key get` feeds scripts (`$(squall key get x)`), which get the value as before, ESC sequences
    and lines whole; a person at a terminal gets its control characters as escapes."""
    squall = like_a_process(home, monkeypatch)
    value = HOSTILE + "\nline two"
    assert squall("key", "set", "banner", value).returncode == 0
    piped = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "key", "get", "banner"], cwd=home,
                           capture_output=True, timeout=60)  # bytes: text mode would read the CR as a newline
    assert piped.stdout.decode().startswith("hello\x1b[2J\x1b]0;owned")  # as it was (rich drops a BEL and a CR)
    assert piped.stdout.decode().endswith("FAKE\nline two\n")
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "key", "get", "banner"], cwd=home,
                              stdout=follower, stderr=subprocess.PIPE, timeout=60)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0, done.stderr
    text = shown.decode()
    assert "\x1b" not in text and "\x07" not in text
    assert "hello\\x1b[2J\\x1b]0;owned\\x07\\rFAKE" in text and "line two" in text


def test_pack_list_escapes_a_packs_description(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack someone else wrote (a git URL) describes itself with ESC sequences: `squall pack list` shows them
    as escapes, `--json` exactly."""
    squall = like_a_process(home, monkeypatch)
    pack = home / "packs" / "evil"
    pack.mkdir(parents=True)
    (pack / "pack.yaml").write_text(json.dumps({"ref": "evil", "name": "evil", "version": "0.1.0", "author": "x",
                                                "description": "ok\x1b[2J\x1b]0;owned\x07FAKE"}))
    listed = squall("pack", "list")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert "ok\\x1b[2J" in listed.stdout
    packs = json.loads(squall("pack", "list", "--json").stdout)["packs"]
    assert [p["description"] for p in packs if p["ref"] == "evil"] == ["ok\x1b[2J\x1b]0;owned\x07FAKE"]


def test_action_get_escapes_an_actions_description(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall action get` prints the action's description on its title line: its ESC sequences as escapes."""
    squall = like_a_process(home, monkeypatch)
    pack = home / "packs" / "evil"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(json.dumps({"ref": "evil", "name": "evil", "version": "0.1.0", "author": "x",
                                                "description": "x"}))
    (pack / "actions" / "act.yaml").write_text(json.dumps({"name": "act", "runner_type": "noop",
                                                           "description": "ok\x1b[2J\x1b]0;owned\x07FAKE"}))
    shown = squall("action", "get", "evil.act")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout and "ok\\x1b[2J" in shown.stdout
