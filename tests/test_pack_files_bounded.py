"""One bad pack never takes Squall down, and an install says what it did.

- A pack file whose YAML aliases expand past a budget (a "billion laughs": 799 bytes, 10^9 strings) is that
  file's load problem, skipped like a syntax error: it loaded, then `GET /api/v1/actions` wrote it out and
  `squall serve` died for memory.
- `squall pack install <git URL with credentials>` keeps the credentials out of the audit log and of what it
  prints, as the web UI's install does (`engine.pack_manager.shown_source`).
- An install that a same-named pack earlier in `packs.paths` hides fails, naming that folder, instead of
  saying "installed".
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pickle
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import pack_manager, yamlfile
from engine.config import SYSTEM_PACKS_PATH
from engine.pack_manager import PackInstallError, install_pack
from engine.packs import load_registry
from engine.yamlfile import ContentInvalid, load_yaml
from tests.conftest import write
from tests.pgcluster import free_port
from tests.test_cli import like_a_process

#: The reviewer's `actions/boom.yaml`: nine lists of ten aliases of the one before (10^9 strings).
BOMB = "name: boom\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {default: echo hi}\n" + "".join(
    f"  p{level}: {{type: array, default: &a{level} [{','.join([f'*a{level - 1}'] * 10)}]}}\n" if level else
    "  p0: {type: array, default: &a0 [" + ",".join(['"lol"'] * 10) + "]}\n"
    for level in range(9))


def _pack(packs: Path, ref: str, version: str = "1.0.0") -> Path:
    """A pack with one shell action, `hello`."""
    write(packs / ref / "pack.yaml", f"ref: {ref}\nname: {ref}\nversion: {version}\nauthor: tests\n")
    write(packs / ref / "actions" / "hello.yaml",
          f"name: hello\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {{default: echo {ref} {version}}}\n")
    return packs / ref


# -- 1. YAML aliases within a budget ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["actions", "triggers", "aliases", "rules", "sensors", "policies"])
def test_an_alias_bomb_is_its_files_problem_and_the_rest_of_the_pack_loads(tmp_path: Path, kind: str) -> None:
    packs = tmp_path / "packs"
    _pack(packs, "demo")
    write(packs / "demo" / kind / "boom.yaml", BOMB)
    assert len(BOMB) < 1000

    registry = load_registry([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)

    # Plain values only: an assertion that failed on the bomb itself would print 10^9 strings.
    loaded = sorted(ref for ref in registry.actions if ref.startswith("demo."))
    documents = sum(document.file.endswith("boom.yaml") for document in registry.documents)
    assert (loaded, documents) == (["demo.hello"], 0)
    [error] = [e for e in registry.errors if e.file.endswith(f"{kind}/boom.yaml")]
    # at the first anchor whose list passes the budget: &a5 (4,111,110 characters and items)
    assert error.line == 10, error
    assert "aliases" in error.reason and f"{yamlfile.MAX_ALIAS_GROWTH:,}" in error.reason, error


def test_a_value_that_holds_an_alias_of_itself_is_refused(tmp_path: Path) -> None:
    """Without end wherever it is written out (JSON: "Circular reference detected")."""
    file = write(tmp_path / "loop.yaml", "name: loop\nparameters:\n  p:\n    default: &x [1, *x]\n")
    with pytest.raises(ContentInvalid) as caught:
        load_yaml(file, "demo/actions/loop.yaml")
    assert caught.value.error.file == "demo/actions/loop.yaml" and caught.value.error.line == 4
    assert "holds an alias of itself" in caught.value.error.reason


def test_anchors_aliases_and_merge_keys_as_packs_use_them_still_load(tmp_path: Path) -> None:
    file = write(tmp_path / "wf.yaml", """
        defaults: &defaults {retries: 3, timeout: 60}
        tasks:
          a: {<<: *defaults, action: core.noop}
          b: {<<: *defaults, timeout: 5}
        hosts: &hosts [web1, web2]
        again: *hosts
        cmd: "make && make install"
    """)
    data, lines = load_yaml(file)
    assert data["tasks"] == {"a": {"retries": 3, "timeout": 60, "action": "core.noop"},
                             "b": {"retries": 3, "timeout": 5}}
    assert data["again"] == ["web1", "web2"] and lines.line("tasks", "b") == 4


def test_the_budget_counts_what_aliases_add_not_what_the_file_writes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A file longer than the budget loads when no alias repeats it (`&&` in a command is no anchor); the
    same budget refuses a short file whose aliases add more."""
    monkeypatch.setattr(yamlfile, "MAX_ALIAS_GROWTH", 100)
    long_file = write(tmp_path / "long.yaml", "cmd: 'true && true'\nlines:\n" + "  - some text to read\n" * 50)
    data, _ = load_yaml(long_file)
    assert len(data["lines"]) == 50
    repeated = write(tmp_path / "repeated.yaml", "a: &a [" + ",".join(["xxxx"] * 5) + "]\nb: [*a, *a, *a, *a, *a]\n")
    with pytest.raises(ContentInvalid, match="at most 100 "):
        load_yaml(repeated)
    within = write(tmp_path / "within.yaml", "a: &a [xxxx, xxxx]\nb: [*a, *a]\n")
    assert load_yaml(within)[0]["b"] == [["xxxx", "xxxx"]] * 2


