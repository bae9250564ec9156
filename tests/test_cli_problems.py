"""Pack files that did not load stay visible: every command that loads packs warns about each one,
every time, and `squall pack list` ends with them (issue 15, item 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write
from tests.test_cli import like_a_process

BROKEN = "packs/demo/actions/broken.yaml"


@pytest.fixture
def broken_pack(home: Path) -> Path:
    """A pack with one good action, one action file that is not YAML, and a config missing a
    required value (a problem without a line)."""
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", """
        ref: demo
        name: demo
        description: Demo pack
        version: 0.1.0
        author: tests
    """)
    write(pack / "actions" / "ok.yaml", """
        name: ok
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: "true"}
    """)
    write(pack / "actions" / "broken.yaml", """
        name: broken
        runner_type: local-shell-cmd
        parameters:
          x: {type: string
    """)
    write(pack / "config.schema.yaml", """
        token: {type: string, required: true}
    """)
    write(home / "configs" / "demo.yaml", "region: eu\n")
    return pack


def _warned(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "pack content skipped" in line]


def test_pack_list_ends_with_the_problems_every_time(home: Path, broken_pack: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    for _ in range(2):  # not only on the first command after the change
        listed = squall("pack", "list")
        assert listed.returncode == 0, listed.stderr
        tail = listed.stdout[listed.stdout.index("problems"):].splitlines()
        assert tail[0].startswith("problems")
        assert any(f"{BROKEN}:" in line and "invalid YAML" in line for line in tail[1:])
        assert any("config of pack 'demo'" in line and "token" in line for line in tail[1:])
        assert "demo" in listed.stdout[:listed.stdout.index("problems")]  # the pack itself is listed
        assert _warned(listed.stderr) == []  # shown once, in the listing


def test_pack_list_json_has_the_problems(home: Path, broken_pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    listed = squall("pack", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert "demo" in {p["ref"] for p in document["packs"]}
    problems = {Path(p["file"]).name: p for p in document["problems"]}
    assert set(problems) == {"broken.yaml", "demo.yaml"}
    for problem in problems.values():
        assert set(problem) == {"file", "line", "reason"}
    assert problems["broken.yaml"]["file"] == BROKEN
    assert problems["broken.yaml"]["line"] in (4, 5)
    assert problems["broken.yaml"]["reason"].startswith("invalid YAML")
    assert problems["demo.yaml"]["line"] is None and "token" in problems["demo.yaml"]["reason"]
    assert len(_warned(listed.stderr)) == 2  # stderr warns as for every command


def test_every_command_that_loads_packs_warns(home: Path, broken_pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    for args in (("action", "list"), ("action", "list"), ("action", "get", "demo.ok"), ("alias", "list")):
        done = squall(*args)
        assert done.returncode == 0, done.stderr
        warned = _warned(done.stderr)
        assert len(warned) == 2, (args, done.stderr)
        assert any(f"{BROKEN}:" in line and "invalid YAML" in line for line in warned)
    assert "demo.ok" in squall("action", "list").stdout  # the rest still loads

    # Commands that start Squall warn through its start-up (same text, logged).
    run = squall("run", "demo.ok")
    assert run.returncode == 0, run.stderr
    assert any(f"{BROKEN}:" in line for line in _warned(run.stderr))

    # Reading a key loads no packs, so it has nothing to warn about.
    assert squall("key", "set", "k", "v").returncode == 0
    got = squall("key", "get", "k")
    assert got.returncode == 0 and got.stdout == "v\n"
    assert _warned(got.stderr) == []


def test_pack_list_shows_alias_rule_and_sensor_files_that_do_not_load(home: Path, broken_pack: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall serve` only logged these: the listing showed the broken action, not a bad alias format, a
    rule file that is no mapping, nor a sensor whose entry point is missing."""
    squall = like_a_process(home, monkeypatch)
    write(broken_pack / "aliases" / "bad.yaml", """
        name: bad
        formats: ["run it"]
    """)  # no action_ref
    write(broken_pack / "rules" / "bad.yaml", "- not\n- a mapping\n")
    write(broken_pack / "sensors" / "bad.yaml", "class_name: Watcher\nentry_point: missing.py\n")
    listed = squall("pack", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    files = {Path(p["file"]).parent.name + "/" + Path(p["file"]).name for p in json.loads(listed.stdout)["problems"]}
    assert {"aliases/bad.yaml", "rules/bad.yaml", "sensors/bad.yaml", "actions/broken.yaml"} <= files
    table = squall("pack", "list")
    tail = table.stdout[table.stdout.index("problems"):]
    assert "aliases/bad.yaml" in tail and "rules/bad.yaml" in tail and "sensors/bad.yaml" in tail
    assert len(_warned(listed.stderr)) == len(files)  # --json warns on stderr for each, as before
