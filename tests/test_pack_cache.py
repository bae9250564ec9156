"""Big packs stay fast (issue 16, 2c): one libyaml parse per file, the registry cached between CLI
calls and never trusted once a file changed, and `pack install` succeeding before the pack's config exists.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import engine.packs as packs
import engine.yamlfile as yamlfile
from engine.config import SYSTEM_PACKS_PATH
from engine.packs import Registry, load_registry_cached
from engine.yamlfile import ContentInvalid, load_yaml
from tests.conftest import write

SQUALL = Path(sys.executable).parent / "squall"
ACTION = """
    name: {name}
    runner_type: local-shell-cmd
    description: {description}
    parameters:
      cmd:
        default: echo {name}
      region:
        type: string
"""


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A pack folder with two actions, a config folder, a cache folder, and a count of real loads.

    Files written by the test are cached at once (no two-second settling), and each edit below
    waits a little so even a coarse file-system clock moves."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(packs, "_SETTLE_NS", 0)
    monkeypatch.delenv(packs.CACHE_ENV, raising=False)
    pack = tmp_path / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\n")
    for name in ("one", "two"):
        write(pack / "actions" / f"{name}.yaml", ACTION.format(name=name, description="first"))
    (tmp_path / "configs").mkdir()
    loads: list[int] = []
    real = packs.load_registry

    def counting(*args: Any) -> Registry:
        loads.append(1)
        return real(*args)

    monkeypatch.setattr(packs, "load_registry", counting)
    args = ([tmp_path / "packs"], tmp_path / "configs", SYSTEM_PACKS_PATH, tmp_path / "data" / "cache")
    return {"pack": pack, "loads": loads, "load": lambda: load_registry_cached(*args), "cache": args[3]}


def _edit_later() -> None:
    time.sleep(0.05)


def test_second_call_comes_from_the_cache(tree: dict[str, Any]) -> None:
    first = tree["load"]()
    second = tree["load"]()
    assert len(tree["loads"]) == 1
    assert set(second.actions) == set(first.actions) and "demo.one" in second.actions
    files = list(tree["cache"].iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert tree["cache"].stat().st_mode & 0o777 == 0o700


def test_a_changed_action_file_is_reloaded_even_with_the_same_size_and_mtime(tree: dict[str, Any]) -> None:
    tree["load"]()
    file = tree["pack"] / "actions" / "one.yaml"
    before = file.stat()
    _edit_later()
    file.write_text(file.read_text().replace("first", "other"))  # same size
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime: ctime still moves
    registry = tree["load"]()
    assert len(tree["loads"]) == 2
    assert registry.actions["demo.one"].description == "other"


def test_an_added_action_file_is_loaded(tree: dict[str, Any]) -> None:
    tree["load"]()
    _edit_later()
    write(tree["pack"] / "actions" / "three.yaml", ACTION.format(name="three", description="new"))
    assert "demo.three" in tree["load"]().actions
    assert len(tree["loads"]) == 2


def test_a_removed_action_file_is_gone(tree: dict[str, Any]) -> None:
    tree["load"]()
    (tree["pack"] / "actions" / "two.yaml").unlink()
    assert "demo.two" not in tree["load"]().actions
    assert len(tree["loads"]) == 2


def test_a_new_pack_folder_is_loaded_and_other_folders_do_not_matter(tree: dict[str, Any], tmp_path: Path) -> None:
    tree["load"]()
    write(tmp_path / "packs" / "notes" / "readme.txt", "not a pack")  # no pack.yaml: not walked
    tree["load"]()
    assert len(tree["loads"]) == 1
    write(tmp_path / "packs" / "extra" / "actions" / "x.yaml", ACTION.format(name="x", description="x"))
    write(tmp_path / "packs" / "extra" / "pack.yaml", "ref: extra\nname: extra\nversion: 1.0.0\n")
    assert "extra.x" in tree["load"]().actions


def test_a_new_config_file_is_read(tree: dict[str, Any], tmp_path: Path) -> None:
    tree["load"]()
    write(tmp_path / "configs" / "demo.yaml", "token: abc\n")
    assert tree["load"]().packs["demo"].config == {"token": "abc"}


def test_files_changed_just_now_are_not_cached(tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit within the file system's timestamp granularity may not move the mtime: wait to cache."""
    monkeypatch.setattr(packs, "_SETTLE_NS", 60_000_000_000)
    tree["load"]()
    tree["load"]()
    assert len(tree["loads"]) == 2
    assert not tree["cache"].exists() or not list(tree["cache"].iterdir())


def test_a_cache_others_could_have_written_is_ignored(tree: dict[str, Any]) -> None:
    tree["load"]()
    (file,) = tree["cache"].iterdir()
    file.chmod(0o644)
    assert "demo.one" in tree["load"]().actions
    assert len(tree["loads"]) == 2


