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

A person is named by their name, bare (`carol`) or qualified by the adapter (`slack:carol`, `irc:carol`):
only there (the rule is `engine.identity`'s, which the engine reads an inquiry's `users` by too). A bare
name is the platform's person where the platform says who wrote (Slack's and Mattermost's user names,
looked up on the server; the console's configured user; the API's key or token), but never on IRC, where
anyone may `/nick carol`: there only `irc:carol` grants anything (admin, group member, approver, allow
list), so an IRC nick is never a Slack or Mattermost person of the same name. A deny list's bare names
refuse the IRC nick too: a deny grants nothing, so the stricter reading costs no one a right. A bare name
that reads qualified (an API request acting as `irc:carol`) is only its qualified self (`api:irc:carol`),
as a channel's is; `ci:deploy`, whose part before the colon names no adapter, is a name like any other.
Config that grants to bare names while IRC is on is said once in the log as the chat starts (`warn_irc`,
from `ChatBot.start`), since an upgrade took those names' rights on IRC away. What a person started is
theirs by the same rule (`same_person`): the nick carol owns what it started on IRC only, and nothing
Slack's or the API's carol started.

Slack and Mattermost also say who wrote by the platform's user id, which no one can change or choose
(a Slack `U…`, a Mattermost 26-character id; `platform_id`, from `Message.user_id`), where the user name
may be changed (a Mattermost server that lets people rename themselves). So config may name a person by
it, qualified (`slack:U0123ABCD`, `mattermost:<id>`): it names them whatever their name is now. The bot
keeps the id wherever it keeps the message (sessions, an approval's requester), so a right granted by it
holds when the command is checked again (a `yes`, an approval, after a restart).

The config keys read here are `engine.config`'s `AUTH_KEYS`, `AUTH_RULE_SIDES` and `AUTH_RULE_KINDS`:
`load_config` refuses any other (`check_auth`), since a misspelt deny list would deny nobody, and a
user qualified by an adapter's name misspelt (`ircc:carol`). A key read here must be added there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.base import Message
from aliases.model import PERMISSION_KINDS
from engine.identity import CHOSEN_NAMES, names_of, person, reads_qualified, same_person

log = logging.getLogger(__name__)

#: Adapters that say who wrote by the platform's user id too (`Message.user_id`: Slack's `U…`,
#: Mattermost's 26 characters), which no one can change or choose: config may name a person by it,
#: qualified by the adapter (`slack:U0123ABCD`).
PLATFORM_IDS = frozenset({"slack", "mattermost"})

#: What the chat reads of `engine.identity` (the rule the engine names inquiries' answerers by too)
#: is imported from here as well.
__all__ = ["ALLOWED", "CHOSEN_NAMES", "PLATFORM_IDS", "Authorizer", "Decision", "denied_names", "names_of", "person",
           "platform_id", "same_person", "same_sender", "sender_names"]


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
    #: The IRC warning (`irc_warning`) was logged: once per process.
    _warned: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Authorizer:
        groups = {str(name): {str(u) for u in members or []} for name, members in (section.get("groups") or {}).items()}
        return cls(admins={str(a) for a in section.get("admins") or []}, groups=groups,
                   rules=dict(section.get("aliases") or {}))

    def groups_of(self, message: Message) -> set[str]:
        """The sender's groups, to grant them something (an allow list, an approval, an inquiry's roles)."""
        return self._member(self._names(message)) | set(message.groups)

    def member_of(self, user: str | None, adapter: str | None = None) -> set[str]:
        """The config groups (`auth.groups`) that list `user` of `adapter`: all there is of their groups
        where no platform reports any (the API, the CLI, the web answering an inquiry's `roles`, whose
        user is authenticated: no adapter, so bare names only)."""
        return self._member(names_of(adapter, user))

    def _member(self, names: set[str]) -> set[str]:
        return {name for name, members in self.groups.items() if names & members}

    def rules_for(self, alias: Any) -> dict[str, Any] | None:
        if getattr(alias, "permissions", None):
            return alias.permissions
        if not self.rules:  # no config rules (the default): none to look up by ref or pack
            return None
        return self.rules.get(alias.ref) or self.rules.get(alias.pack)

    def check(self, alias: Any, message: Message) -> Decision:
        # No admins configured (the default): nobody is one, and the sender's names are not made for it.
        if self.admins and self.is_admin(message):
            return ALLOWED
        rules = self.rules_for(alias)
        if not rules:
            return ALLOWED
        channels = _channels(message)
        deny = rules.get("deny") or {}
        refused = denied_names(message)
        refused_groups = self._member(refused) | set(message.groups)
        if _hits(deny, refused, refused_groups, channels, message.adapter):
            why = _why(deny, message, refused, refused_groups)
            return Decision(False, f"{message.user} is denied {alias.ref} ({why})")
        allow = rules.get("allow")
        if allow is None:
            return ALLOWED
        names = self._names(message)
        if _hits(allow, names, self._member(names) | set(message.groups), channels, message.adapter):
            return ALLOWED
        listed = ", ".join(f"{kind} {', '.join(map(str, allow.get(kind) or []))}"
                           for kind in PERMISSION_KINDS if allow.get(kind))
        return Decision(False, f"{alias.ref} is allowed only for {listed or 'nobody'}")

    def is_admin(self, message: Message) -> bool:
        return bool(self._names(message) & self.admins)

    def _names(self, message: Message) -> set[str]:
        """`sender_names`: how config may name the sender to grant them something."""
        return sender_names(message)

    def irc_warning(self) -> str | None:
        """What an upgrade changed for IRC: the config entries that grant to a bare name, which IRC no
        longer matches, and how to write them; None when there are none."""
        unmatched = list(self._bare_grants())
        if not unmatched:
            return None
        first = next(name for _where, names in unmatched for name in names)
        listed = "; ".join(f"{where}: {', '.join(names)}" for where, names in unmatched)
        return (f"IRC nicks are not authenticated (anyone may take a free nick), so these bare names in config auth "
                f"no longer match anyone on IRC: {listed}. They still match on Slack, Mattermost, the console and "
                f"the API. To grant an IRC nick, list it as irc:NAME (irc:{first}), knowing that whoever takes that "
                "nick gets what it is granted; deny lists still refuse bare names on IRC (docs/irc.md)")

    def warn_irc(self) -> None:
        """Log `irc_warning` once per process: as the chat starts with IRC on (`ChatBot.start`), before
        anyone on IRC is refused what a bare name no longer grants them, and whether or not anyone there
        ever speaks (a warning at the first IRC message came late, or never); a later call says nothing."""
        if self._warned:
            return
        self._warned = True
        warning = self.irc_warning()
        if warning is not None:
            log.warning("%s", warning)

    def _bare_grants(self) -> Iterator[tuple[str, list[str]]]:
        """Where config `auth` grants to bare names (admins, group members, allow lists), with them."""
        lists: list[tuple[str, Iterable[Any]]] = [("auth.admins", self.admins)]
        lists += [(f"auth.groups.{group}", members) for group, members in self.groups.items()]
        lists += [(f"auth.aliases.{ref}.allow.users", ((rules or {}).get("allow") or {}).get("users") or [])
                  for ref, rules in self.rules.items()]
        for where, names in lists:
            bare = sorted({str(name) for name in names if ":" not in str(name)})
            if bare:
                yield where, bare


def platform_id(message: Message) -> str | None:
    """The sender's user id on a platform that says it (`PLATFORM_IDS`: `Message.user_id`, set by the
    adapter from what the server said), or None. Read on those adapters only: no other says one, so an
    id on another adapter's message names no one there."""
    if message.adapter not in PLATFORM_IDS:
        return None
    return message.user_id or None


def same_sender(opener: Message, sender: Message) -> bool:
    """Whether `sender` is the person `opener` came from, so may answer what was asked of them (a form, a
    question, a confirmation): by the platform's user id where both say one (`platform_id`), which no one
    can change or choose, since a name may be renamed away and taken by someone else while it waits; else
    by name, under `same_person`'s rule (a state stored before ids were kept has none)."""
    opener_id, sender_id = platform_id(opener), platform_id(sender)
    if opener_id is not None and sender_id is not None:
        return opener.adapter == sender.adapter and opener_id == sender_id
    return same_person(opener.adapter, opener.user, sender.adapter, sender.user)


def sender_names(message: Message) -> set[str]:
    """How config may name the sender to grant them something: `names_of`, and their platform user id
    qualified by the adapter (`slack:U0123ABCD`), which matches them whatever their user name is now."""
    names = names_of(message.adapter, message.user)
    user_id = platform_id(message)
    if names and user_id is not None:
        names.add(f"{message.adapter}:{user_id}")
    return names


def denied_names(message: Message) -> set[str]:
    """How a deny list may name the sender: `sender_names` and, on IRC too, the bare name (a deny grants
    nothing, so whoever took a denied nick is refused with its holder)."""
    names = sender_names(message)
    if message.user and not reads_qualified(message.user):
        names.add(message.user)
    return names


def _channels(message: Message) -> set[str]:
    """How config may name the message's channel: its id, its name and its name with `#`, each also
    qualified by the adapter (`slack:C024BE91L`). A bare name with a colon would pass for another
    adapter's qualified one (an API request naming its channel `slack:C024BE91L`); no platform's
    channel names hold one, so only its qualified form (`api:slack:C024BE91L`) is kept."""
    names = {message.channel}
    if message.channel_name:
        names |= {message.channel_name, f"#{message.channel_name.lstrip('#')}"}
    return {name for name in names if ":" not in name} | {f"{message.adapter}:{name}" for name in names}


def _hits(section: Mapping[str, Any], names: set[str], groups: set[str], channels: set[str], adapter: str) -> bool:
    return (any(user in names for user in section.get("users") or [])
            or any(group in groups for group in section.get("groups") or [])
            or bool(channels & {str(c) for c in section.get("channels") or []})
            or adapter in (section.get("adapters") or []))


def _why(section: Mapping[str, Any], message: Message, names: set[str], groups: set[str]) -> str:
    user = next((user for user in section.get("users") or [] if user in names), None)
    if user is not None:
        return f"user {user}"
    shared = groups & set(section.get("groups") or [])
    if shared:
        return f"group {', '.join(sorted(shared))}"
    if message.adapter in (section.get("adapters") or []):
        return f"adapter {message.adapter}"
    return f"channel {message.channel_name or message.channel}"
