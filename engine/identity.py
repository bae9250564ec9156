"""Who a person is, by the names config and inquiries give them: one rule for chat, the API, the web and the CLI.

A person is named by their name, bare (`carol`) or qualified by the adapter (`slack:carol`, `irc:carol`):
only there. A bare name is the platform's person where the platform says who wrote (Slack's and
Mattermost's user names, looked up on the server; the console's configured user; the API's key or
token, the web's account, the CLI's user), but never on IRC (`CHOSEN_NAMES`), where anyone may
`/nick carol`: there only `irc:carol` names anyone. A bare name that reads qualified (an API request
acting as `irc:carol`) is only its qualified self (`api:irc:carol`); `ci:deploy`, whose part before
the colon names no adapter, is a name like any other.

`bot/chat/auth.py` grants by this rule (admins, groups, allow and deny lists) and an inquiry's `users`
are read by it (`engine.inquiries.refusal`): here, not in `bot/`, because the engine answers inquiries
for the API, the web and the CLI too and must not import the chat.

Whom someone who speaks for a person may act as (`acting_as`) is here too, for the API (`acting_user`, the
owner of a request's user-scoped keys) and the web (whose user-scoped keys an account reads), which may not
import each other: one rule, however a person signed in.
"""

from __future__ import annotations

from engine.config import AUTH_USER_QUALIFIERS

#: Adapters whose user names are whatever the sender typed (IRC nicks: no services or SASL account ties
#: a nick to a person): a bare name grants nothing there, only one qualified by the adapter.
CHOSEN_NAMES = frozenset({"irc"})


def names_of(adapter: str | None, user: str | None) -> set[str]:
    """How config may name `user` of `adapter` to grant them something: qualified by the adapter always,
    bare where the platform says who wrote (never on IRC, `CHOSEN_NAMES`), and never bare when the name
    reads as another adapter's person (`reads_qualified`: an API key named `irc:carol`). No adapter (the
    API's, the CLI's and the web's authenticated user outside chat): bare, and as `api:` qualifies it,
    the one way config can name a user whose own name reads qualified. No user (help's person without
    rights): no name."""
    if not user:
        return set()
    names = {f"{adapter or 'api'}:{user}"}
    if adapter not in CHOSEN_NAMES and not reads_qualified(user):
        names.add(user)
    return names


def reads_qualified(user: str) -> bool:
    """Whether a name's part before its first colon names an adapter (`irc:carol`), so that, bare, it
    would pass for that adapter's person; `ci:deploy` is a name with a colon like any other."""
    qualifier, colon, _rest = user.partition(":")
    return bool(colon) and qualifier in AUTH_USER_QUALIFIERS


def person(adapter: str | None, user: str) -> str:
    """Who `user` of `adapter` is, to tell whether two messages came from one person (the requester of
    an approval withdrawing it) and to answer an inquiry from chat: the bare name where the platform says
    who wrote, `irc:nick` on IRC."""
    return f"{adapter}:{user}" if adapter in CHOSEN_NAMES else user


def person_names(answerer: str) -> set[str]:
    """How an inquiry's `users` may name someone given as chat's `person` gives them, which adapter
    unsaid: `irc:carol` is the nick (`names_of("irc", "carol")`), and a bare name the person a platform
    said wrote, so only the bare entry names them (not `slack:carol`, nor the API's `api:carol`: which
    platform is not known). Callers that know the adapter pass `names_of` instead."""
    qualifier, colon, rest = answerer.partition(":")
    if colon and qualifier in CHOSEN_NAMES:
        return names_of(qualifier, rest)
    return {answerer}


def bare_name(user: str | None) -> str | None:
    """A recorded answerer's or requester's name, whatever platform it was on: `person`'s `irc:carol` is carol.
    Compared so (by name, the stricter reading), the nick carol counts as the carol who started or answered
    something elsewhere, since she may be her (`engine.inquiries.why_not`'s `by_name`)."""
    if user is None:
        return None
    adapter, colon, name = user.partition(":")
    return name if colon and adapter in CHOSEN_NAMES else user


class ImpersonationError(ValueError):
    """Someone who speaks for a person named another to act as (`acting_as`)."""

    def __init__(self, own: str, named: str) -> None:
        super().__init__(f"{own} may not act as {named}: only who speaks for nobody may name another user")
        self.own = own
        self.named = named


def acting_as(own: str | None, named: str | None) -> str | None:
    """Whom someone who speaks for `own` acts as when they name `named` (an inquiry's responder, an alias
    execution's user, the owner of the user-scoped keys they read or write). A person (an API token or stored
    key, a web account that is no admin) acts as themselves only, naming them or no one: naming another is
    `ImpersonationError`, or the checks made per person (an inquiry's `users` and `self_approval`, an alias's
    permissions, whose secrets a key holds) would be anyone's to pass. Who speaks for nobody (`own` None: a key
    from the config file, a bridge relaying its chat's users as hubot does; the web's admin) acts as whoever
    they name, and naming no one as no one (None): of user-scoped keys, every user's (`Datastore.list`'s
    administrator's view)."""
    if own is None:
        return named or None
    if named and named != own:
        raise ImpersonationError(own, named)
    return own


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
