"""Config values of the wrong type are refused, naming the file, the key, what was given and what would
be right, rather than turned into something else: `str()` of a list made a folder named `['data', '`
holding the database, and `int()` ran `max_concurrency: 2.7` as 2 and `true` as 1."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from engine.config import ConfigError, load_config
from tests.conftest import write
from tests.test_cli import SQUALL


def refusal(config: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "given"),
    [("data_dir: [data, /var/lib/squall]", "data_dir", "a list"),
     ("data_dir: {x: 1}", "data_dir", "a mapping"),
     ("data_dir:", "data_dir", "empty"),
     ("data_dir: 2026", "data_dir", "2026"),
     ("packs: {install_path: [a]}", "packs.install_path", "a list"),
     ("packs: {configs_path: {a: 1}}", "packs.configs_path", "a mapping"),
     ("packs: {virtualenvs_path: 3}", "packs.virtualenvs_path", "3"),
     ("datastore: {encryption_key_path: [k]}", "datastore.encryption_key_path", "a list")],
)
def test_a_path_key_given_no_text_is_refused(tmp_path: Path, text: str, key: str, given: str) -> None:
    config = write(tmp_path / "config.yml", text + "\n")
    message = refusal(config)
    assert message.startswith(f"{config}: '{key}' must be a path (text)")
    assert message.endswith(f"not {given}")
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yml"]  # no folder made of the value


@pytest.mark.parametrize("key", ["max_concurrency", "python_workers_per_pack"])
@pytest.mark.parametrize("value", ["2.7", "true", "false", "1.0", ".inf", "'2.5'"])
def test_an_executor_count_that_is_not_whole_is_refused(tmp_path: Path, key: str, value: str) -> None:
    config = write(tmp_path / "config.yml", f"executor:\n  {key}: {value}\n")
    message = refusal(config)
    assert message.startswith(f"{config}: 'executor.{key}' must be a whole number of at least 1")
    assert message.endswith(f", not {yaml.safe_load(value)!r}")  # what was given, as YAML read it


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_unserved_after_must_be_a_finite_number(tmp_path: Path, value: str) -> None:
    config = write(tmp_path / "config.yml", f"executor:\n  unserved_after: {value}\n")
    assert refusal(config).startswith(f"{config}: 'executor.unserved_after' must be seconds")


def test_path_keys_given_text_still_resolve(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "config.yml", "data_dir: state\npacks:\n  configs_path: ~/cfg\n"
                                                        "executor:\n  max_concurrency: '3'\n"))
    assert config.data_dir == tmp_path / "state"
    assert config.virtualenvs_path == tmp_path / "state" / "virtualenvs"
    assert config.configs_path == Path(os.path.expanduser("~/cfg"))
    assert config.max_concurrency == 3


def test_a_folder_given_as_the_config_file_is_named_as_one(tmp_path: Path) -> None:
    message = refusal(tmp_path)
    assert message.startswith(f"config file {tmp_path} is a folder, not a file")
    assert "YAML" in message and "does not exist" not in message


def test_cli_says_the_config_given_is_a_folder(tmp_path: Path) -> None:
    done = subprocess.run([SQUALL, "-c", str(tmp_path), "key", "list"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode != 0
    assert f"config file {tmp_path} is a folder, not a file" in done.stderr
    assert "Traceback" not in done.stderr