def test_the_lines_kept_for_the_pack_cache_hold_an_anchor_once(tmp_path: Path) -> None:
    """The pack cache pickles each file's `LineMap`: its lines were made for every alias apart, so a file
    within the budget kept ~400,000 of them; an anchor's lines are now made once, as its value is."""
    text = ("a: &a [" + ", ".join(["x"] * 100) + "]\nb: &b [" + ", ".join(["*a"] * 100) + "]\n"
            "c: [" + ", ".join(["*b"] * 20) + "]\n")
    data, lines = load_yaml(write(tmp_path / "repeat.yaml", text))
    assert len(data["c"]) == 20
    kept = pickle.dumps(lines)
    assert len(kept) < 10 * len(text), len(kept)
    again = pickle.loads(kept)
    for path in [("c",), ("c", 19), ("c", 19, 99, 0), ("b", 3), ("a", 5), ("nothing",)]:
        assert again.line(*path) == lines.line(*path), path
    assert (again.line("c"), again.line("b"), again.line("c", 19, 99)) == (3, 2, 1)


# -- 2. credentials in a git URL are said nowhere ----------------------------------------------------


def test_one_rule_strips_credentials_for_the_cli_and_the_web() -> None:
    from bot.web import packs as web_packs

    shown_source = pack_manager.shown_source
    assert web_packs.shown_source is shown_source
    assert shown_source("cloning https://bot:ghp_token@github.com/o/p.git at v1") == \
        "cloning https://***@github.com/o/p.git at v1"
    # an unescaped @ in the password: all of the login goes, not what follows its first @
    assert shown_source("http://u:p@ss@host/o.git=v1 and x@y") == "http://***@host/o.git=v1 and x@y"
    assert shown_source("/srv/packs/p=v1") == "/srv/packs/p=v1" and shown_source("git@host:o/p") == "git@host:o/p"


