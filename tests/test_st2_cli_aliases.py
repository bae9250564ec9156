"""StackStorm's own `st2` CLI (st2client 3.9.0, `conftest.st2_binary`) reading aliases from a live `squall
serve`: `st2 action-alias get` after `list`, beside `match`, on the routes `/actionalias/{ref_or_id}` and
`/actionalias/match` that must not take each other's requests. `test_st2_cli.py` drives the other verbs."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until_answering, write
from tests.test_api import _home
from tests.test_cli import SQUALL
from tests.test_st2_cli import CONFIG_KEY, Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(st2_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`squall serve` with `tests.test_api`'s demo pack, the config key for st2."""
    home = tmp_path_factory.mktemp("st2aliases")
    _home(home)
    port = free_port()
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          host: 127.0.0.1
          port: {port}
          keys: [{CONFIG_KEY}]
        adapters:
          console:
            enabled: false
    """)
    (home / "user").mkdir()
    process = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, process)
        yield Server(home, url, CONFIG_KEY, st2_binary)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_action_alias_get_shows_the_alias_list_shows(server: Server) -> None:
    """`st2 action-alias get demo.greet` said the alias was not found although `list` showed it (the route
    was missing). It shows StackStorm's fields, `metadata_file` relative to the pack; an unknown ref is
    st2's own "not found"."""
    assert "demo.greet" in [a["ref"] for a in server.json("action-alias", "list", "-p", "demo")]
    got = server.json("action-alias", "get", "demo.greet")
    assert got["ref"] == "demo.greet" and got["action_ref"] == "demo.greet" and got["enabled"] is True
    assert [f["display"] for f in got["formats"]] == ["greet {{who}}"]
    assert got["metadata_file"] == "aliases/greet.yaml"
    table = server.run("action-alias", "get", "demo.greet").stdout
    assert "Greet someone." in table and "greet {{who}}" in table
    missing = server.run("action-alias", "get", "demo.nope", check=False)
    assert missing.returncode != 0 and '"demo.nope" is not found' in missing.stdout + missing.stderr
    matched = server.run("action-alias", "match", "greet dan").stdout  # POST /actionalias/match: no ref
    assert "greet" in matched and "Greet someone." in matched
