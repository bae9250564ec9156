"""Config values that were read loosely and did something else than written: a section written twice
(the first dropped, deny rules with it), a string where a list of names belongs (read a letter at a
time), a quoted "false" (true by truthiness), misspelt adapter keys, ports out of range; and pack
edits made while `squall serve` starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterConfigError
from engine.config import CONFIG_ENV, ConfigError, load_config
from engine.yamlfile import load_yaml
from tests.conftest import write
from tests.test_cli import in_process, like_a_process, squall


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


# -- 1. a key written twice ------------------------------------------------------------------------

DENY_THEN_ADMINS = """\
runners: {allow_root: true}
adapters: {console: {enabled: true, user: mallory}}
auth:
  aliases:
    squall: {deny: {adapters: [console]}}
# appended months later by someone else
auth:
  admins: [alice]
"""


def test_a_section_written_twice_is_refused_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: the first `auth:` block, with its deny rule, was dropped
    without a word and the command it denied ran."""
    file = write(tmp_path / "config.yml", DENY_THEN_ADMINS)
    message = config_error(file)
    assert message.startswith(f"{file}:7: ")
    assert "duplicate key 'auth'" in message and "line 3" in message and "line 7" in message


def test_a_key_written_twice_deeper_down_is_refused_with_its_path(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", """
        auth:
          aliases:
            squall: {deny: {users: [root]}}
            linux: {deny: {users: [guest]}}
            squall: {allow: {users: [alice]}}
    """)
    message = config_error(file)
    assert "duplicate key 'auth.aliases.squall'" in message and "line 3" in message and "line 5" in message
    file = write(tmp_path / "config.yml", "auth:\n  aliases:\n    squall: {deny: {users: [root], users: [bob]}}\n")
    assert "duplicate key 'auth.aliases.squall.deny.users'" in config_error(file)


def test_a_key_beside_a_merge_is_found_at_its_own_line(tmp_path: Path) -> None:
    """Constructing puts the merged keys in front of the mapping's own: a line map read from the front
    named the anchor's line for a key the mapping overrides."""
    file = write(tmp_path / "a.yaml", "base: &base {cmd: one, timeout: 5}\naction:\n  <<: *base\n  cmd: two\n")
    data, lines = load_yaml(file)
    assert data["action"] == {"cmd": "two", "timeout": 5}
    assert lines.line("action", "cmd") == 4 and lines.line("action", "timeout") == 1
    assert pickle.loads(pickle.dumps(lines)).line("action", "cmd") == 4


def test_merge_keys_and_equal_keys_in_different_mappings_are_no_duplicates(tmp_path: Path) -> None:
    file = write(tmp_path / "config.yml", """
        routes:
          ops: &ops {adapter: console, channel: ops}
          dev:
            <<: *ops
            channel: dev
          qa: {<<: *ops, channel: qa}
    """)
    routes = load_config(file).section("routes")
    assert routes["dev"] == {"adapter": "console", "channel": "dev"}
    assert routes["qa"] == {"adapter": "console", "channel": "qa"}


def test_chat_with_a_section_written_twice_exits_2_without_running_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "config.yml", DENY_THEN_ADMINS)
    done = in_process(tmp_path, monkeypatch)("chat", stdin="!echo hi\n")
    assert done.exit_code == 2, done.stderr
    assert "duplicate key 'auth'" in done.stderr and "Traceback" not in done.stderr
    assert "Running" not in done.stdout