@pytest.fixture
def served_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A pack's repository (tag v1.0.0; a requirement no index has) over git's dumb HTTP, which asks for no
    login, so a URL's credentials are only carried along; yields http://127.0.0.1:PORT."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    source = _pack(tmp_path / "src", "demo")
    write(source / "requirements.txt", "squall-no-such-package==1.0\n")
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v1.0.0"], check=True)
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(served / "demo.git")], check=True)
    subprocess.run(["git", "-C", str(served / "demo.git"), "update-server-info"], check=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_pack_install_from_the_cli_keeps_a_urls_credentials_out_of_audit_and_output(
        home: Path, served_repository: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit log goes to exports and sinks (a SIEM): the token was in `cli.pack.install`'s source."""
    squall = like_a_process(home, monkeypatch)
    secret = "ghp_SECRETTOKEN123"
    login = f"http://deploy:{secret}@{served_repository.removeprefix('http://')}"
    shown = f"http://***@{served_repository.removeprefix('http://')}"

    installed = squall("pack", "install", f"{login}/demo.git=v1.0.0")
    said = installed.stdout + installed.stderr
    assert "installed demo 1.0.0" in installed.stdout, said
    assert installed.returncode == 1 and "requirement failed" in installed.stderr, said  # the index-less pip
    assert secret not in said and f"cloning {shown}/demo.git at v1.0.0" in said, said
    assert f"squall pack install {shown}/demo.git=v1.0.0` again" in said, said
    as_json = squall("pack", "install", f"{login}/demo.git=v1.0.0", "--json")
    assert secret not in as_json.stdout + as_json.stderr
    assert json.loads(as_json.stdout)["requirements_failed"][0]["advice"].endswith(
        f"`squall pack install {shown}/demo.git=v1.0.0` again")
    # what the virtualenv records for a Python action's error (`incomplete_virtualenv_reason`) too
    assert secret not in "".join(path.read_text() for path in (home / "data" / "virtualenvs").rglob("*.json"))

    missing = squall("pack", "install", f"{login}/nope.git=v1.0.0")
    assert missing.returncode == 2 and "git clone" in missing.stderr, missing.stderr
    assert secret not in missing.stdout + missing.stderr and f"{shown}/nope.git" in missing.stderr

    exported = squall("audit", "export").stdout
    assert secret not in exported
    sources = [event["detail"]["source"] for event in map(json.loads, exported.splitlines())
               if event["event"] == "cli.pack.install"]
    assert sources == [f"{shown}/demo.git=v1.0.0"] * 2


# -- 3. an install that a pack earlier in packs.paths hides is no success ------------------------------


def test_an_install_hidden_by_a_pack_earlier_in_the_paths_fails_naming_it(tmp_path: Path) -> None:
    first, second = tmp_path / "A", tmp_path / "B"
    hider = _pack(first, "demo", "1.0.0")
    source = _pack(tmp_path / "src", "demo", "1.2.0")
    configs, venvs = tmp_path / "configs", tmp_path / "venvs"

    with pytest.raises(PackInstallError) as caught:
        install_pack(str(source), second, configs, venvs, lambda _: None, pack_paths=[first, second])
    said = str(caught.value)
    assert f"demo 1.2.0 would be installed at {second / 'demo'}" in said, said
    assert f"Squall loads demo 1.0.0 from {hider}" in said and "packs.paths" in said, said
    assert "Nothing was installed" in said, said
    assert not (second / "demo").exists() and not (venvs / "demo").exists()  # refused before anything changed

    # the order the message suggests: the installed one is loaded, and the install succeeds
    pack, _ = install_pack(str(source), second, configs, venvs, lambda _: None, pack_paths=[second, first])
    assert (pack.path, pack.version) == (second / "demo", "1.2.0")
    # install_path not among the paths: never loaded
    with pytest.raises(PackInstallError, match=r"not one of packs\.paths"):
        install_pack(str(source), tmp_path / "C", configs, venvs, lambda _: None, pack_paths=[first, second])


def test_pack_install_from_the_cli_is_refused_when_another_copy_would_hide_it(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [A, B]
          install_path: B
        api:
          port: {free_port()}
    """)
    _pack(home / "A", "demo", "1.0.0")
    source = _pack(tmp_path / "src", "demo", "1.2.0")
    squall = like_a_process(home, monkeypatch)

    done = squall("pack", "install", str(source))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "installed demo" not in done.stdout, done.stdout
    assert f"Squall loads demo 1.0.0 from {home / 'A' / 'demo'}" in done.stderr, done.stderr
    assert not (home / "B" / "demo").exists()
    listed = json.loads(squall("pack", "list", "--json").stdout)
    assert [(p["version"], p["path"]) for p in listed["packs"] if p["ref"] == "demo"] == \
        [("1.0.0", str(home / "A" / "demo"))]
    assert not [e for e in map(json.loads, squall("audit", "export").stdout.splitlines())
                if e["event"] == "cli.pack.install"]  # nothing changed: nothing to audit
