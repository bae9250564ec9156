"""Who may run which alias: allow and deny lists of users, groups, channels and adapters.

Rules come from the alias itself (`permissions:` in its YAML, a Squall extension) or else from
config, per alias ref or per pack (`auth.aliases: {"<pack>": {...}, "<pack>.<alias>": {...}}`).
A deny always wins; an allow list, when present, admits only what it names; admins (config
`auth.admins`) may run everything. Groups are config `auth.groups` plus whatever platform groups
the adapter reports for the user.

A channel is named by its id, its name or `#name`, on any adapter, or qualified by one,
`slack:C024BE91L` or `irc:#ops`: only there. A name is whatever the platform reports, and people
choose names: anyone may create a Slack channel called `console` or join an unregistered
`#ops` on IRC. So what only the terminal may do is allowed by `adapters: [console]` (the
adapter's name, which no one in a chat can choose), never by a channel's name.

The config keys read here are `engine.config`'s `AUTH_KEYS`, `AUTH_RULE_SIDES` and `AUTH_RULE_KINDS`:
`load_config` refuses any other (`check_auth`), since a misspelt deny list would deny nobody. A key
read here must be added there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.base import Message
from aliases.model import PERMISSION_KINDS


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


#: Every allowed command's answer: one made once, not one per command.
ALLOWED = Decision(True)


@dataclass
class Authorizer:
    admins: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Authorizer:
        groups = {str(name): {str(u) for u in members or []} for name, members in (section.get("groups") or {}).items()}
        return cls(admins={str(a) for a in section.get("admins") or []}, groups=groups,
                   rules=dict(section.get("aliases") or {}))

    def groups_of(self, message: Message) -> set[str]:
        return self.member_of(message.user) | set(message.groups)

    def member_of(self, user: str | None) -> set[str]:
        """The config groups (`auth.groups`) that list `user`: all there is of their groups where no
        platform reports any (the API, the CLI, the web answering an inquiry's `roles`)."""
        if not user:
            return set()
        return {name for name, members in self.groups.items() if user in members}

    def rules_for(self, alias: Any) -> dict[str, Any] | None:
        if getattr(alias, "permissions", None):
            return alias.permissions
        return self.rules.get(alias.ref) or self.rules.get(alias.pack)

    def check(self, alias: Any, message: Message) -> Decision:
        if message.user in self.admins:
            return ALLOWED
        rules = self.rules_for(alias)
        if not rules:
            return ALLOWED
        groups = self.groups_of(message)
        deny = rules.get("deny") or {}
        channels = _channels(message)
        if _hits(deny, message, groups, channels):
            return Decision(False, f"{message.user} is denied {alias.ref} ({_why(deny, message, groups)})")
        allow = rules.get("allow")
        if allow is None:
            return ALLOWED
        if _hits(allow, message, groups, channels):
            return ALLOWED
        names = ", ".join(f"{kind} {', '.join(map(str, allow.get(kind) or []))}"
                          for kind in PERMISSION_KINDS if allow.get(kind))
        return Decision(False, f"{alias.ref} is allowed only for {names or 'nobody'}")

    def is_admin(self, message: Message) -> bool:
        return message.user in self.admins


def _channels(message: Message) -> set[str]:
    """How config may name the message's channel: its id, its name and its name with `#`, each also
    qualified by the adapter (`slack:C024BE91L`). A bare name with a colon would pass for another
    adapter's qualified one (an API request naming its channel `slack:C024BE91L`); no platform's
    channel names hold one, so only its qualified form (`api:slack:C024BE91L`) is kept."""
    names = {message.channel}
    if message.channel_name:
        names |= {message.channel_name, f"#{message.channel_name.lstrip('#')}"}
    return {name for name in names if ":" not in name} | {f"{message.adapter}:{name}" for name in names}


def _hits(section: Mapping[str, Any], message: Message, groups: Iterable[str], channels: set[str]) -> bool:
    return (message.user in (section.get("users") or []) or bool(set(groups) & set(section.get("groups") or []))
            or bool(channels & {str(c) for c in section.get("channels") or []})
            or message.adapter in (section.get("adapters") or []))


def _why(section: Mapping[str, Any], message: Message, groups: set[str]) -> str:
    if message.user in (section.get("users") or []):
        return f"user {message.user}"
    shared = groups & set(section.get("groups") or [])
    if shared:
        return f"group {', '.join(sorted(shared))}"
    if message.adapter in (section.get("adapters") or []):
        return f"adapter {message.adapter}"
    return f"channel {message.channel_name or message.channel}"
