"""`squall alias list | match` (run in this process), against a pack written the StackStorm way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import write
from tests.test_cli import Done, like_a_process

Cli = Callable[..., Done]


@pytest.fixture
def cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`squall ARGS` with `home`'s config, run in this process (`like_a_process`)."""
    return like_a_process(home, monkeypatch)


@pytest.fixture
def alias_pack(home: Path) -> Path:
    pack = home / "packs" / "fleet"
    write(pack / "pack.yaml", "ref: fleet\nname: fleet\nversion: 0.1.0\n")
    write(pack / "actions" / "launch.yaml", """
        name: launch
        runner_type: noop
        parameters:
          app: {type: string}
          env: {type: string}
          replicas: {type: integer}
          url: {type: string}
    """)
    write(pack / "aliases" / "launch.yaml", """
        name: launch
        action_ref: fleet.launch
        description: Launch an app somewhere.
        formats:
          - "launch {{app}} to {{env=staging}}"
          - display: "launch <app> with <n> replicas"
            representation: ["launch {{app}} with {{replicas:d}} replicas"]
    """)
    write(pack / "aliases" / "fetch.yaml", """
        name: fetch
        action_ref: fleet.launch
        formats: ["fleetfetch {{url}}"]
    """)
    write(pack / "aliases" / "twins.yaml", """
        name: twin_a
        action_ref: fleet.launch
        formats: ["twin {{app}}"]
    """)
    write(pack / "aliases" / "twins2.yaml", """
        name: twin_b
        action_ref: fleet.launch
        formats: ["twin {{env}}"]
    """)
    write(pack / "aliases" / "dupes.yaml", r"""
        name: dupes
        action_ref: fleet.launch
        formats:
          - display: "dupe of <app>"
            representation: ['(?:\b|^)dupe of (?P<app>[A-Z]+-[0-9]+)(?:\b|$)']
            match_multiple: true
    """)
    write(pack / "aliases" / "broken.yaml", """
        name: broken
        action_ref: fleet.lunch
        formats: ["broken"]
    """)
    return pack


def test_alias_list(home: Path, cli: Cli, alias_pack: Path) -> None:
    done = cli("alias", "list", "--json")
    assert done.returncode == 0, done.stderr
    listed = {a["ref"]: a for a in json.loads(done.stdout) if a["pack"] == "fleet"}
    assert sorted(listed) == ["fleet.dupes", "fleet.fetch", "fleet.launch", "fleet.twin_a", "fleet.twin_b"]
    launch = listed["fleet.launch"]
    assert launch["action_ref"] == "fleet.launch"
    assert launch["description"] == "Launch an app somewhere."
    assert launch["enabled"] is True
    assert launch["formats"][1] == {"display": "launch <app> with <n> replicas",
                                    "representation": ["launch {{app}} with {{replicas:d}} replicas"],
                                    "match_multiple": False}
    # the bad alias is reported on stderr with file, line and the nearest action
    assert "aliases/broken.yaml:2" in done.stderr
    assert "fleet.lunch" in done.stderr and "fleet.launch" in done.stderr

    table = cli("alias", "list")
    assert table.returncode == 0
    assert "fleet.launch" in table.stdout and "broken.yaml" in table.stderr


def test_alias_match_json(home: Path, cli: Cli, alias_pack: Path) -> None:
    done = cli("alias", "match", "launch web to", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"alias": "fleet.launch", "format": "launch {{app}} to {{env=staging}}",
                                       "parameters": {"app": "web", "env": "staging"}}

    done = cli("alias", "match", "launch “billing api” with 3 replicas env=prod", "--json")
    assert json.loads(done.stdout) == {"alias": "fleet.launch", "format": "launch {{app}} with {{replicas:d}} replicas",
                                       "parameters": {"app": "billing api", "replicas": 3, "env": "prod"}}

    done = cli("alias", "match", "fleetfetch https://h/api?some=url&x=y", "--json")
    assert json.loads(done.stdout)["parameters"] == {"url": "https://h/api?some=url&x=y"}


def test_alias_match_readable_line(home: Path, cli: Cli, alias_pack: Path) -> None:
    done = cli("alias", "match", "launch web to prod")
    assert done.returncode == 0
    assert done.stdout.strip() == 'fleet.launch  format: launch {{app}} to {{env=staging}}  parameters: app="web" ' \
                                  'env="prod"'


def test_alias_match_multiple(home: Path, cli: Cli, alias_pack: Path) -> None:
    done = cli("alias", "match", "closing: dupe of AB-1, dupe of CD-2", "--json")
    assert done.returncode == 0, done.stderr
    assert [d["parameters"] for d in json.loads(done.stdout)] == [{"app": "AB-1"}, {"app": "CD-2"}]


def test_alias_match_too_complex_says_so(home: Path, cli: Cli, alias_pack: Path) -> None:
    write(alias_pack / "aliases" / "scale.yaml", """
        name: scale
        action_ref: fleet.launch
        formats: ["scale {{app}} {{env}} to {{replicas:d}}"]
    """)
    done = cli("alias", "match", "scale " + "to " * 13_000 + "5 5", "--json")
    assert done.returncode == 1
    assert "too long or too repetitive" in done.stderr and "no alias matches" not in done.stderr
    assert json.loads(done.stdout) == {"error": "That message is too long or too repetitive to match against the "
                                                "aliases; shorten it.", "suggestions": []}


def test_alias_no_match_suggests(home: Path, cli: Cli, alias_pack: Path) -> None:
    done = cli("alias", "match", "lanch web to prod")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "did you mean" in done.stderr
    assert "launch {{app}} to {{env=staging}}" in done.stderr

    done = cli("alias", "match", "launch web", "--json")  # right word, missing ` to`
    assert done.returncode == 1
    assert "launch <app> with <n> replicas" in json.loads(done.stdout)["suggestions"]


def test_alias_ambiguity_lists_candidates(home: Path, cli: Cli, alias_pack: Path) -> None:
    done = cli("alias", "match", "twin web")
    assert done.returncode == 1
    assert "fleet.twin_a" in done.stderr and "fleet.twin_b" in done.stderr
    done = cli("alias", "match", "twin web", "--json")
    assert done.returncode == 1
    assert sorted(c["alias"] for c in json.loads(done.stdout)["candidates"]) == ["fleet.twin_a", "fleet.twin_b"]
