"""Per-alias authorisation: users, groups, channels (by id or by name, on any adapter or on one) and adapters,
deny before allow, admins."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters.base import Message
from bot.chat.auth import Authorizer
from engine.config import ConfigError, check_auth, load_config
from tests.test_chat import _config, loopback_chat, settle

ALIAS = SimpleNamespace(ref="ops.restart", pack="ops", permissions=None)


def message(user: str = "alice", channel: str = "C024BE91L", channel_name: str | None = None,
            groups: list[str] | None = None) -> Message:
    return Message(adapter="slack", channel=channel, user=user, text="restart", channel_name=channel_name,
                   groups=groups or [])


def test_channels_match_by_id_or_by_name() -> None:
    auth = Authorizer.from_config({"aliases": {"ops.restart": {"allow": {"channels": ["#ops"]}}}})
    assert auth.check(ALIAS, message(channel_name="ops")).allowed
    assert auth.check(ALIAS, message(channel="#ops")).allowed  # IRC: the id is the name
    refused = auth.check(ALIAS, message(channel_name="random"))
    assert not refused.allowed and refused.reason == "ops.restart is allowed only for channels #ops"
    by_id = Authorizer.from_config({"aliases": {"ops": {"allow": {"channels": ["C024BE91L"]}}}})
    assert by_id.check(ALIAS, message(channel_name="ops")).allowed


def test_a_qualified_channel_or_an_adapter_matches_on_that_adapter_only() -> None:
    """People choose channel names on every platform: `irc:#ops` is IRC's #ops only, and `adapters:
    [console]` the terminal only, whatever a Slack channel is called."""
    irc_ops = Authorizer.from_config({"aliases": {"ops": {"allow": {"channels": ["irc:#ops"]}}}})
    assert irc_ops.check(ALIAS, Message(adapter="irc", channel="#ops", user="alice", text="restart")).allowed
    assert not irc_ops.check(ALIAS, message(channel_name="ops")).allowed  # a Slack channel named ops
    slack_id = Authorizer.from_config({"aliases": {"ops": {"allow": {"channels": ["slack:C024BE91L"]}}}})
    assert slack_id.check(ALIAS, message()).allowed
    assert not slack_id.check(ALIAS, Message(adapter="mattermost", channel="C024BE91L", user="alice",
                                             text="restart")).allowed
    terminal = Authorizer.from_config({"aliases": {"ops": {"allow": {"adapters": ["console"]}}}})
    assert terminal.check(ALIAS, Message(adapter="console", channel="console", user="root", text="restart")).allowed
    refused = terminal.check(ALIAS, message(channel="CEVIL001", channel_name="console"))
    assert not refused.allowed and refused.reason == "ops.restart is allowed only for adapters console"
    # The API takes the channel a request names: `slack:C024BE91L` there is the API's, not Slack's.
    spoofed = Message(adapter="api", channel="slack:C024BE91L", user="bob", text="restart")
    assert not slack_id.check(ALIAS, spoofed).allowed
    assert not irc_ops.check(ALIAS, Message(adapter="api", channel="irc:#ops", user="bob", text="restart")).allowed
    no_bots = Authorizer.from_config({"aliases": {"ops": {"deny": {"adapters": ["irc"]}}}})
    denied = no_bots.check(ALIAS, Message(adapter="irc", channel="#ops", user="alice", text="restart"))
    assert not denied.allowed and denied.reason == "alice is denied ops.restart (adapter irc)"
    assert no_bots.check(ALIAS, message()).allowed


def test_deny_wins_over_allow_and_admins_pass() -> None:
    auth = Authorizer.from_config({
        "admins": ["root"],
        "groups": {"oncall": ["alice", "bob"]},
        "aliases": {"ops": {"allow": {"groups": ["oncall"]}, "deny": {"users": ["bob"], "channels": ["general"]}}},
    })
    assert auth.check(ALIAS, message("alice")).allowed
    denied = auth.check(ALIAS, message("bob"))
    assert not denied.allowed and denied.reason == "bob is denied ops.restart (user bob)"
    in_general = auth.check(ALIAS, message("alice", channel_name="general"))
    assert not in_general.allowed and in_general.reason == "alice is denied ops.restart (channel general)"
    assert not auth.check(ALIAS, message("carol")).allowed
    assert auth.check(ALIAS, message("carol", groups=["oncall"])).allowed  # a platform group mapped by the adapter
    assert auth.check(ALIAS, message("root", channel_name="general")).allowed


def irc(user: str, channel: str = "#ops") -> Message:
    return Message(adapter="irc", channel=channel, user=user, text="restart")


NOBODY = {"aliases": {"ops": {"allow": {"users": []}}}}


def test_an_irc_nick_equal_to_an_admins_name_is_not_that_admin() -> None:
    """Anyone may `/nick carol` on IRC: a bare name is the platform's person on Slack, Mattermost and the
    console, never an IRC nick; `irc:carol` names the nick, `slack:carol` Slack's carol only."""
    bare = Authorizer.from_config({"admins": ["carol"], **NOBODY})
    assert bare.is_admin(message("carol")) and bare.check(ALIAS, message("carol")).allowed
    assert not bare.is_admin(irc("carol"))
    refused = bare.check(ALIAS, irc("carol"))
    assert not refused.allowed and refused.reason == "ops.restart is allowed only for nobody"
    qualified = Authorizer.from_config({"admins": ["irc:carol", "slack:dave"], **NOBODY})
    assert qualified.is_admin(irc("carol")) and qualified.check(ALIAS, irc("carol")).allowed
    assert not qualified.is_admin(message("carol"))  # irc:carol is the nick, not Slack's carol
    assert qualified.is_admin(message("dave"))
    assert not qualified.is_admin(Message(adapter="mattermost", channel="town", user="dave", text="restart"))
    # The API takes the user a config key names: one called `irc:carol` is the API's, not IRC's carol.
    assert not qualified.is_admin(Message(adapter="api", channel="api", user="irc:carol", text="restart"))
    assert not bare.check(ALIAS, replace(message("carol"), user="")).allowed  # help's "ordinary" person


def test_an_irc_nick_is_in_a_group_or_an_allow_list_only_when_qualified() -> None:
    auth = Authorizer.from_config({
        "groups": {"oncall": ["alice", "irc:bob"]},
        "aliases": {"ops": {"allow": {"groups": ["oncall"], "users": ["erin", "irc:frank"]}}},
    })
    assert auth.check(ALIAS, message("alice")).allowed and auth.check(ALIAS, message("erin")).allowed
    assert not auth.check(ALIAS, irc("alice")).allowed
    assert not auth.check(ALIAS, irc("erin")).allowed
    assert auth.check(ALIAS, irc("bob")).allowed and auth.check(ALIAS, irc("frank")).allowed
    assert not auth.check(ALIAS, message("bob")).allowed and not auth.check(ALIAS, message("frank")).allowed
    assert auth.groups_of(irc("alice")) == set() and auth.groups_of(irc("bob")) == {"oncall"}
    # Outside chat (the API's, the CLI's and the web's inquiry answers) the user is authenticated: bare names.
    assert auth.member_of("alice") == {"oncall"} and auth.member_of("bob") == set()
    assert auth.member_of("alice", "irc") == set() and auth.member_of("bob", "irc") == {"oncall"}


def test_a_deny_by_bare_name_still_refuses_the_irc_nick() -> None:
    """A deny only refuses: one that also refuses whoever took the denied name on IRC grants nobody anything,
    and a deny list written before qualified names existed keeps refusing what it refused."""
    auth = Authorizer.from_config({
        "groups": {"contractors": ["mallory"], "oncall": ["irc:bob", "irc:mallory"]},
        "aliases": {"ops": {"allow": {"groups": ["oncall"]}, "deny": {"users": ["bob"], "groups": ["contractors"]}}},
    })
    denied = auth.check(ALIAS, irc("bob"))
    assert not denied.allowed and denied.reason == "bob is denied ops.restart (user bob)"
    by_group = auth.check(ALIAS, irc("mallory"))
    assert not by_group.allowed and by_group.reason == "mallory is denied ops.restart (group contractors)"
    qualified = Authorizer.from_config({"aliases": {"ops": {"deny": {"users": ["irc:bob"]}}}})
    assert not qualified.check(ALIAS, irc("bob")).allowed and qualified.check(ALIAS, message("bob")).allowed


def test_the_bare_names_irc_no_longer_matches_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authorizer.from_config({
        "admins": ["carol", "irc:dave"],
        "groups": {"approvers": ["ann", "slack:bea"], "ops": ["irc:olivia"]},
        "aliases": {"ops": {"allow": {"users": ["erin"]}, "deny": {"users": ["mallory"]}}},
    })
    warning = auth.irc_warning()
    assert warning is not None
    assert "auth.admins: carol; auth.groups.approvers: ann; auth.aliases.ops.allow.users: erin" in warning
    assert "irc:NAME" in warning and "irc:carol" in warning
    assert "dave" not in warning and "bea" not in warning and "mallory" not in warning
    with caplog.at_level(logging.WARNING, logger="bot.chat.auth"):
        auth.check(ALIAS, message("carol"))
        auth.check(ALIAS, irc("carol"))  # said at the chat's start (`ChatBot.start`), never by a message
        auth.is_admin(irc("ann"))
        assert not caplog.records
        auth.warn_irc()
        auth.warn_irc()
    assert [r.getMessage() for r in caplog.records] == [warning]
    assert Authorizer.from_config({"admins": ["irc:carol", "slack:carol"]}).irc_warning() is None


async def test_the_irc_warning_is_logged_once_as_the_chat_starts_with_irc(home: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Said as the chat starts with IRC on, before anyone there is refused, not at IRC's first message (a
    quiet channel would say it late or never): once, whatever follows. A chat without IRC says nothing."""
    _config(home)  # admins: [root-admin], groups: {operators: [olivia]}
    warning = Authorizer.from_config(load_config(home / "config.yml").section("auth")).irc_warning()
    assert warning is not None and "auth.admins: root-admin; auth.groups.operators: olivia" in warning
    with caplog.at_level(logging.WARNING, logger="bot.chat.auth"):
        async with loopback_chat(home, "irc") as (squall, bot, chat):
            assert [r.getMessage() for r in caplog.records if r.name == "bot.chat.auth"] == [warning]
            await chat.say("!help", user="olivia")
            await chat.say("!greet world", user="root-admin")
            await settle(squall, bot)
            assert chat.texts()  # both answered
    assert [r.getMessage() for r in caplog.records if r.name == "bot.chat.auth"] == [warning]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bot.chat.auth"):
        async with loopback_chat(home) as (squall, bot, chat):
            await chat.say("!help", user="olivia")
            await settle(squall, bot)
    assert not [r for r in caplog.records if r.name == "bot.chat.auth"]


def test_a_user_whose_name_has_a_colon_keeps_what_config_grants_it() -> None:
    """An API key named `ci:deploy` (its part before the colon names no adapter) is that name, as before
    qualified names: an admin, a group member on the API and in an inquiry's roles, allowed by name. One
    named `irc:carol` is only `api:irc:carol`, never the IRC nick carol's entry."""
    auth = Authorizer.from_config({"admins": ["ci:deploy"], "groups": {"deployers": ["ci:deploy", "api:irc:carol"]},
                                   "aliases": {}})
    assert auth.member_of("ci:deploy") == {"deployers"}
    assert auth.member_of("irc:carol") == {"deployers"}
    assert Authorizer.from_config({"admins": ["irc:carol"]}).member_of("irc:carol") == set()
    assert auth.is_admin(Message(adapter="api", channel="api", user="ci:deploy", text="x"))
    assert not Authorizer.from_config({"admins": ["irc:carol"]}).is_admin(
        Message(adapter="api", channel="api", user="irc:carol", text="x"))


def test_a_qualified_name_must_name_an_adapter_in_config() -> None:
    """`ircc:carol` would name nobody: in a deny list, everybody would pass. A name whose part before the
    colon is no adapter's name nor one misspelt is a user whose name has a colon (an API key `ci:deploy`),
    as configs written before qualified names have them."""
    check_auth({"admins": ["irc:carol", "slack:carol", "mattermost:dave", "console:root", "api:hubot", "ann"],
                "groups": {"ops": ["irc:bob", "ci:deploy", "team:oncall"]},
                "aliases": {"ops": {"allow": {"users": ["irc:erin", "ci:deploy"]}}}})
    with pytest.raises(ConfigError) as typo:
        check_auth({"aliases": {"ops": {"deny": {"users": ["ircc:mallory"]}}}})
    assert str(typo.value) == ("'auth.aliases.ops.deny.users' entry 'ircc:mallory' is qualified by 'ircc', which is "
                               "no adapter: did you mean irc:mallory? A user whose own name holds a colon is written "
                               "api:ircc:mallory")
    with pytest.raises(ConfigError) as empty:
        check_auth({"groups": {"ops": ["irc:"]}})
    assert str(empty.value) == ("'auth.groups.ops' entry 'irc:' names nobody after 'irc:': write the user's name "
                                "after it, such as irc:alice")


def test_a_platform_user_id_names_its_person_on_that_platform_only() -> None:
    """`slack:U0123ABCD` and `mattermost:<id>` name the person Slack or Mattermost says wrote by that id
    (`Message.user_id`), whatever their user name now, as admin, group member or in a deny list. The
    same id in what another adapter hands on (an API request's body, IRC) names no one, nor does a bare
    id, another platform's qualifier, or an id in the platform's payload (`raw`) rather than the field."""
    mattermost_id = "8sm3ghqj7jg1ppo9orbhp7dh4e"
    auth = Authorizer.from_config({"admins": ["slack:U0123ABCD", f"mattermost:{mattermost_id}"],
                                   "groups": {"oncall": ["slack:U0ONCALL1"]},
                                   "aliases": {"ops": {"allow": {"groups": ["oncall"]},
                                                       "deny": {"users": ["slack:U0BADBAD1"]}}}})

    def said(adapter: str, user: str, user_id: str) -> Message:
        return Message(adapter=adapter, channel="C024BE91L", user=user, text="restart",
                       raw={"event": {"user": user_id}}, user_id=user_id)

    assert auth.is_admin(said("slack", "carol.renamed", "U0123ABCD"))
    assert auth.is_admin(said("mattermost", "renamed", mattermost_id))
    assert not auth.is_admin(said("mattermost", "carol", "U0123ABCD"))  # Slack's id, on Mattermost
    assert not auth.is_admin(said("api", "carol", "U0123ABCD"))  # only Slack and Mattermost say one
    assert not auth.is_admin(said("irc", "carol", "U0123ABCD"))
    assert auth.check(ALIAS, said("slack", "dave", "U0ONCALL1")).allowed
    assert auth.groups_of(said("slack", "dave", "U0ONCALL1")) == {"oncall"}
    denied = auth.check(ALIAS, said("slack", "mallory", "U0BADBAD1"))
    assert not denied.allowed and denied.reason == "mallory is denied ops.restart (user slack:U0BADBAD1)"
    bare = Authorizer.from_config({"admins": ["U0123ABCD"]})
    assert not bare.is_admin(said("slack", "carol", "U0123ABCD"))  # an id names no one bare
    in_raw = Message(adapter="slack", channel="C024BE91L", user="carol", text="restart", raw={"user_id": "U0123ABCD"})
    assert not auth.is_admin(in_raw)  # `raw` is the platform's payload as it came, never read for who wrote
