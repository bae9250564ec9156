"""`api.host`, `database.url` and `packs.paths` of the wrong type: refused by `load_config` in one line naming
the key, the value given (quoted, cut short if long, a URL's password masked) and what would be right. An
`api.host` list or number was taken as it came and failed later, inside uvicorn."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.config import GIVEN_CHARS, ConfigError, load_config
from tests.conftest import write
from tests.test_cli import SQUALL


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


@pytest.mark.parametrize(("value", "given"), [("[a, b]", "['a', 'b']"), ("12", "12"), ("{a: b}", "{'a': 'b'}"),
                                              ('""', "''"), ("true", "True"), ("' 0.0.0.0'", "' 0.0.0.0'")])
def test_api_host_of_the_wrong_type_is_refused_naming_it(tmp_path: Path, value: str, given: str) -> None:
    file = write(tmp_path / "config.yml", f"api:\n  host: {value}\n")
    message = config_error(file)
    assert message == (f"{file}: 'api.host' must be a host name or address (text), such as 127.0.0.1 (this "
                       f"machine only) or 0.0.0.0 (every address), not {given}")


@pytest.mark.parametrize("host", ["0.0.0.0", "::1", "squall.example.com"])
def test_api_host_as_text_is_taken(tmp_path: Path, host: str) -> None:
    config = load_config(write(tmp_path / "config.yml", f"api:\n  host: '{host}'\n  port: 9200\n"))
    assert config.api_url == f"http://{host}:9200/api/v1"


@pytest.mark.parametrize(("value", "given"), [("5", "5"), ("[sqlite:///x.db]", "['sqlite:///x.db']"),
                                              ("{a: b}", "{'a': 'b'}"), ("false", "False")])
def test_database_url_of_the_wrong_type_is_refused_naming_it(tmp_path: Path, value: str, given: str) -> None:
    file = write(tmp_path / "config.yml", f"database:\n  url: {value}\n")
    assert config_error(file) == (f"{file}: 'database.url' must be a URL (text), such as sqlite:///data/squall.db "
                                  f"or postgresql://USER:PASSWORD@HOST:PORT/DATABASE, not {given}")


def test_a_database_url_in_a_list_is_quoted_without_its_password(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", "database:\n  url: ['postgresql://ann:s3cretpw@db/squall']\n")
    message = config_error(file)
    assert "s3cretpw" not in message
    assert message.endswith("not ['postgresql://ann:********@db/squall']")


def test_an_empty_database_url_is_still_the_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "config.yml", "database:\n  url: ''\n"))
    assert config.database_url == f"sqlite:///{tmp_path / 'data' / 'squall.db'}"


@pytest.mark.parametrize(("value", "given"), [("5", "5"), ("[1, 2]", "[1, 2]"), ("{a: b}", "{'a': 'b'}"),
                                              ("[packs, [nested]]", "['packs', ['nested']]"), ("['']", "['']"),
                                              ("null", "None")])
def test_packs_paths_of_the_wrong_type_is_refused_naming_it(tmp_path: Path, value: str, given: str) -> None:
    file = write(tmp_path / "config.yml", f"packs:\n  paths: {value}\n")
    assert config_error(file) == (f"{file}: 'packs.paths' must be a list of folders (text), such as "
                                  f"[packs, /opt/squall/packs], not {given}")


def test_a_long_value_is_cut_short(tmp_path: Path) -> None:
    folders = ", ".join(f"folder{n}" for n in range(40))
    file = write(tmp_path / "config.yml", f"packs:\n  paths: [{folders}, 7]\n")
    message = config_error(file)
    given = message.partition(", not ")[2]
    assert given.startswith("['folder0', 'folder1', ") and given.endswith("…")
    assert len(given) == GIVEN_CHARS and "\n" not in message


@pytest.mark.parametrize(("section", "key"), [("api:\n  host: [a, b]\n", "api.host"),
                                              ("database:\n  url: 5\n", "database.url"),
                                              ("packs:\n  paths: [1, 2]\n", "packs.paths")])
def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path: Path, section: str, key: str) -> None:
    file = write(tmp_path / "config.yml", section)
    done = subprocess.run([str(SQUALL), "-c", str(file), "run", "core.noop"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {file}: '{key}' must be ") and ", not " in lines[0]
