"""`squall execution list` keeps every execution id on one line, to be copied: an action ref of about 30
characters folded the ids of an 80-column table onto three lines (`0662021d` / `0cc9ec33` / `a260b0dd`). The
action folds instead, and narrower than the table can be, each execution gets lines of its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from bot.cli.executions import _execution_table
from tests.conftest import write
from tests.test_cli import _listed_at, like_a_process


def _cells(listing: str, column: int) -> str:
    """A table's `column` read down, its cells joined: what a folded cell says whole."""
    return "".join(line.split("│")[column].strip() for line in listing.splitlines() if line.startswith("│"))


def test_ids_stay_on_one_line_at_80_columns(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = home / "packs" / "ops_automation"
    write(pack / "pack.yaml", "ref: ops_automation\nname: ops_automation\nversion: 0.1.0\n")
    write(pack / "actions" / "restart_gateway.yaml", """
        name: restart_gateway
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: "true", immutable: true}
    """)
    squall = like_a_process(home, monkeypatch)
    ran = [json.loads(squall("run", ref, "--json").stdout) for ref in ("ops_automation.restart_gateway",
                                                                      "core.noop")]
    listing = _listed_at(home, 80, "execution", "list")
    assert "│" in listing, listing  # a table, not lines of their own
    for record in ran:
        assert re.search(rf"^│ {record['id']} │", listing, re.MULTILINE), listing
    assert "ops_automation.restart_gateway" in _cells(listing, 2), listing  # folded, whole


@pytest.mark.parametrize("width", range(40, 141, 4))
def test_any_width_keeps_ids_whole_on_one_line(width: int) -> None:
    """At every width a table shows each id whole on one line and fits; each action is whole, folded at
    most; narrower than that, no table (`execution list` prints lines of their own)."""
    actions = ["core.noop", "ops_automation.restart_gateway", "a_pack_with_a_long_name.an_action_with_a_long_name"]
    rows = [(f"0662021d0cc9ec33a260b0d{n}", action, "succeeded", "2026-12-07 02:37:57", "0.115s")
            for n, action in enumerate(actions)]
    table = _execution_table(rows, width)
    if table is None:
        assert width < 24 + 9 + 10 + 7 + 8 + 16, width  # an action folded to 8 would have fitted
        return
    console = Console(width=width, force_terminal=False, color_system=None, legacy_windows=False)
    with console.capture() as captured:
        console.print(table)
    listing = captured.get()
    assert all(len(line) <= width for line in listing.splitlines()), listing
    for ident, action, *_ in rows:
        assert re.search(rf"^│ {ident} │", listing, re.MULTILINE), listing
        assert action in _cells(listing, 2), listing
