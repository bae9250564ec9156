"""Tests for engine.config.load_config: defaults without a file, paths relative to the config file,
SQLite URLs, key checking with suggestions, YAML errors with lines and $SQUALL_CONFIG."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from engine.config import CONFIG_ENV, SYSTEM_PACKS_PATH, Config, ConfigError, load_config
from tests.conftest import write


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder that is not the config file's folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def config_error(path: Path | str | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# Without a config file
# ---------------------------------------------------------------------------------------------


def test_no_config_file_uses_defaults_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.path is None
    assert config.base_dir == tmp_path
    assert config.data_dir == tmp_path / "data"
    assert config.pack_paths == [tmp_path / "packs"]
    assert config.install_path == tmp_path / "packs"
    assert config.configs_path == tmp_path / "configs"
    assert config.virtualenvs_path == tmp_path / "data" / "virtualenvs"
    assert config.encryption_key_path == tmp_path / "data" / "datastore.key"
    assert config.database_url == f"sqlite:///{tmp_path / 'data' / 'squall.db'}"
    assert make_url(config.database_url).database == str(tmp_path / "data" / "squall.db")
    assert config.python_workers_per_pack == 4
    assert config.max_concurrency == 64
    assert config.api_url == "http://127.0.0.1:9101/api/v1"
    assert config.raw == {}
    assert config.section("chat") == {}


def test_config_yml_in_cwd_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "config.yml", "data_dir: state\n")
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.path == tmp_path / "config.yml"
    assert config.data_dir == tmp_path / "state"


def test_empty_config_file_is_all_defaults(tmp_path: Path, elsewhere: Path) -> None:
    file = write(tmp_path / "etc" / "config.yml", "# nothing yet\n")
    config = load_config(file)
    assert config.path == file
    assert config.base_dir == tmp_path / "etc"
    assert config.data_dir == tmp_path / "etc" / "data"
    assert config.pack_paths == [tmp_path / "etc" / "packs"]


def test_system_packs_path_is_the_shipped_packs_folder() -> None:
    assert (SYSTEM_PACKS_PATH / "core" / "pack.yaml").is_file()


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path, elsewhere: Path) -> None:
    etc = tmp_path / "etc"
    file = write(etc / "config.yml", """
        data_dir: var
        packs:
          paths: [packs, ../shared/packs]
          install_path: installed
          configs_path: ./pack-configs
          virtualenvs_path: venvs
        datastore:
          encryption_key_path: keys/datastore.key
    """)
    config = load_config(file)
    assert config.base_dir == etc
    assert config.data_dir == etc / "var"
    assert config.pack_paths == [etc / "packs", tmp_path / "shared" / "packs"]
    assert config.install_path == etc / "installed"
    assert config.configs_path == etc / "pack-configs"
    assert config.virtualenvs_path == etc / "venvs"
    assert config.encryption_key_path == etc / "keys" / "datastore.key"
    # nothing points into the working directory
    for path in (config.data_dir, *config.pack_paths, config.configs_path, config.virtualenvs_path):
        assert path.is_absolute() and not path.is_relative_to(elsewhere)


def test_defaults_follow_a_configured_data_dir(tmp_path: Path, elsewhere: Path) -> None:
    file = write(tmp_path / "config.yml", "data_dir: /srv/squall\n")
    config = load_config(file)
    assert config.data_dir == Path("/srv/squall")
    assert config.virtualenvs_path == Path("/srv/squall/virtualenvs")
    assert config.encryption_key_path == Path("/srv/squall/datastore.key")
    assert config.database_url == "sqlite:////srv/squall/squall.db"


def test_absolute_and_home_paths(tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    file = write(tmp_path / "config.yml", f"""
        packs:
          paths: ["~/packs", "{tmp_path / 'abs'}"]
    """)
    config = load_config(file)
    assert config.pack_paths == [tmp_path / "home" / "packs", tmp_path / "abs"]
    assert config.install_path == tmp_path / "home" / "packs"  # the first pack path


def test_packs_paths_as_a_string(tmp_path: Path, elsewhere: Path) -> None:
    file = write(tmp_path / "config.yml", "packs:\n  paths: mypacks\n")
    config = load_config(file)
    assert config.pack_paths == [tmp_path / "mypacks"]
    assert config.install_path == tmp_path / "mypacks"


def test_packs_paths_empty_list_installs_under_data(tmp_path: Path, elsewhere: Path) -> None:
    config = load_config(write(tmp_path / "config.yml", "packs:\n  paths: []\n"))
    assert config.pack_paths == []
    assert config.install_path == tmp_path / "data" / "packs"


@pytest.mark.parametrize("value", ["5", "[1, 2]", "{a: b}", "[packs, [nested]]"])
def test_packs_paths_of_wrong_type_is_an_error(tmp_path: Path, value: str) -> None:
    file = write(tmp_path / "config.yml", f"packs:\n  paths: {value}\n")
    message = config_error(file)
    assert str(file) in message
    assert "'packs.paths' must be a list of folders" in message


# ---------------------------------------------------------------------------------------------
# Database URL
# ---------------------------------------------------------------------------------------------


def test_relative_sqlite_url_is_made_absolute(tmp_path: Path, elsewhere: Path) -> None:
    file = write(tmp_path / "etc" / "config.yml", "database:\n  url: sqlite:///data/squall.db\n")
    config = load_config(file)
    expected = tmp_path / "etc" / "data" / "squall.db"
    assert config.database_url == f"sqlite:///{expected}"
    assert make_url(config.database_url).database == str(expected)


def test_relative_sqlite_url_with_driver_and_query_is_made_absolute(tmp_path: Path, elsewhere: Path) -> None:
    file = write(tmp_path / "config.yml", "database:\n  url: sqlite+pysqlite:///db/s.db?timeout=30\n")
    url = make_url(load_config(file).database_url)
    assert url.drivername == "sqlite+pysqlite"
    assert url.database == str(tmp_path / "db" / "s.db")
    assert url.query == {"timeout": "30"}


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/squall/squall.db",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://squall@db.example.com:5432/squall",
        "postgresql+psycopg://squall:pw@localhost/squall",
    ],
)
def test_other_database_urls_are_kept(tmp_path: Path, elsewhere: Path, url: str) -> None:
    file = write(tmp_path / "config.yml", f"database:\n  url: '{url}'\n")
    assert load_config(file).database_url == url


@pytest.mark.parametrize("url", ["mysql://u:s3cretpw@127.0.0.1:1/db", "postgres://u:s3cretpw@db/squall",
                                 "postgresql+psycopg2://u:s3cretpw@db/squall", "squall.db", "sqlite+aiosqlite:///x.db"])
def test_an_unsupported_database_url_is_named_with_the_supported_ones(tmp_path: Path, url: str) -> None:
    """A `mysql://` URL ended in a ModuleNotFoundError traceback at the first command (and `postgres://` in
    SQLAlchemy's NoSuchModuleError): the config names what Squall runs on, and quotes no password."""
    file = write(tmp_path / "config.yml", f"database:\n  url: '{url}'\n")
    with pytest.raises(ConfigError) as raised:
        load_config(file)
    message = str(raised.value)
    assert str(file) in message and "database.url" in message
    assert "sqlite:///" in message and "postgresql://" in message
    assert "s3cretpw" not in message


def test_home_fixture_config_is_absolute(config: Config, home: Path) -> None:
    assert config.path == home / "config.yml"
    assert config.database_url == f"sqlite:///{home / 'data' / 'squall.db'}"
    assert config.pack_paths == [home / "packs"]


# ---------------------------------------------------------------------------------------------
# Key checking
# ---------------------------------------------------------------------------------------------


def test_unknown_top_level_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", "databse:\n  url: sqlite://\n")
    message = config_error(file)
    assert message == f"{file}: unknown top-level key 'databse' (did you mean 'database'?)"


def test_unknown_top_level_key_without_near_match(tmp_path: Path) -> None:
    message = config_error(write(tmp_path / "config.yml", "zzzzzz: 1\n"))
    assert message.endswith("unknown top-level key 'zzzzzz'")


def test_unknown_sub_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", "packs:\n  path: [packs]\n")
    assert config_error(file) == f"{file}: unknown key 'packs.path' (did you mean 'packs.paths'?)"
    file = write(tmp_path / "config.yml", "executor:\n  max_concurrancy: 3\n")
    assert config_error(file).endswith(
        "unknown key 'executor.max_concurrancy' (did you mean 'executor.max_concurrency'?)")
    file = write(tmp_path / "config.yml", "datastore:\n  key: x\n")
    assert "unknown key 'datastore.key'" in config_error(file)


def test_sections_owned_elsewhere_accept_any_keys(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", """
        chat:
          anything: 1
        api:
          host: 0.0.0.0
          port: 8080
        routes: {ops: {adapter: slack}}
    """)
    config = load_config(file)
    assert config.section("chat") == {"anything": 1}
    assert config.api_url == "http://0.0.0.0:8080/api/v1"
    assert config.section("routes") == {"ops": {"adapter": "slack"}}


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    message = config_error(write(tmp_path / "config.yml", "packs: [a, b]\n"))
    assert "'packs' must be a mapping, not list" in message
    config = load_config(write(tmp_path / "config.yml", "chat: [a]\n"))
    with pytest.raises(ConfigError, match="'chat' must be a mapping, not list"):
        config.section("chat")


def test_empty_sections_mean_defaults(tmp_path: Path, elsewhere: Path) -> None:
    # every key of a section commented out leaves the section null, which must not be an error
    file = write(tmp_path / "config.yml", """
        database:
        #  url: postgresql://...
        packs:
        executor:
        datastore:
        chat:
    """)
    config = load_config(file)
    assert config.database_url == f"sqlite:///{tmp_path / 'data' / 'squall.db'}"
    assert config.pack_paths == [tmp_path / "packs"]
    assert config.max_concurrency == 64
    assert config.section("chat") == {}


def test_top_level_that_is_not_a_mapping(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", "- database\n")
    assert config_error(file) == f"{file}: the top level must be a mapping of sections"


# ---------------------------------------------------------------------------------------------
# Invalid files
# ---------------------------------------------------------------------------------------------


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", """
        database:
          url: sqlite://
        packs:
          paths: [a, b
          configs_path: x
    """)
    message = config_error(file)
    assert message.startswith(f"{file}:5: not valid YAML")


def test_unclosed_quote_names_the_line_where_it_starts(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", "packs:\n  paths: ['a\ndata_dir: x\n")
    assert config_error(file).startswith(f"{file}:2: not valid YAML")


def test_tab_indentation_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "config.yml"
    file.write_text("data_dir: x\npacks:\n\tpaths: [a]\n")
    assert config_error(file).startswith(f"{file}:3: ")


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "config.yml"
    file.write_bytes(b"data_dir: \xff\xfe\n")
    message = config_error(file)
    assert str(file) in message


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.yml")
    assert message == f"config file {tmp_path / 'nope.yml'} does not exist"
    assert "does not exist" in config_error(tmp_path)  # a folder is not a config file


@pytest.mark.parametrize(
    ("executor", "message"),
    [("python_workers_per_pack: many", "whole numbers"), ("max_concurrency: 0", "at least 1"),
     ("python_workers_per_pack: -2", "at least 1"), ("max_concurrency: [1]", "whole numbers")],
)
def test_executor_settings_are_checked(tmp_path: Path, executor: str, message: str) -> None:
    assert message in config_error(write(tmp_path / "config.yml", f"executor:\n  {executor}\n"))


def test_executor_settings_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "config.yml", "executor:\n  python_workers_per_pack: '2'\n"
                                                        "  max_concurrency: 8\n"))
    assert (config.python_workers_per_pack, config.max_concurrency) == (2, 8)


# ---------------------------------------------------------------------------------------------
# $SQUALL_CONFIG
# ---------------------------------------------------------------------------------------------


def test_squall_config_env_var_is_used(tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(elsewhere / "config.yml", "data_dir: from-cwd\n")
    file = write(tmp_path / "env" / "squall.yml", "data_dir: from-env\n")
    monkeypatch.setenv(CONFIG_ENV, str(file))
    config = load_config()
    assert config.path == file
    assert config.data_dir == tmp_path / "env" / "from-env"


def test_squall_config_env_var_relative_to_cwd(tmp_path: Path, elsewhere: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write(elsewhere / "conf" / "s.yml", "data_dir: d\n")
    monkeypatch.setenv(CONFIG_ENV, "conf/s.yml")
    config = load_config()
    assert config.path == elsewhere / "conf" / "s.yml"
    assert config.data_dir == elsewhere / "conf" / "d"


def test_explicit_path_beats_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path / "env.yml", "data_dir: env\n")))
    config = load_config(write(tmp_path / "arg.yml", "data_dir: arg\n"))
    assert config.data_dir == tmp_path / "arg"


def test_env_var_naming_a_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.yml"))
    assert config_error() == f"config file {tmp_path / 'missing.yml'} does not exist"
