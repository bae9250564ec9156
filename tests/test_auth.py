"""Per-alias authorisation: users, groups, channels (by id or by name, on any adapter or on one) and adapters,
deny before allow, admins."""

from __future__ import annotations

from types import SimpleNamespace

from adapters.base import Message
from bot.chat.auth import Authorizer

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