def test_a_corrupt_cache_is_rebuilt(tree: dict[str, Any]) -> None:
    tree["load"]()
    (file,) = tree["cache"].iterdir()
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    assert "demo.one" in tree["load"]().actions
    assert "demo.one" in tree["load"]().actions  # rebuilt and written again
    assert len(tree["loads"]) == 2


def test_the_environment_turns_the_cache_off(tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(packs.CACHE_ENV, "0")
    tree["load"]()
    tree["load"]()
    assert len(tree["loads"]) == 2 and not tree["cache"].exists()


def test_problems_from_the_cache_keep_file_and_line(tree: dict[str, Any]) -> None:
    write(tree["pack"] / "actions" / "bad.yaml", "name: bad\nrunner_type: no-such-runner\n")
    write(tree["pack"] / "aliases" / "hi.yaml", "name: hi\naction_ref: demo.one\nformats:\n  - hi\n")
    tree["load"]()
    cached = tree["load"]()
    assert len(tree["loads"]) == 1
    (problem,) = [e for e in cached.errors if e.file.endswith("bad.yaml")]
    assert problem.line == 2 and str(problem).startswith("packs/demo/actions/bad.yaml:2: ")
    (alias,) = [d for d in cached.documents if d.kind == "aliases" and d.pack == "demo"]
    assert alias.lines.line("formats", 0) == 4 and alias.lines.line("action_ref") == 2


def test_each_file_is_parsed_once_with_the_c_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML built without libyaml")
    assert yamlfile.FAST_LOADER is yaml.CSafeLoader
    made: list[object] = []

    class Counting(yaml.CSafeLoader):
        def __init__(self, stream: str) -> None:
            made.append(self)
            super().__init__(stream)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the pure-Python parser ran on a valid file")

    monkeypatch.setattr(yamlfile, "FAST_LOADER", Counting)
    monkeypatch.setattr(yaml.SafeLoader, "__init__", refuse)
    file = write(tmp_path / "a.yaml", "name: a\nparameters:\n  x:\n    type: string\n")
    data, lines = load_yaml(file)
    assert data == {"name": "a", "parameters": {"x": {"type": "string"}}}
    assert len(made) == 1 and lines.line("parameters", "x", "type") == 4


def test_syntax_errors_name_the_line_in_the_pure_python_parsers_words(tmp_path: Path) -> None:
    cases = {"a: b: c\n": 1, "a: 1\nb: [1, 2\nc: 3\n": 3, "a: 1\n  - b\nc: 'x\n": 3, "a: 1\n\tb: 2\n": 2}
    for text, line in cases.items():
        file = tmp_path / "bad.yaml"
        file.write_text(text)
        with pytest.raises(ContentInvalid) as caught:
            load_yaml(file, "bad.yaml")
        try:
            yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            expected = exc.problem  # type: ignore[attr-defined]
        assert caught.value.error.line == line, text
        assert caught.value.error.reason.startswith(f"invalid YAML: {expected}"), text
        assert str(caught.value).startswith(f"bad.yaml:{line}: invalid YAML"), text


def test_a_line_map_pickles_without_parser_objects(tmp_path: Path) -> None:
    file = write(tmp_path / "a.yaml", "a:\n  - x\n  - y: 1\n    z: 2\nb: 3\n")
    _, lines = load_yaml(file)
    copy = pickle.loads(pickle.dumps(lines))
    for path in [(), ("a",), ("a", 1), ("a", 1, "z"), ("a", 5), ("b",), ("nope",), ("b", "deeper")]:
        assert copy.line(*path) == lines.line(*path), path
    assert b"yaml.nodes" not in pickle.dumps(lines) and b"Mark" not in pickle.dumps(lines)


def _squall(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True, text=True,
                          cwd=home, timeout=120)


def test_install_exits_0_and_names_the_config_keys_still_needed(home: Path) -> None:
    source = home / "src" / "needy"
    write(source / "pack.yaml", "ref: needy\nname: needy\nversion: 0.1.0\n")
    write(source / "actions" / "hi.yaml", ACTION.format(name="hi", description="hi"))
    write(source / "config.schema.yaml", """
        api_key: {type: string, required: true, secret: true}
        region: {type: string, required: true, default: eu}
        opts:
          type: object
          required: true
          properties:
            token: {type: string, required: true}
    """)
    done = _squall(home, "pack", "install", str(source), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config_needed"] == ["api_key", "opts.token"]
    assert "api_key, opts.token" in done.stderr and "configs/needy.yaml" in done.stderr
    assert "pack content skipped" not in done.stderr

    write(home / "configs" / "needy.yaml", "api_key: k\nopts: {token: t}\n")
    again = _squall(home, "pack", "install", str(source))
    assert again.returncode == 0, again.stderr
    assert "config needed" not in again.stderr
