"""Per-alias authorisation: users, groups and channels (by id or by name), deny before allow, admins."""

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
