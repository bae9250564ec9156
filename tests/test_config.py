"""Tests for engine.config.load_config: defaults without a file, paths relative to the config file,
SQLite URLs, key checking with suggestions, YAML errors with lines and $SQUALL_CONFIG."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from engine.config import CONFIG_ENV, SYSTEM_PACKS_PATH, Config, ConfigError, load_config
from tests.conftest import REPO, write
from tests.test_cli import SQUALL


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


def test_adapter_and_route_sections_hold_their_own_names(tmp_path: Path) -> None:
    """`adapters.<name>` and `routes.<name>` are names people choose or adapters own: not checked here."""
    file = write(tmp_path / "config.yml", """
        chat:
          prefix: "?"
        api:
          host: 0.0.0.0
          port: 8080
        adapters: {slack: {enabled: false, anything: 1}}
        routes: {ops: {adapter: slack}}
    """)
    config = load_config(file)
    assert config.section("chat") == {"prefix": "?"}
    assert config.api_url == "http://0.0.0.0:8080/api/v1"
    assert config.section("routes") == {"ops": {"adapter": "slack"}}


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    message = config_error(write(tmp_path / "config.yml", "packs: [a, b]\n"))
    assert "'packs' must be a mapping, not list" in message
    config = load_config(write(tmp_path / "config.yml", "logging: [a]\n"))
    with pytest.raises(ConfigError, match="'logging' must be a mapping, not list"):
        config.section("logging")
    # chat, api and auth are checked key by key at load, so a list there is refused at once
    assert "'chat' must be a mapping, not list" in config_error(write(tmp_path / "config.yml", "chat: [a]\n"))


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
# auth, api, chat: what the chat's permissions and the API read, checked at load
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("auth", "message"), [
    ("alias: {}", "unknown key 'auth.alias' (did you mean 'auth.aliases'?)"),
    ("admin: [root]", "unknown key 'auth.admin' (did you mean 'auth.admins'?)"),
    ("aliases: {squall: {denny: {users: [root]}}}",
     "unknown key 'auth.aliases.squall.denny' (did you mean 'auth.aliases.squall.deny'?)"),
    ("aliases: {core.local: {deny: {user: [root]}}}",
     "unknown key 'auth.aliases.core.local.deny.user' (did you mean 'auth.aliases.core.local.deny.users'?)"),
    ("aliases: {squall: {allow: {group: [ops]}}}",
     "unknown key 'auth.aliases.squall.allow.group' (did you mean 'auth.aliases.squall.allow.groups'?)"),
    ("aliases: {squall: {allow: {channel: ['#ops']}}}",
     "unknown key 'auth.aliases.squall.allow.channel' (did you mean 'auth.aliases.squall.allow.channels'?)"),
])
def test_a_typo_under_auth_is_refused(tmp_path: Path, auth: str, message: str) -> None:
    """A misspelt key would leave a deny list empty: what it meant to refuse would run."""
    file = write(tmp_path / "config.yml", f"auth:\n  {auth}\n")
    assert config_error(file) == f"{file}: {message}"


@pytest.mark.parametrize(("auth", "message"), [
    ("admins: root", "'auth.admins' must be a list of user names, such as [alice], not 'root'"),
    ("groups: [ops]",
     "'auth.groups' must map group names to lists of users, such as {ops: [alice, bob]}, not ['ops']"),
    ("groups: {ops: alice}", "'auth.groups.ops' must be a list of user names, such as [alice], not 'alice'"),
    ("aliases: [squall]", "'auth.aliases' must map pack or alias refs to {allow: ..., deny: ...}, such as "
     "{squall: {deny: {users: [root]}}}, not ['squall']"),
    ("aliases: {squall: [root]}",
     "'auth.aliases.squall' must be a mapping such as {deny: {users: [root]}}, not ['root']"),
    ("aliases: {squall: {deny: [root]}}",
     "'auth.aliases.squall.deny' must be a mapping of users, groups, channels and adapters, such as "
     "{users: [root]}, not ['root']"),
    ("aliases: {squall: {deny: {users: root}}}",
     "'auth.aliases.squall.deny.users' must be a list of names, such as [root], not 'root'"),
    ("aliases: {squall: {deny: {users: [1234]}}}",
     "'auth.aliases.squall.deny.users' must be a list of names, such as [root], not [1234] "
     "(quote a name that looks like a number)"),
])
def test_a_wrong_value_under_auth_is_refused(tmp_path: Path, auth: str, message: str) -> None:
    """A string where a list belongs is read a letter at a time (`root` would deny `r`, `o`, `t`)."""
    file = write(tmp_path / "config.yml", f"auth:\n  {auth}\n")
    assert config_error(file) == f"{file}: {message}"


def test_every_documented_auth_api_and_chat_key_is_accepted(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", """
        api:
          enabled: true
          host: 127.0.0.1
          port: 9101
          keys: [k-0123456789abcdef0123]
          max_body_bytes: 4096
          token_ttl: 600
          render_keys: [deploy]
          public_docs: false
          webhooks:
            ci: {secret: s, tolerance: 60, legacy_signature: false}
            st2:
        chat:
          prefix: "!"
          bot_name: squall
          thread_replies: false
          confirm_ttl: 30
          suggest: {ranker: lexical, threshold: 0.5, margin: 0.1}
          favourites: [linux.restart]
        auth:
          admins: [root-admin, 1234]
          groups: {ops: [alice, bob], empty: }
          aliases:
            squall: {allow: {users: [alice], groups: [ops], channels: ['#ops', 42], adapters: [console]},
                     deny: {users: [mallory]}}
            core.local: {deny: }
            linux:
        routes:
          ops: {adapter: irc, channel: "#ops"}
    """)
    config = load_config(file)
    assert config.section("auth")["aliases"]["squall"]["deny"] == {"users": ["mallory"]}


def test_the_auth_keys_checked_are_those_the_chat_reads() -> None:
    """`engine.config` cannot import the alias model: its lists must stay the model's."""
    from aliases.model import PERMISSION_KINDS, PERMISSION_SIDES
    from engine.config import AUTH_RULE_KINDS, AUTH_RULE_SIDES

    assert AUTH_RULE_KINDS == PERMISSION_KINDS
    assert set(AUTH_RULE_SIDES) == PERMISSION_SIDES