def test_a_duplicate_key_in_a_pack_file_warns_naming_file_and_line(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """StackStorm's loader keeps the last value, so packs load as they did there; the author is told."""
    file = write(tmp_path / "hello.yaml", """
        name: hello
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: echo one}
          cmd: {default: echo two}
    """)
    caplog.set_level(logging.WARNING, logger="engine.yamlfile")
    data, lines = load_yaml(file, "packs/demo/actions/hello.yaml")
    assert data["parameters"] == {"cmd": {"default": "echo two"}}
    assert lines.line("parameters", "cmd") == 5  # the line of the value used
    assert pickle.loads(pickle.dumps(lines)).line("parameters", "cmd") == 5  # as the pack cache keeps it
    (record,) = [r for r in caplog.records if "duplicate key" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("packs/demo/actions/hello.yaml:5: duplicate key 'parameters.cmd'")
    assert "line 4" in record.getMessage()


# -- 2. a string where a list of names belongs -------------------------------------------------------

def test_render_keys_as_a_string_is_refused(tmp_path: Path) -> None:
    """Iterated, `opsadmin` gave the render right to keys named o, p, s, a, d, m, i and n."""
    file = write(tmp_path / "config.yml", "api:\n  render_keys: opsadmin\n")
    message = config_error(file)
    assert "'api.render_keys' must be a list of API key names, such as [opsadmin]" in message
    file = write(tmp_path / "config.yml", "api:\n  render_keys: [opsadmin, 2024]\n")
    assert load_config(file).section("api")["render_keys"] == ["opsadmin", 2024]


def test_api_settings_made_in_code_refuse_a_string_of_render_keys() -> None:
    from bot.http.state import ApiSettings

    with pytest.raises(ConfigError, match=r"'api.render_keys' must be a list of API key names"):
        ApiSettings.from_config({"render_keys": "opsadmin"})
    settings = ApiSettings.from_config({"render_keys": ["opsadmin", 2024]})
    assert settings.render_keys == frozenset({"opsadmin", "2024"})


def test_api_keys_must_be_strings_and_are_never_quoted(tmp_path: Path) -> None:
    """`api.keys` may be one key or a list of them; a mapping there would become a key spelt like a dict.
    The error does not repeat the value: it holds secrets."""
    file = write(tmp_path / "config.yml", "api:\n  keys: [{k-secret-0123: 1}]\n")
    message = config_error(file)
    assert "'api.keys' must be an API key or a list of them" in message and "k-secret-0123" not in message
    file = write(tmp_path / "config.yml", "api:\n  keys: k-0123456789abcdef0123\n")
    assert load_config(file).section("api")["keys"] == "k-0123456789abcdef0123"


# -- 4. booleans and adapter keys ----------------------------------------------------------------------

def _config(tmp_path: Path, text: str) -> Any:
    return load_config(write(tmp_path / "config.yml", text))


@pytest.mark.parametrize("text, key", [
    ("adapters:\n  console: {enabled: 'false'}\n", "adapters.console.enabled"),
    ("adapters:\n  mattermost: {enabled: 'no', url: 'http://127.0.0.1:1', token: t}\n",
     "adapters.mattermost.enabled"),
    ("adapters:\n  mattermost: {enabled: true, url: 'http://127.0.0.1:1', token: t, files: 'false'}\n",
     "adapters.mattermost.files"),
])
def test_adapter_flags_must_be_true_or_false(tmp_path: Path, text: str, key: str) -> None:
    """A quoted "false" is a non-empty string: read by truthiness it turned the console adapter on."""
    from bot.service import configured_adapters

    config = _config(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"'{key}' must be true or false, not '(false|no)'"):
        configured_adapters(config)


def test_api_enabled_must_be_true_or_false(tmp_path: Path) -> None:
    from bot.service import api_enabled

    assert "'api.enabled' must be true or false, not 'false'" in config_error(
        write(tmp_path / "config.yml", "api:\n  enabled: 'false'\n"))
    config = _config(tmp_path, "api:\n  enabled: false\n")
    assert api_enabled(config) is False
    config.raw["api"]["enabled"] = "false"  # settings changed in code are checked too
    with pytest.raises(ConfigError, match=r"'api\.enabled' must be true or false"):
        api_enabled(config)


def test_chat_thread_replies_must_be_true_or_false(tmp_path: Path) -> None:
    assert "'chat.thread_replies' must be true or false, not 'no'" in config_error(
        write(tmp_path / "config.yml", "chat:\n  thread_replies: 'no'\n"))


@pytest.mark.parametrize("text, wrong, meant", [
    ("slack: {enable: true, bot_token: xoxb-1, app_token: xapp-1}", "slack.enable", "slack.enabled"),
    ("mattermost: {enabled: true, url: 'http://127.0.0.1:1', token: abc, tem: ops}", "mattermost.tem",
     "mattermost.team"),
    ("mattermost: {enabled: false, slash_tokn: zzz}", "mattermost.slash_tokn", "mattermost.slash_token"),
    ("console: {enabled: true, usr: alice}", "console.usr", "console.user"),
    ("irc: {enabled: false, sever: irc.example.org}", "irc.sever", "irc.server"),
])
def test_adapter_keys_are_checked_enabled_or_not(tmp_path: Path, text: str, wrong: str, meant: str) -> None:
    """`enable: true` left Slack off without a word; Mattermost and console took any key."""
    from bot.service import configured_adapters

    config = _config(tmp_path, f"adapters:\n  {text}\n")
    with pytest.raises(ConfigError) as caught:
        configured_adapters(config)
    assert f"unknown key 'adapters.{wrong}' (did you mean 'adapters.{meant}'?)" in str(caught.value)


def test_a_disabled_adapter_needs_no_settings(tmp_path: Path) -> None:
    from bot.service import configured_adapters

    config = _config(tmp_path, "adapters:\n  slack: {enabled: false, mode: http}\n  mattermost: {}\n"
                               "  console: {enabled: false, user: alice}\n")
    assert configured_adapters(config) == []


def test_the_adapters_own_checks_name_unknown_keys_with_the_nearest() -> None:
    from adapters import console
    from adapters.mattermost import MattermostSettings

    with pytest.raises(AdapterConfigError, match=r"unknown key 'adapters.mattermost.slash_tokn' \(did you mean "
                                                 r"'adapters.mattermost.slash_token'\?\)"):
        MattermostSettings.from_section({"url": "http://127.0.0.1:1", "token": "t", "slash_tokn": "z"})
    with pytest.raises(AdapterConfigError, match=r"'adapters.mattermost.files' must be true or false"):
        MattermostSettings.from_section({"url": "http://127.0.0.1:1", "token": "t", "files": "false"})
    with pytest.raises(AdapterConfigError, match=r"unknown key 'adapters.console.chanel' \(did you mean "
                                                 r"'adapters.console.channel'\?\)"):
        console.create({"enabled": True, "chanel": "ops"}, None)


def test_the_adapter_key_lists_are_the_adapters_own() -> None:
    """The lists checked for every section, enabled or not, are those each adapter reads."""
    from adapters import irc, slack
    from engine.config import ADAPTER_KEYS

    assert ADAPTER_KEYS["slack"] == frozenset(slack._KEYS)
    assert ADAPTER_KEYS["irc"] == frozenset(irc._KNOWN_KEYS)


# -- 5. ports ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("port", ["70000", "-1", "0", "true", "nine", "65536"])
def test_api_port_out_of_range_is_refused_naming_the_key(tmp_path: Path, port: str) -> None:
    message = config_error(write(tmp_path / "config.yml", f"api:\n  port: {port}\n"))
    assert "'api.port' must be a port number from 1 to 65535" in message


def test_api_port_in_range_is_taken(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "config.yml", "api:\n  port: 65535\n")).api_url.endswith(":65535/api/v1")
    assert load_config(write(tmp_path / "config.yml", "api:\n  port: '8080'\n")).api_url.endswith(":8080/api/v1")


def test_serve_with_a_port_out_of_range_exits_2_naming_the_key(home: Path) -> None:
    """It served without its API after an OverflowError (70000), or advised to stop what listens on -1."""
    config = home / "config.yml"
    text = config.read_text()
    start = text.index("port: ")
    for port in ("70000", "-1"):
        config.write_text(text[:start] + f"port: {port}\n")
        done = squall(home, "serve", timeout=60)
        assert done.returncode == 2, done.stderr
        assert "'api.port' must be a port number from 1 to 65535" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "OverflowError" not in done.stderr
        assert "Squall is serving" not in done.stderr


def test_check_api_address_names_the_key_for_settings_made_in_code(home: Path) -> None:
    import typer

    from bot.cli.serve import _check_api_address

    config = load_config(home / "config.yml")
    config.raw["api"]["port"] = 70000
    with pytest.raises(typer.Exit) as caught:
        _check_api_address(config)
    assert caught.value.exit_code == 2


def test_worker_health_port_out_of_range_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = like_a_process(home, monkeypatch)("worker", "--health-port", "70000")
    assert done.returncode == 2 and "--health-port" in done.stderr and "Traceback" not in done.stderr


# -- 3. pack edits while serve starts --------------------------------------------------------------------

async def test_a_pack_edit_while_serve_starts_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Housekeeping took its first look at the pack folders after "Squall is serving": an edit made
    between the packs' load and that look became the baseline and was never loaded."""
    from bot import service
    from bot.app import Squall

    write(tmp_path / "packs" / "good" / "pack.yaml", "ref: good\nname: good\nversion: 0.1.0\n")
    action = write(tmp_path / "packs" / "good" / "actions" / "hello.yaml", """
        name: hello
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: echo hello-good}
    """)
    config = load_config(write(tmp_path / "config.yml", "runners: {allow_root: true}\npacks: {paths: [packs]}\n"
                                                        "api: {enabled: false}\n"))
    original = Squall.start

    async def start_then_edit(cls: type[Squall], *args: Any, **kwargs: Any) -> Squall:
        app = await original(*args, **kwargs)
        action.write_text(action.read_text().replace("hello-good", "hello-NEW"))
        later = time.time() + 5  # surely newer than anything the load saw, whatever the clock's grain
        os.utime(action, (later, later))
        return app

    reloaded: list[str] = []
    ticked = asyncio.Event()
    tick = service.Housekeeping.tick

    async def spy_reload(squall: Squall) -> None:
        reloaded.append("packs")

    async def counted_tick(self: service.Housekeeping) -> None:
        await tick(self)
        ticked.set()

    monkeypatch.setattr(Squall, "start", classmethod(start_then_edit))
    monkeypatch.setattr(service, "reload", spy_reload)
    monkeypatch.setattr(service.Housekeeping, "tick", counted_tick)
    monkeypatch.setattr(service, "settle_heap", lambda: None)  # no gc.freeze() in the test process
    monkeypatch.setattr(service, "POLL_SECONDS", 0.05)
    task = asyncio.create_task(service.serve_forever(config, adapters=[]))
    try:
        async with asyncio.timeout(60):
            await ticked.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert reloaded == ["packs"]
