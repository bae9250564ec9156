"""`squall pack list` shows a pack's description on one short line, whatever its length: the table printed
it whole, and a 2 MB description took 16 s and 8.8 MB of wrapped table (20 MB: over 10 minutes).
`--json` keeps the whole value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.forms import short
from tests.test_cli import like_a_process

DESCRIPTION_SIZE = 2_000_000


def test_pack_list_cuts_a_huge_description_and_json_keeps_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Words and newlines, so that the table would wrap it over many lines if printed whole.
    squall = like_a_process(home, monkeypatch)
    description = ("word " * 9 + "\n") * (DESCRIPTION_SIZE // 50)
    pack = home / "packs" / "big"
    pack.mkdir()
    (pack / "pack.yaml").write_text(json.dumps({"ref": "big", "name": "big", "version": "0.1.0",
                                                "author": "tests", "description": description}))
    listed = squall("pack", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert len(listed.stdout) < 10_000, len(listed.stdout)
    # The description as the CLI cuts text elsewhere: its start, on one line, and an ellipsis saying it was cut
    # (rich may fold the cell onto a few lines in a narrow terminal, so count its words rather than match it).
    shown = short(description)
    assert shown.endswith("…")
    assert "…" in listed.stdout
    assert 0 < listed.stdout.count("word") <= shown.count("word")

    document = json.loads(squall("pack", "list", "--json").stdout)
    assert [p["description"] for p in document["packs"] if p["ref"] == "big"] == [description]


def test_action_and_alias_lists_cut_a_huge_description_and_json_keeps_it(home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`action list` and `alias list` printed their descriptions whole, as `pack list` did."""
    squall = like_a_process(home, monkeypatch)
    description = ("word " * 9 + "\n") * (DESCRIPTION_SIZE // 50)
    pack = home / "packs" / "big"
    (pack / "actions").mkdir(parents=True)
    (pack / "aliases").mkdir()
    (pack / "pack.yaml").write_text(json.dumps({"ref": "big", "name": "big", "version": "0.1.0", "author": "t",
                                                "description": "A pack."}))
    (pack / "actions" / "noop.yaml").write_text(json.dumps({"name": "noop", "runner_type": "noop",
                                                            "description": description}))
    (pack / "aliases" / "noop.yaml").write_text(json.dumps({"name": "noop", "action_ref": "big.noop",
                                                            "formats": ["do nothing"], "description": description}))
    for group in ("action", "alias"):
        listed = squall(group, "list")
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert len(listed.stdout) < 20_000, (group, len(listed.stdout))
        assert "…" in listed.stdout and 0 < listed.stdout.count("word") <= short(description).count("word")
    actions = json.loads(squall("action", "list", "--json").stdout)
    assert [a["description"] for a in actions if a["ref"] == "big.noop"] == [description]