def test_the_shipped_config_file_loads() -> None:
    assert load_config(REPO / "config.yml").section("chat")["prefix"] == "!"


@pytest.mark.parametrize(("section", "message"), [
    ("api:\n  max_body: 5", "unknown key 'api.max_body' (did you mean 'api.max_body_bytes'?)"),
    ("api:\n  public_doc: false", "unknown key 'api.public_doc' (did you mean 'api.public_docs'?)"),
    ("api:\n  webhooks: {ci: {secrett: x}}",
     "unknown key 'api.webhooks.ci.secrett' (did you mean 'api.webhooks.ci.secret'?)"),
    ("api:\n  webhooks: {ci: {legacy_signatures: false}}",
     "unknown key 'api.webhooks.ci.legacy_signatures' (did you mean 'api.webhooks.ci.legacy_signature'?)"),
    ("chat:\n  confirm_tll: 5", "unknown key 'chat.confirm_tll' (did you mean 'chat.confirm_ttl'?)"),
    ("chat:\n  favorites: [a.b]", "unknown key 'chat.favorites' (did you mean 'chat.favourites'?)"),
    ("routes:\n  ops: {adapter: irc, chanel: '#ops'}",
     "unknown key 'routes.ops.chanel' (did you mean 'routes.ops.channel'?)"),
    ("routes:\n  ops: irc", "'routes.ops' must be a mapping such as {adapter: irc, channel: '#ops'}, not 'irc'"),
])
def test_a_typo_under_api_chat_or_routes_is_refused(tmp_path: Path, section: str, message: str) -> None:
    file = write(tmp_path / "config.yml", section + "\n")
    assert config_error(file) == f"{file}: {message}"


