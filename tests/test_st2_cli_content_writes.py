"""StackStorm's own `st2` CLI and st2client (PyPI st2client 3.9.0, `st2_binary`) against a live `squall serve`:
the verbs that address pack content by `id` and by `name`. `st2 action-alias update|delete` and `st2 trigger
delete` died inside st2client ("'ActionAlias' object has no attribute 'id'") before sending anything, `st2
action-alias create` got a bare 405, and st2client's `get_by_name` on actions and packs raised "More than one
... named ... are found": Squall sent no `id` and ignored `?name=`. Now each refused write says what to edit
instead, and `get_by_name` finds the one it names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until_answering, write
from tests.test_cli import SQUALL

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = "st2-content-writes-key-0123456789"


@dataclass
class Server:
    home: Path
    url: str
    st2: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(self.home / "user"), "ST2_API_URL": f"{self.url}/api/v1",
               "ST2_AUTH_URL": f"{self.url}/auth/v1", "ST2_STREAM_URL": f"{self.url}/stream/v1", "ST2_API_KEY": KEY}
        env.pop("ST2_AUTH_TOKEN", None)
        return subprocess.run([str(self.st2), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def server(st2_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("st2writes")
    port = free_port()
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          host: 127.0.0.1
          port: {port}
          keys: [{KEY}]
        adapters:
          console:
            enabled: false
    """)
    pack = home / "packs" / "st2f"
    write(pack / "pack.yaml", "ref: st2f\nname: st2f\ndescription: st2 writes.\nversion: 0.1.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: 'echo hi', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: st2f.greet
        formats: ["greet"]
    """)
    write(pack / "triggers" / "event.yaml", "name: event\npack: st2f\n")
    write(home / "alias.yaml", 'name: al1\npack: st2f\naction_ref: st2f.greet\nformats: ["sayit {{message}}"]\n')
    (home / "user").mkdir()
    process = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, process)
        yield Server(home, url, st2_binary)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _refused(done: subprocess.CompletedProcess[str], *said: str) -> None:
    """`st2` failed with Squall's explanation (st2client prints the faultstring), not inside st2client."""
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "has no attribute 'id'" not in out, out
    assert "405" in out and "kept in pack files" in out and all(s in out for s in said), out


def test_alias_and_trigger_writes_reach_squall_and_say_what_to_edit(server: Server) -> None:
    alias_file = str(server.home / "alias.yaml")
    _refused(server.run("action-alias", "create", alias_file), "aliases/<name>.yaml")
    _refused(server.run("action-alias", "update", "st2f.greet", alias_file), "greet.yaml")
    _refused(server.run("action-alias", "delete", "st2f.greet"), "greet.yaml")
    _refused(server.run("trigger", "delete", "st2f.event"), "event.yaml")
    _refused(server.run("trigger", "delete", "core.st2.webhook"), "shipped with Squall")
    got = server.run("action-alias", "get", "st2f.greet", "-j")
    assert got.returncode == 0 and json.loads(got.stdout)["ref"] == "st2f.greet"  # still there


def test_st2client_get_by_name_finds_the_one_action_and_pack(server: Server) -> None:
    script = ("import json, sys\nfrom st2client.client import Client\n"
              "c = Client(api_url=sys.argv[1], api_key=sys.argv[2])\n"
              "print(json.dumps([c.actions.get_by_name('greet').ref, c.packs.get_by_name('st2f').ref,"
              " c.triggertypes.get_by_name('event').ref]))\n")
    done = subprocess.run([str(server.st2.parent / "python"), "-c", script, f"{server.url}/api/v1", KEY],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == ["st2f.greet", "st2f", "st2f.event"]
