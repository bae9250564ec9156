"""Pack folders Squall would otherwise pass over in silence: one holding pack content without its pack.yaml
(it loads nothing; its webhook answered 404 with `pack reload` saying all was well), and a user's pack put
in the shipped packs' folder (it loads as shipped, in every Squall home, and cannot be removed)."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.config import SYSTEM_PACKS_PATH
from engine.packs import ContentWarning, load_registry
from tests.conftest import write

RULE = """
    name: on_deploy
    pack: hello
    enabled: true
    trigger: {type: core.st2.webhook, parameters: {url: deploy}}
    action: {ref: core.echo, parameters: {message: hi}}
"""


def test_a_folder_with_rules_but_no_pack_yaml_is_named(tmp_path: Path) -> None:
    write(tmp_path / "packs" / "hello" / "rules" / "on_deploy.yaml", RULE)
    (tmp_path / "packs" / "notes").mkdir()  # a folder with no pack content: no pack, nothing to say
    registry = load_registry([tmp_path / "packs"], tmp_path / "configs", SYSTEM_PACKS_PATH)
    said = [p for p in registry.errors if "hello" in p.file]
    assert len(said) == 1 and isinstance(said[0], ContentWarning)
    assert "holds rules/ but no pack.yaml" in said[0].reason and "ref: hello" in said[0].reason
    assert not any("notes" in p.file for p in registry.errors)
    assert "hello" not in registry.packs
    write(tmp_path / "packs" / "hello" / "pack.yaml", "ref: hello\nname: hello\nversion: 0.1.0\nauthor: me\n"
                                                      "description: d\n")
    registry = load_registry([tmp_path / "packs"], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert "hello" in registry.packs and not any("hello" in p.file for p in registry.errors)


def test_a_users_pack_in_the_shipped_folder_is_said_to_belong_elsewhere(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shutil.copytree(SYSTEM_PACKS_PATH, shipped, ignore=shutil.ignore_patterns("__pycache__"))
    write(shipped / "hello" / "pack.yaml", "ref: hello\nname: hello\nversion: 0.1.0\nauthor: me\ndescription: d\n")
    registry = load_registry([tmp_path / "packs"], tmp_path / "configs", shipped)
    [said] = [p for p in registry.errors if "not a pack Squall ships" in p.reason]
    assert isinstance(said, ContentWarning) and said.file.endswith("hello") and "packs.paths" in said.reason
    assert not any(name in p.file for p in registry.errors for name in ("core", "chatops", "squall", "linux", "packs"))
