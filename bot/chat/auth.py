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
only there. A bare name is the platform's person where the platform says who wrote (Slack's and
Mattermost's user names, looked up on the server; the console's configured user; the API's key or
token), but never on IRC, where anyone may `/nick carol`: there only `irc:carol` grants anything
(admin, group member, approver, allow list), so an IRC nick is never a Slack or Mattermost person of the
same name. A deny list's bare names refuse the IRC nick too: a deny grants nothing, so the stricter
reading costs no one a right. A bare name that reads qualified (an API request acting as `irc:carol`) is
only its qualified self (`api:irc:carol`), as a channel's is; `ci:deploy`, whose part before the colon
names no adapter, is a name like any other. Config that grants to bare names while IRC
is on is said once in the log as the chat starts (`warn_irc`, from `ChatBot.start`), since an upgrade
took those names' rights on IRC away. What a person started is theirs by the same rule (`same_person`):
the nick carol owns what it started on IRC only, and nothing Slack's or the API's carol started.

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
from engine.config import AUTH_USER_QUALIFIERS

log = logging.getLogger(__name__)

#: Adapters whose user names are whatever the sender typed (IRC nicks: no services or SASL account ties
#: a nick to a person): a bare name in `auth` grants nothing there, only one qualified by the adapter.
CHOSEN_NAMES = frozenset({"irc"})


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
        return self.rules.get(alias.ref) or self.rules.get(alias.pack)

    def check(self, alias: Any, message: Message) -> Decision:
        if self.is_admin(message):
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
        """`names_of` the sender."""
        return names_of(message.adapter, message.user)

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


def names_of(adapter: str | None, user: str | None) -> set[str]:
    """How config may name `user` of `adapter` to grant them something: qualified by the adapter always,
    bare where the platform says who wrote (never on IRC, `CHOSEN_NAMES`), and never bare when the name
    reads as another adapter's person (`_reads_qualified`: an API key named `irc:carol`). No adapter (the
    API's, the CLI's and the web's authenticated user outside chat): bare, and as `api:` qualifies it,
    the one way config can name a user whose own name reads qualified. No user (help's person without
    rights): no name."""
    if not user:
        return set()
    names = {f"{adapter or 'api'}:{user}"}
    if adapter not in CHOSEN_NAMES and not _reads_qualified(user):
        names.add(user)
    return names


def _reads_qualified(user: str) -> bool:
    """Whether a name's part before its first colon names an adapter (`irc:carol`), so that, bare, it
    would pass for that adapter's person; `ci:deploy` is a name with a colon like any other."""
    qualifier, colon, _rest = user.partition(":")
    return bool(colon) and qualifier in AUTH_USER_QUALIFIERS


def denied_names(message: Message) -> set[str]:
    """How a deny list may name the sender: `names_of` and, on IRC too, the bare name (a deny grants
    nothing, so whoever took a denied nick is refused with its holder)."""
    names = names_of(message.adapter, message.user)
    if message.user and not _reads_qualified(message.user):
        names.add(message.user)
    return names


def same_person(adapter: str | None, user: str | None, other_adapter: str | None, other_user: str | None) -> bool:
    """Whether `user` of `adapter` is `other_user` of `other_adapter`, to tell whether someone owns what
    the other started (an execution: its context's user and chat adapter, None outside chat). A name is
    one person wherever the platform says who wrote (Slack, Mattermost, the console, the API, the CLI,
    the web); an IRC nick (`CHOSEN_NAMES`) is that nick on that adapter only, so the nick carol is never
    the carol who started something elsewhere, nor she the nick. Nobody (no user) is no one's."""
    if not user or user != other_user:
        return False
    if adapter in CHOSEN_NAMES or other_adapter in CHOSEN_NAMES:
        return adapter == other_adapter
    return True


def person(adapter: str | None, user: str) -> str:
    """Who `user` of `adapter` is, to tell whether two messages came from one person (the requester of
    an approval withdrawing it): the bare name where the platform says who wrote, `irc:nick` on IRC."""
    return f"{adapter}:{user}" if adapter in CHOSEN_NAMES else user


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