@pytest.mark.parametrize(("section", "message"), [
    ("chat:\n  confirm_ttl: 1m", "'chat.confirm_ttl' must be a number of seconds above 0, such as 60, not '1m'"),
    ("chat:\n  confirm_ttl: 0", "'chat.confirm_ttl' must be a number of seconds above 0, such as 60, not 0"),
    ("chat:\n  confirm_ttl: true",
     "'chat.confirm_ttl' must be a number of seconds above 0, such as 60, not True"),
    ("api:\n  max_body_bytes: 1MiB",
     "'api.max_body_bytes' must be a whole number of bytes above 0, such as 1048576 (1 MiB), not '1MiB'"),
    ("api:\n  max_body_bytes: 0",
     "'api.max_body_bytes' must be a whole number of bytes above 0, such as 1048576 (1 MiB), not 0"),
    ("api:\n  max_body_bytes: -1",
     "'api.max_body_bytes' must be a whole number of bytes above 0, such as 1048576 (1 MiB), not -1"),
    ("api:\n  max_body_bytes: 1.5",
     "'api.max_body_bytes' must be a whole number of bytes above 0, such as 1048576 (1 MiB), not 1.5"),
    ("api:\n  token_ttl: 1d", "'api.token_ttl' must be a whole number of seconds above 0, not '1d'"),
])
def test_a_number_in_the_wrong_form_is_refused_at_load(tmp_path: Path, section: str, message: str) -> None:
    """Every command reads the file: each refuses it alike, naming the key, instead of a traceback
    where the value is first used (`squall run` building the chat, `squall serve` the API)."""
    file = write(tmp_path / "config.yml", section + "\n")
    assert config_error(file) == f"{file}: {message}"


def test_numbers_in_the_right_form_are_read(tmp_path: Path) -> None:
    from bot.chat.dispatcher import ChatSettings
    from bot.http.state import DEFAULT_MAX_BODY, ApiSettings

    config = load_config(write(tmp_path / "config.yml", "chat: {confirm_ttl: 2.5}\napi: {max_body_bytes: 2048}\n"))
    assert ChatSettings.from_config(config.section("chat")).confirm_ttl == 2.5
    assert ApiSettings.from_config(config.section("api")).max_body == 2048
    assert ChatSettings.from_config({}).confirm_ttl == 60
    assert ApiSettings.from_config({}).max_body == DEFAULT_MAX_BODY
    with pytest.raises(ConfigError, match=r"'chat\.confirm_ttl' must be a number of seconds above 0"):
        ChatSettings.from_config({"confirm_ttl": "1m"})
    with pytest.raises(ConfigError, match=r"'api\.max_body_bytes' must be a whole number of bytes above 0"):
        ApiSettings.from_config({"max_body_bytes": 0})


@pytest.mark.parametrize("section", ["chat:\n  confirm_ttl: 1m", "api:\n  max_body_bytes: 1MiB",
                                     "auth:\n  aliases: {squall: {deny: {user: [root]}}}"])
def test_the_cli_refuses_such_a_file_in_one_line_with_exit_2(tmp_path: Path, section: str) -> None:
    file = write(tmp_path / "config.yml", section + "\n")
    done = subprocess.run([str(SQUALL), "-c", str(file), "run", "core.noop"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {file}: ") and section.split(":")[0] + "." in line


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
    assert config_error(tmp_path).startswith(f"config file {tmp_path} is a folder, not a file")


@pytest.mark.parametrize(
    ("executor", "message"),
    [("python_workers_per_pack: many", "'executor.python_workers_per_pack' must be a whole number"),
     ("max_concurrency: 0", "'executor.max_concurrency' must be a whole number of at least 1"),
     ("python_workers_per_pack: -2", "'executor.python_workers_per_pack' must be a whole number of at least 1"),
     ("max_concurrency: [1]", "'executor.max_concurrency' must be a whole number")],
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


def test_workflows_max_depth_is_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("workflows:\n  max_depth: 7\n")
    assert load_config(tmp_path / "config.yml").workflow_max_depth == 7
    (tmp_path / "config.yml").write_text("workflows:\n  max_depth: 0\n")
    with pytest.raises(ConfigError, match=r"'workflows.max_depth' must be a whole number of at least 1"):
        load_config(tmp_path / "config.yml")
