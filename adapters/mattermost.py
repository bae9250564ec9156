"""Mattermost: posts through the REST API v4, messages from the websocket, `/squall` as a slash command.

The adapter stays thin: a `posted` event becomes a `Message` (a mention of the bot or a direct
channel needs no prefix; the bot's own, other bots' and system posts are dropped) and a `Reply` becomes a post
in the command's thread (`root_id`), an edit through the patch API, or a file upload when the text
is longer than the server takes. Alias `extra` (`extra.mattermost`, or a generic `extra`) becomes
message attachments (`props.attachments`). Mattermost's rate limit (429) becomes a `DeliveryError`
with `retry_after`, so the outbox waits exactly as long as the server asks.

The websocket reconnects with exponential backoff and asks to resume (`connection_id` and the next
`sequence_number`), so events sent while it was down are replayed by the server instead of lost. The
server replays only while it keeps the session (not after its restart, nor after Squall's, which
begins a new one): so at every connect the adapter also catches up, asking each channel the bot is in
for the posts made since the newest it handed over (at most `catch_up_seconds` back, 120 s unless set)
and handing them over in order as if they had come live. Each `Message` carries its post id as its
delivery key (`Message.delivery`), stored with the command it requests, so a post that comes both live
and caught up, or caught up by two processes, runs once.

A custom slash command posts to `POST /mattermost/command` on Squall's API server; it is checked
against `slash_token` (Mattermost sends it in the form and as `Authorization: Token ...`), answered
at once (with the dispatcher's first reply when it comes quickly, else a short "working" note), and
later replies of that command go back through the command's `response_url`.

Forms (issue 20): `open_form` opens an interactive dialog (`POST /actions/dialogs/open`, with the
`trigger_id` of a slash command or a button click) that submits to `actions_url`; the bot's check
(`on_form`) answers the submission, with `errors` per field. Dialogs ask `notify_on_cancel`, so Mattermost
posts a cancellation (`cancelled: true`, no submission) to the same URL when the person cancels; it is handed
on as a cancelled submission (the bot says nothing was run and forgets the form).

A person is their username (`Message.user`); their user id, which they cannot change where a server
lets them change their username, is `Message.user_id` (a post's own, a slash command's form field, a
click's), so `auth` and an inquiry's `users` may name them by it (`mattermost:<id>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import logging
import os
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from fastapi import Request
from fastapi.responses import JSONResponse

from adapters.base import (
    AdapterConfigError,
    Capabilities,
    ClickOutcome,
    DeliveryError,
    Form,
    FormField,
    FormHandler,
    FormSubmission,
    FoundPost,
    Message,
    MessageHandler,
    Part,
    Reply,
    caption,
)
from adapters.markup import ZERO_WIDTH_SPACE
from engine.config import ADAPTER_FLAGS, ADAPTER_KEYS, unknown_key

log = logging.getLogger(__name__)

#: Mattermost's post limit on current schemas; the server's own value (`MaxPostSize`) wins when it tells.
DEFAULT_MAX_POST = 16383
#: How long the slash-command endpoint waits for the dispatcher's first reply before a "working" note.
SLASH_ANSWER_WAIT = 2.0
#: How long a button click's answer waits for the bot to say what became of the click (`ClickOutcome`):
#: the prompt is marked "chose …" only for a click taken, and the Mattermost server waits for this answer
#: a few seconds at most. Past it the prompt is marked as a click the bot does not classify is.
CLICK_ANSWER_WAIT = 2.5
#: Mattermost takes at most five posts to one `response_url`, within 30 minutes.
RESPONSE_URL_USES = 5
RESPONSE_URL_TTL = 30 * 60.0
#: How long `start()` waits for the first websocket hello before returning (it keeps trying after).
START_WAIT = 10.0
#: Keys of `extra` that belong to other platforms, never rendered as Mattermost attachments.
OTHER_PLATFORMS = {"slack", "irc", "console", "msteams", "hipchat", "rocketchat", "discord", "telegram", "xmpp",
                   "errbot", "loopback"}
REST_TIMEOUT = aiohttp.ClientTimeout(total=30)
_MM_ID = re.compile(r"^[a-z0-9]{26}$")
#: How long a user id's name is trusted without asking the server again. A rename is announced on the
#: websocket (`user_updated`, which drops the name at once), but one made while the socket was down is
#: not: without an expiry the renamed account would keep its old name, and its permissions, for good.
IDENTITY_TTL = 3600.0
_ID_LIKE = re.compile(r"^[A-Za-z0-9]{8,}$")
_SLASH = "slash:"
#: The post prop that carries a reply's outbox id (`find_sent`).
OUTBOX_PROP = "squall_outbox_id"
#: The post prop that carries, for a reply sent in several posts, which one this is (`Part.to_json`).
OUTBOX_PART_PROP = "squall_outbox_part"
#: `catch_up_seconds` unless set: how far back a connect looks for posts it missed. Long enough for a
#: restart or a reconnect's backoff (at most a minute) with room to spare, short enough that a command
#: typed long ago, which its sender has likely retyped or given up on, does not run out of the blue.
DEFAULT_CATCH_UP = 120.0
#: The most `catch_up_seconds` may be: well inside the day a command's delivery key is kept
#: (`engine.storage.CHAT_DELIVERY_KEPT`), past which a post caught up again would run again.
MAX_CATCH_UP = 3600.0
#: How far before the newest post handed over a catch-up looks again (ms): posts of different channels
#: may reach the websocket slightly out of order, and those handed over already are known by id.
CATCH_UP_OVERLAP_MS = 5000
#: Seconds before a catch-up that failed while the websocket stayed up is tried again (a 429 says its own).
CATCH_UP_RETRY = 5.0


class MattermostError(DeliveryError):
    """A REST call Mattermost refused or that could not reach it; never carries the token."""

    def __init__(self, message: str, status: int = 0, error_id: str = "", retry_after: float | None = None) -> None:
        # 4xx but 429 will not change by trying again (an unknown channel, a refused permission).
        super().__init__(message, retry_after, permanent=400 <= status < 500 and status != 429)
        self.status = status
        self.error_id = error_id


class _AuthFailed(Exception):
    """The websocket refused our token."""


class UnknownPerson(Exception):
    """Mattermost could not say who sent something (`GET /users/{id}` failed for someone never named).

    Naming them by their id instead would make one person two names (the id now, the username later),
    and a request made under one name could be approved under the other (`self_approval: false`)."""


@dataclass(frozen=True)
class MattermostSettings:
    """`adapters.mattermost`: url, token, team, slash_token, `files` (upload long output, default true),
    `actions_url` (where the Mattermost server reaches `/mattermost/actions` on Squall's API: buttons) and
    `catch_up_seconds` (how far back a connect looks for posts it missed; 0: not at all)."""

    url: str
    token: str = field(repr=False)
    team: str | None = None
    slash_token: str | None = field(default=None, repr=False)
    files: bool = True
    actions_url: str | None = None
    catch_up_seconds: float = DEFAULT_CATCH_UP

    @classmethod
    def from_section(cls, section: dict[str, Any], where: str = "",
                     env: dict[str, str] | os._Environ[str] | None = None) -> MattermostSettings:
        env = os.environ if env is None else env
        _check_keys(section, where)
        url = str(section.get("url") or env.get("MATTERMOST_URL") or "").strip()
        token = str(section.get("token") or env.get("MATTERMOST_TOKEN") or "").strip()
        if not url:
            raise AdapterConfigError(f"{where}adapters.mattermost.url is not set: give the server's address "
                                     "(scheme, host and port, e.g. https://chat.example.com:443) in "
                                     "adapters.mattermost.url or the environment variable MATTERMOST_URL")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdapterConfigError(f"{where}adapters.mattermost.url must look like http(s)://host:port, not {url!r}")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError as exc:
            raise AdapterConfigError(f"{where}adapters.mattermost.url has a bad port: {url!r}") from exc
        if not token:
            raise AdapterConfigError(f"{where}adapters.mattermost.token is not set: give the bot account's "
                                     "access token in adapters.mattermost.token or the environment variable "
                                     "MATTERMOST_TOKEN")
        team = section.get("team")
        slash = section.get("slash_token")
        actions_url = str(section.get("actions_url") or "").strip() or None
        actions = urlsplit(actions_url or "")
        if actions_url and (actions.scheme not in ("http", "https") or not actions.hostname):
            raise AdapterConfigError(f"{where}adapters.mattermost.actions_url must be the address the "
                                     "Mattermost server reaches Squall's API at, e.g. "
                                     "http://squall.internal:9101/mattermost/actions, "
                                     f"not {actions_url!r}")
        return cls(url=url.rstrip("/"), token=token, team=str(team) if team else None,
                   slash_token=str(slash) if slash else None, files=section.get("files", True),
                   actions_url=actions_url, catch_up_seconds=_catch_up_seconds(section, where))


def _check_keys(section: dict[str, Any], where: str) -> None:
    """Unknown keys, named with the nearest known one (a misspelt `slash_tokn` left slash commands
    unchecked without a word), and the flags: true or false, never a quoted "false"."""
    if (problem := unknown_key("adapters.mattermost", section, ADAPTER_KEYS["mattermost"])) is not None:
        raise AdapterConfigError(f"{where}{problem}")
    for key in ADAPTER_FLAGS["mattermost"]:
        if key in section and not isinstance(section[key], bool):
            raise AdapterConfigError(f"{where}'adapters.mattermost.{key}' must be true or false, "
                                     f"not {section[key]!r}")


def _catch_up_seconds(section: dict[str, Any], where: str) -> float:
    """`catch_up_seconds`: a number of seconds from 0 (no catch-up) to `MAX_CATCH_UP`."""
    value = section.get("catch_up_seconds", DEFAULT_CATCH_UP)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 <= seconds <= MAX_CATCH_UP:  # NaN fails the comparison too
        raise AdapterConfigError(f"{where}adapters.mattermost.catch_up_seconds must be a number of seconds from 0 "
                                 f"(no catch-up) to {MAX_CATCH_UP:g}, not {value!r}")
    return seconds


@dataclass
class _SlashCommand:
    """One slash-command invocation: its first reply answers the HTTP request, later ones use response_url."""

    response_url: str
    channel: str
    first: asyncio.Future[Reply]
    created: float = field(default_factory=time.monotonic)
    answered: bool = False
    uses: int = 0


def attachments(extra: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Alias `extra` as Mattermost message attachments (Slack-compatible dicts).

    `extra.mattermost` wins; otherwise a generic `extra` (without other platforms' keys) is used.
    Each may be one attachment, a list of them, or `{"attachments": [...]}`.
    """
    if not extra or not isinstance(extra, dict):
        return []
    if "mattermost" in extra:
        chosen: Any = extra["mattermost"]
    else:
        chosen = {k: v for k, v in extra.items() if k not in OTHER_PLATFORMS}
    if isinstance(chosen, dict) and isinstance(chosen.get("attachments"), list):
        chosen = chosen["attachments"]
    items = chosen if isinstance(chosen, list) else [chosen]
    return [_quiet_attachment(item) for item in items if isinstance(item, dict) and item]


def _quiet_attachment(item: dict[str, Any]) -> dict[str, Any]:
    """An attachment with `quiet_mentions` applied where Mattermost looks for mentions in one (its
    `pretext`, `text` and the string `value` of each of its `fields`): a pack's `extra` renders the
    execution's output and parameters there too."""
    quiet = {k: quiet_mentions(v) if k in ("pretext", "text") and isinstance(v, str) else v for k, v in item.items()}
    if isinstance(item.get("fields"), list):
        quiet["fields"] = [{**f, "value": quiet_mentions(f["value"])} if isinstance(f, dict)
                           and isinstance(f.get("value"), str) else f for f in item["fields"]]
    return quiet


#: After the `@` of a channel-wide mention `quiet_mentions` puts a `ZERO_WIDTH_SPACE`: unseen, and it ends the
#: word there. `@all`, `@channel` and `@here` in any case, where no letter or digit follows (a username may go on
#: with `.`, `-` or `_`, but Mattermost trims those off a word's end and splits at `.`, `-` and `:`).
_CHANNEL_WIDE = re.compile(r"@(?=(?:all|channel|here)(?![A-Za-z0-9]))", re.IGNORECASE | re.ASCII)
#: One character of a post as Mattermost's Markdown reads it before looking for mentions: a backslash
#: escape of ASCII punctuation (`\@`), a character reference (`&#64;`, `&#x40;`, `&commat;`), or itself.
_MARKDOWN_CHARACTER = re.compile(r"\\[!-/:-@\[-`{-~]"
                                 r"|&(?:#[0-9]{1,8}|#[xX][0-9A-Fa-f]{1,8}|[A-Za-z][A-Za-z0-9]{1,31});|.", re.DOTALL)


def quiet_mentions(text: str) -> str:
    """`text` with a zero-width space after the `@` of every `@all`, `@channel` and `@here`: they read
    the same, but Mattermost splits words at any character that is neither a letter nor a digit (nor
    one of `:._-@`), so none of them notifies a channel any more.

    Why every post of the bot's: a person's words and an action's output reach them (an echoed command,
    a result, a pack's attachments), and what the bot posts passes the channel-mention permission and
    the "notify N people?" check its sender would meet. Why inside code too: Mattermost skips code, but
    text can end the code Squall puts it in, and older servers found code by a pattern of their own.
    The mentions Mattermost's Markdown makes of an escape or a character reference (`\\@here`,
    `&#64;all`, `@al&#108;`) are quieted as well. A person's mention (`@alice`) stays: the adapter cannot
    tell a pack's template, which may mean it, from what it echoes, and echoing one lets nobody notify
    anyone they could not notify themselves."""
    if "@" not in text and "&" not in text:
        return text
    shown: list[str] = []
    ends: list[int] = []  # per character of what Mattermost reads: where in `text` it ends
    for character in _MARKDOWN_CHARACTER.finditer(text):
        written = character.group()
        read = written[1] if written[0] == "\\" and len(written) == 2 else (
            html.unescape(written) if written[0] == "&" else written)
        shown.append(read)
        ends += [character.end()] * len(read)
    cuts = [ends[mention.start()] for mention in _CHANNEL_WIDE.finditer("".join(shown))]
    if not cuts:
        return text
    parts, start = [], 0
    for cut in cuts:
        parts += [text[start:cut], ZERO_WIDTH_SPACE]
        start = cut
    return "".join(parts) + text[start:]


def retry_after(headers: Any) -> float:
    """Seconds to wait after a 429: `Retry-After`, else `X-RateLimit-Reset` (seconds, or an epoch time)."""
    for name in ("Retry-After", "X-RateLimit-Reset"):
        value = headers.get(name)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds > 1e9:  # a Unix timestamp rather than a delay
            seconds -= time.time()
        return max(0.0, min(seconds, 300.0))
    return 1.0


class MattermostAdapter:
    """A bot account on one Mattermost server (and, optionally, its team for channel names)."""

    name = "mattermost"

    def __init__(self, settings: MattermostSettings) -> None:
        self.settings = settings
        # Buttons need the Mattermost server to reach Squall (`actions_url`); without it, answers are typed.
        self.capabilities = Capabilities(threads=True, edits=True, rich=True, files=settings.files,
                                         buttons=bool(settings.actions_url), max_length=DEFAULT_MAX_POST)
        # Signs the context of our buttons: Mattermost does not sign its calls, but never shows a button's
        # context to clients, so a valid signature means the call came from the server, for our button.
        self._action_key = hashlib.sha256(b"squall mattermost actions\0" + settings.token.encode()).digest()
        self.api = f"{settings.url}/api/v4"
        parts = urlsplit(settings.url)
        self.ws_url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path}/api/v4/websocket"
        #: Reconnect backoff: first wait and ceiling, in seconds (tests shorten them).
        self.reconnect_min = 1.0
        self.reconnect_max = 60.0
        self.heartbeat = 30.0
        self.me: dict[str, Any] = {}
        self.team_id: str | None = None
        self.connected = asyncio.Event()
        #: Websocket connections opened so far (the first one and every reconnect).
        self.connections = 0
        self._on_message: MessageHandler | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._connection_id: str | None = None
        self._next_seq = 0
        self._mention: re.Pattern[str] | None = None
        self._usernames: dict[str, tuple[str, float]] = {}  # user id → (username, when to ask again)
        self._channels: dict[str, str] = {}
        self._known_channels: set[str] = set()
        self._channel_types: dict[str, str] = {}
        self._seen: deque[str] = deque(maxlen=1000)
        #: The newest `create_at` (ms) of the posts handed over in this process: where a catch-up starts.
        self._newest = 0
        #: Where the next catch-up starts (ms; 0: `catch_up_seconds` ago), set at each connect, kept
        #: until a catch-up listed everything from there.
        self._catch_up_from: int | None = None
        self._catch_up_again = False
        self._catch_up_task: asyncio.Task[None] | None = None
        self._slash: dict[str, _SlashCommand] = {}
        #: The bot's check of a submitted form (`adapters.base`: set by the bot when it has forms).
        self.on_form: FormHandler | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        """The websocket is open (cleared while it reconnects)."""
        return self.connected.is_set()

    async def start(self, on_message: MessageHandler) -> None:
        """Log in (a refused token is a configuration error), then listen on the websocket.

        If the server cannot be reached yet, this returns after `START_WAIT` and keeps trying."""
        self._on_message = on_message
        self._stopping = False
        # No session-wide total timeout: it would also end the long-lived websocket. REST calls set their own.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        try:
            await self._login()
        except AdapterConfigError:
            await self._close_session()
            raise
        except MattermostError as exc:
            log.warning("Mattermost at %s is not reachable yet (%s); retrying in the background", self.settings.url,
                        exc)
        self._task = asyncio.create_task(self._listen(), name="mattermost-websocket")
        waiter = asyncio.ensure_future(self.connected.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=START_WAIT, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if self._fatal is not None:
            error, self._fatal = self._fatal, None
            await self.stop()
            raise error
        if not self.connected.is_set():
            log.warning("Mattermost websocket at %s is not connected yet; retrying in the background", self.ws_url)

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        tasks = [t for t in (self._task, *self._handlers) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._handlers.clear()
        for command in self._slash.values():
            if not command.first.done():
                command.first.cancel()
        self._slash.clear()
        self.connected.clear()
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _login(self) -> None:
        """Who the bot is (to ignore its own posts and see its mentions), its team, the post limit."""
        try:
            self.me = await self._call("GET", "/users/me")
        except MattermostError as exc:
            if exc.status in (401, 403):
                raise AdapterConfigError(f"Mattermost at {self.settings.url} refused the token "
                                         f"(adapters.mattermost.token / MATTERMOST_TOKEN): {exc}") from exc
            raise
        username = str(self.me.get("username") or "")
        self._mention = re.compile(rf"(?<![\w.@-])@{re.escape(username)}(?![\w-]|\.\w)[:,]?", re.IGNORECASE)
        self._usernames[str(self.me.get("id"))] = (username, time.monotonic() + IDENTITY_TTL)
        if self.settings.team and self.team_id is None:
            await self._find_team()
        with contextlib.suppress(MattermostError, ValueError, TypeError, KeyError):
            client = await self._call("GET", "/config/client", params={"format": "old"})
            size = int(client["MaxPostSize"])
            if size > 0:
                self.capabilities = Capabilities(**{**self.capabilities.__dict__, "max_length": size})
        log.info("Mattermost: logged in to %s as @%s", self.settings.url, username)

    async def _find_team(self) -> None:
        """The team's id, for channel names. A wrong team name is logged, not fatal: mentions, direct
        messages and replies (which carry channel ids) work without it."""
        try:
            team = await self._call("GET", f"/teams/name/{_quote(str(self.settings.team))}")
        except MattermostError as exc:
            if exc.status != 404:
                raise
            log.error("adapters.mattermost.team: there is no team named %r on %s (or the bot is not in it); "
                      "channel names cannot be used", self.settings.team, self.settings.url)
            return
        self.team_id = str(team["id"])

    # -- REST --------------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, *, body: Any = None, data: Any = None,
                    params: dict[str, str] | None = None) -> Any:
        """One API v4 call with the bot token; errors name the call and Mattermost's reason, never the token."""
        if self._session is None:
            raise MattermostError("the Mattermost adapter is not started")
        headers = {"Authorization": f"Bearer {self.settings.token}", "X-Requested-With": "XMLHttpRequest"}
        try:
            async with self._session.request(method, self.api + path, json=body, data=data, params=params,
                                             headers=headers, timeout=REST_TIMEOUT) as response:
                raw = await response.read()
                return _decode(response, raw, f"{method} {path}")
        except aiohttp.ClientError as exc:
            raise MattermostError(f"{method} {path}: cannot reach {self.settings.url} ({exc.__class__.__name__})") \
                from None
        except TimeoutError:
            raise MattermostError(f"{method} {path}: {self.settings.url} did not answer in time") from None

    async def _username(self, user_id: str) -> str:
        """The user's name from the server (never a name in the event, which a webhook's poster chooses).

        A name is who the person is to permissions and approvals, so it has one source: when the lookup
        fails (a 429, a timeout) the name last looked up stands, even if it expired; a person never named
        (or renamed since, `user_updated`) cannot be named, and `UnknownPerson` is raised: what they sent
        is dropped rather than run under their id, which would make them two people."""
        cached = self._usernames.get(user_id)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        try:
            user = await self._call("GET", f"/users/{_quote(user_id)}")
            name = str(user.get("username") or "") if isinstance(user, dict) else ""
            if not name:
                raise MattermostError(f"GET /users/{user_id}: the answer has no username")
        except MattermostError as exc:
            if cached is not None:
                log.warning("Mattermost: cannot look up user %s (%s); keeping the name %r", user_id, exc, cached[0])
                return cached[0]
            raise UnknownPerson(f"Mattermost could not say who user {user_id} is ({exc}); what they sent is "
                                "dropped") from None
        self._usernames[user_id] = (name, time.monotonic() + IDENTITY_TTL)
        return name

    def _user_updated(self, event: dict[str, Any]) -> None:
        """`user_updated`: a user changed (a rename, say). Their cached name is dropped, so the next
        message from them is named as the server names them now, and two accounts never share a name."""
        user = (event.get("data") or {}).get("user")
        if isinstance(user, dict) and user.get("id"):
            self._usernames.pop(str(user["id"]), None)

    async def channel_id(self, channel: str) -> str:
        """A channel id from an id, a channel name of the team (`ops`, `~ops`) or a user (`@alice`, a DM)."""
        if channel in self._known_channels or _MM_ID.match(channel):
            return channel
        if channel in self._channels:
            return self._channels[channel]
        name = channel.strip()
        found: str | None = None
        if not name.startswith("@") and self.settings.team:
            if self.team_id is None:
                await self._find_team()
            if self.team_id is not None:
                try:
                    found = (await self._call("GET", f"/teams/{self.team_id}/channels/name/"
                                                     f"{_quote(name.lstrip('~#'))}"))["id"]
                except MattermostError as exc:
                    if exc.status != 404:
                        raise
        if found is None:  # `@alice`, or a bare name that is a user (a whisper goes to the user's name)
            try:
                user = await self._call("GET", f"/users/username/{_quote(name.lstrip('@'))}")
            except MattermostError as exc:
                if exc.status != 404:
                    raise
                if _ID_LIKE.match(channel):
                    return channel  # perhaps an id in another shape: the server has the last word
                team = "" if self.settings.team else " (set adapters.mattermost.team to use channel names)"
                raise MattermostError(f"no Mattermost channel or user named {channel!r}{team}", status=404) from exc
            found = str((await self._call("POST", "/channels/direct", body=[self.me["id"], user["id"]]))["id"])
        self._channels[channel] = found
        return found

    # -- sending -----------------------------------------------------------------------------------
    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        text, file = quiet_mentions(reply.text), reply.file  # fitted to `capabilities` by the outbox
        extra_attachments = attachments(reply.extra)
        if reply.buttons and self.settings.actions_url:
            extra_attachments = [*extra_attachments, self._buttons(reply, text)]
        if edit_of is not None:
            if edit_of.startswith(_SLASH):
                return edit_of  # an answer through response_url has no post id to edit; the result follows
            # An edit with buttons puts them back (a question whose click was refused): a click took them off.
            patch: dict[str, Any] = {"message": text}
            if extra_attachments:
                patch["props"] = {"attachments": extra_attachments}
            await self._call("PUT", f"/posts/{_quote(edit_of)}/patch", body=patch)
            return edit_of
        command = self._slash_command(reply.thread)
        if command is not None and file is None:
            answered = await self._answer_slash(command, reply, text, extra_attachments)
            if answered is not None:
                return answered
        post: dict[str, Any] = {"channel_id": await self.channel_id(reply.channel), "message": text}
        if reply.thread and not reply.thread.startswith(_SLASH):
            post["root_id"] = reply.thread
        if extra_attachments:
            post["props"] = {"attachments": extra_attachments}
        if reply.outbox_id is not None:  # `find_sent` finds the post by it after a crash
            props = post.setdefault("props", {})
            props[OUTBOX_PROP] = reply.outbox_id
            if reply.part is not None:
                props[OUTBOX_PART_PROP] = reply.part.to_json()
        try:
            return await self._post(post, file)
        except MattermostError as exc:
            if command is None or exc.status not in (403, 404):
                raise
            return await self._answer_slash_instead(command, reply, text, extra_attachments, exc)

    async def _post(self, post: dict[str, Any], file: tuple[str, str] | None) -> str:
        """`POST /posts` (after uploading `file`); a reply to a thread that is gone goes to the channel."""
        if file is not None:
            post["file_ids"] = [await self._upload(post["channel_id"], *file)]
        try:
            created = await self._call("POST", "/posts", body=post)
        except MattermostError as exc:
            if exc.error_id != "api.post.create_post.root_id.app_error" or "root_id" not in post:
                raise
            # The thread's root was deleted (or moved): answer in the channel rather than never.
            log.warning("Mattermost: thread %s is gone; posting to the channel instead", post.pop("root_id"))
            created = await self._call("POST", "/posts", body=post)
        return str(created["id"])

    async def _answer_slash_instead(self, command: _SlashCommand, reply: Reply, text: str,
                                    extra_attachments: list[dict[str, Any]], refused: MattermostError) -> str:
        """A slash command's reply the channel refused as a post (the bot is not a member of a direct
        or private channel; a long output's file cannot be uploaded there either) goes through the
        command's response_url instead, a file as the start of its text with a note saying it was cut.
        Past the response_url's limits (5 posts, 30 minutes) nothing can reach that channel: the
        refusal stands, with the reason."""
        inline = quiet_mentions(_inline(text, reply.file, self.capabilities.max_length))
        answered = await self._answer_slash(command, reply, inline, extra_attachments)
        if answered is None:
            raise MattermostError(f"{refused}; the bot cannot post in channel {command.channel} (invite it there) "
                                  f"and the slash command's response_url is used up ({RESPONSE_URL_USES} posts) or "
                                  f"expired ({RESPONSE_URL_TTL / 60:g} minutes)", status=refused.status,
                                  error_id=refused.error_id) from None
        log.info("Mattermost: channel %s refused a slash command's reply (%s); sent through its response_url",
                 command.channel, refused)
        return answered

    async def find_sent(self, replies: Sequence[Reply], since: datetime) -> dict[int, list[FoundPost]]:
        """Which of these replies (left pending by a crash) the bot already posted: outbox id → its posts
        (post id, the `Part` it is of a reply sent in several, or None), read from each channel's posts
        since `since` (`GET /channels/{id}/posts?since=`, which includes thread replies) by the outbox
        id the post carries in its props."""
        wanted: dict[str, set[int]] = {}
        for reply in replies:
            if reply.outbox_id is not None and not (reply.thread or "").startswith(_SLASH):
                wanted.setdefault(await self.channel_id(reply.channel), set()).add(reply.outbox_id)
        found: dict[int, list[FoundPost]] = {}
        for channel_id, ids in wanted.items():
            listing = await self._call("GET", f"/channels/{_quote(channel_id)}/posts",
                                       params={"since": str(int(since.timestamp() * 1000))})
            for post in (listing.get("posts") or {}).values():
                props = post.get("props") or {}
                outbox_id = props.get(OUTBOX_PROP)
                if (post.get("user_id") == self.me.get("id") and not post.get("delete_at")
                        and isinstance(outbox_id, int) and outbox_id in ids):
                    part = Part.from_json(props.get(OUTBOX_PART_PROP))
                    found.setdefault(outbox_id, []).append((str(post["id"]), part))
        return found

    async def _upload(self, channel_id: str, name: str, content: str) -> str:
        form = aiohttp.FormData()
        form.add_field("channel_id", channel_id)
        form.add_field("files", content.encode("utf-8"), filename=name, content_type="text/plain")
        uploaded = await self._call("POST", "/files", data=form)
        return str(uploaded["file_infos"][0]["id"])

    # -- receiving ---------------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Keep one websocket open: reconnect with exponential backoff (and jitter), resuming where it was."""
        delay = self.reconnect_min
        while not self._stopping:
            started = time.monotonic()
            try:
                if not self.me:
                    await self._login()
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except AdapterConfigError as exc:
                self._fatal = exc
                log.error("Mattermost: %s", exc)
                return
            except _AuthFailed:
                log.error("Mattermost: the websocket refused the token (adapters.mattermost.token); retrying")
            except (MattermostError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("Mattermost websocket: %s: %s", exc.__class__.__name__, exc)
            except Exception:  # whatever it was, the bot must come back
                log.exception("Mattermost websocket failed unexpectedly")
            self.connected.clear()
            if self._stopping:
                return
            if time.monotonic() - started > 60:  # it was up a good while: start the backoff over
                delay = self.reconnect_min
            wait = delay * (0.8 + 0.4 * random.random())
            log.info("Mattermost websocket closed; reconnecting in %.1fs", wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.reconnect_max)

    async def _connect_once(self) -> None:
        assert self._session is not None
        url = self.ws_url
        if self._connection_id:
            url += "?" + urlencode({"connection_id": self._connection_id, "sequence_number": self._next_seq})
        # The token goes in the upgrade request (the server authenticates at once) and in the
        # authentication_challenge (for proxies that drop the header); either alone is enough.
        headers = {"Authorization": f"Bearer {self.settings.token}"}
        async with self._session.ws_connect(url, heartbeat=self.heartbeat, autoping=True, headers=headers) as ws:
            self._ws = ws
            self.connections += 1
            try:
                await ws.send_str(json.dumps({"seq": 1, "action": "authentication_challenge",
                                              "data": {"token": self.settings.token}}))
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        if frame.type == aiohttp.WSMsgType.ERROR:
                            raise MattermostError(f"websocket error: {ws.exception()}")
                        continue
                    await self._on_frame(frame.data)
            finally:
                self._ws = None

    def _on_hello(self, event: dict[str, Any], seq: Any) -> None:
        """`hello`: the websocket is up; whether it resumed the session (no events lost) or began a new one."""
        connection_id = (event.get("data") or {}).get("connection_id")
        if self._connection_id and connection_id != self._connection_id:
            log.warning("Mattermost websocket could not resume its session: events sent while it was down "
                        "are lost")
        elif self._connection_id:
            log.info("Mattermost websocket resumed")
        self._connection_id = connection_id
        self._next_seq = seq + 1 if isinstance(seq, int) else 0
        self.connected.set()
        self._catch_up_soon()

    # -- catching up -------------------------------------------------------------------------------
    def _catch_up_soon(self) -> None:
        """At every hello (the first connect after start and each reconnect), catch up on the posts the
        websocket missed: beside it, so a slow or failing API never holds the events coming live, and
        one catch-up at a time (one asked for while another runs follows it)."""
        if self.settings.catch_up_seconds <= 0 or self._stopping:
            return
        # From where, said now: an event of this connection handed over before the catch-up begins must
        # not move its start past what was missed (0: from `catch_up_seconds` ago, all a restart can do).
        start = self._newest - CATCH_UP_OVERLAP_MS if self._newest else 0
        self._catch_up_from = start if self._catch_up_from is None else min(self._catch_up_from, start)
        self._catch_up_again = True
        if self._catch_up_task is None or self._catch_up_task.done():
            task = asyncio.create_task(self._catch_up(), name="mattermost-catch-up")
            self._catch_up_task = task
            self._handlers.add(task)  # cancelled by `stop`
            task.add_done_callback(self._handlers.discard)

    async def _catch_up(self) -> None:
        """Catch up until no connect asks for more. A failure (the API down, a 429) is said once and
        tried again while the websocket stays up, else at the next connect; it ends nothing but itself."""
        failed = False
        while self._catch_up_again and not self._stopping:
            self._catch_up_again = False
            try:
                handed = await self._catch_up_once()
            except MattermostError as exc:
                again = not exc.permanent and self.online  # else the next connect tries again
                if not failed:
                    log.warning("Mattermost: cannot catch up on the posts sent while disconnected (%s); trying "
                                "again %s", exc, "in a moment" if again else "at the next connect")
                failed = True
                if not again:
                    return
                self._catch_up_again = True
                await asyncio.sleep(exc.retry_after or CATCH_UP_RETRY)
                continue
            except Exception:
                log.exception("Mattermost: catching up on the posts sent while disconnected failed")
                return
            if handed or failed:
                log.info("Mattermost: caught up %d post(s) sent while disconnected", handed)

    async def _catch_up_once(self) -> int:
        """Hand over, oldest first, the posts made since where the connects asked (`_catch_up_soon`: the
        newest post handed over before them, a little before, `CATCH_UP_OVERLAP_MS`), never from further
        back than `catch_up_seconds` ago (after a restart, from there); how many were handed over."""
        start = self._catch_up_from
        since = max(start or 0, int((time.time() - self.settings.catch_up_seconds) * 1000))
        missed = await self._missed_since(since)  # a failure leaves `_catch_up_from` for the next try
        if self._catch_up_from == start:  # else a connect meanwhile asked for more: the next round's
            self._catch_up_from = None
        handed = 0
        for channel, post in missed:
            data = {"post": post, "channel_type": channel.get("type") or "", "channel_name": channel.get("name") or ""}
            if await self._on_posted({"event": "posted", "data": data}):
                handed += 1
        return handed

    async def _missed_since(self, since: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The posts made after `since` (ms) in the channels the bot is a member of, oldest first, each
        with its channel: `GET /users/me/channels` (every team's, direct and group messages too; Mattermost
        6.1 and later), then `GET /channels/{id}/posts?since=` where a post came after `since`. That
        listing also holds the posts changed since (an edit, a reaction, a deletion) and the roots of the
        threads answered since: only posts made after `since`, and not deleted, are kept."""
        channels = await self._call("GET", "/users/me/channels")
        if not isinstance(channels, list):
            raise MattermostError("GET /users/me/channels: the answer is not a list of channels")
        missed: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for channel in channels:
            if not isinstance(channel, dict) or not isinstance(channel.get("id"), str):
                continue
            last = channel.get("last_post_at")
            if isinstance(last, int) and last <= since:
                continue  # nothing posted there since
            if channel.get("type"):
                self._channel_types[channel["id"]] = str(channel["type"])
            try:
                listing = await self._call("GET", f"/channels/{_quote(channel['id'])}/posts",
                                           params={"since": str(since)})
            except MattermostError as exc:
                if exc.status not in (403, 404):
                    raise
                log.info("Mattermost: channel %s is no longer readable (%s); not caught up", channel["id"], exc)
                continue  # the bot left it, or it was archived, since it was listed
            posts = listing.get("posts") if isinstance(listing, dict) else None
            for post in (posts.values() if isinstance(posts, dict) else ()):
                if (isinstance(post, dict) and isinstance(post.get("create_at"), int) and post["create_at"] > since
                        and not post.get("delete_at")):
                    missed.append((channel, post))
        missed.sort(key=lambda found: found[1]["create_at"])
        return missed

    async def _on_frame(self, data: str) -> None:
        """One websocket frame; a malformed or failing event is logged and skipped, never fatal."""
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("Mattermost websocket: a frame that is not JSON was skipped")
            return
        if not isinstance(event, dict):
            return
        if "seq_reply" in event:
            if event.get("status") == "FAIL":
                raise _AuthFailed()
            return
        seq = event.get("seq")
        name = event.get("event")
        if name == "hello":
            self._on_hello(event, seq)
            return
        if isinstance(seq, int):
            if seq != self._next_seq:
                log.warning("Mattermost websocket: expected event %d, got %d", self._next_seq, seq)
            self._next_seq = seq + 1
        if name == "user_updated":
            self._user_updated(event)
            return
        if name == "posted":
            await self._on_posted(event)

    async def _on_posted(self, event: dict[str, Any]) -> bool:
        """A `posted` event, live or caught up (`_catch_up`): one path, so both are checked alike.
        Whether a message was handed over; a malformed or failing one is logged and skipped."""
        try:
            message = await self._message(event)
        except UnknownPerson as exc:
            log.warning("Mattermost: %s", exc)
            return False
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            log.warning("Mattermost: a malformed posted event was skipped (%s: %s)", type(exc).__name__, exc)
            return False
        except Exception:
            log.exception("Mattermost: a posted event could not be read; skipped")
            return False
        if message is None or self._on_message is None:
            return False
        try:
            await self._on_message(message)
        except Exception:
            log.exception("Mattermost: handling post %s failed", message.id)
        return True

    async def _message(self, event: dict[str, Any]) -> Message | None:
        data = event.get("data") or {}
        post = json.loads(data["post"]) if isinstance(data.get("post"), str) else data.get("post")
        if not isinstance(post, dict) or not post.get("id"):
            return None
        user_id = str(post.get("user_id") or "")
        if user_id == self.me.get("id") or post.get("type") or post["id"] in self._seen:
            return None  # our own posts, system messages (joins, header changes), replays already handled
        props = post.get("props") or {}
        if str(props.get("from_webhook") or "").lower() == "true":
            # Posted through a webhook or as a slash command's answer, which the server posts as the
            # person who ran the command: never that person's command (or Squall's answers run again).
            return None
        if str(props.get("from_bot") or "").lower() == "true":
            # The server marks every bot account's post so (app/post.go): another bot's output, or its
            # relay of something, is never a command (two bots could also answer each other forever).
            return None
        self._seen.append(post["id"])
        if isinstance(post.get("create_at"), int):
            self._newest = max(self._newest, post["create_at"])
        text = str(post.get("message") or "")
        mentions = data.get("mentions")
        mentioned_ids = json.loads(mentions) if isinstance(mentions, str) else (mentions or [])
        mentioned = self.me.get("id") in mentioned_ids
        if self._mention is not None and self._mention.search(text):
            mentioned = True
            text = self._mention.sub("", text).strip()
        channel = str(post.get("channel_id") or "")
        self._known_channels.add(channel)
        kind = data.get("channel_type") or await self._channel_type(channel)
        return Message(adapter=self.name, channel=channel,
                       user=await self._username(user_id), text=text,
                       thread=post.get("root_id") or None, mentioned=mentioned, direct=kind == "D", id=post["id"],
                       raw=post, user_id=user_id or None, channel_name=data.get("channel_name") or None,
                       delivery=str(post["id"]))

    async def _channel_type(self, channel: str) -> str:
        """O, P, D or G, for an event that did not say (Mattermost's own always do)."""
        if channel not in self._channel_types:
            try:
                self._channel_types[channel] = str((await self._call("GET", f"/channels/{_quote(channel)}"))["type"])
            except (MattermostError, KeyError, TypeError) as exc:
                log.warning("Mattermost: cannot tell the type of channel %s (%s)", channel, exc)
                return ""
        return self._channel_types[channel]

    # -- buttons ---------------------------------------------------------------------------------------
    def _buttons(self, reply: Reply, text: str) -> dict[str, Any]:
        """An attachment of interactive buttons; a click comes back to `/mattermost/actions`. Their
        signed context names whom the prompt asks by user id (`asker_id`) as well as by name."""
        actions = []
        for index, button in enumerate(reply.buttons):
            context = {"value": str(button["value"]), "label": str(button["text"]), "thread": reply.thread or "",
                       "asker": reply.asker or "", "asker_id": reply.asker_id or "", "prompt": text}
            actions.append({"id": f"squall{index}", "type": "button", "name": str(button["text"]),
                            "integration": {"url": self.settings.actions_url,
                                            "context": {**context, "signature": self._sign(context)}}})
        return {"actions": actions}

    def _sign(self, context: dict[str, Any]) -> str:
        document = json.dumps({k: v for k, v in context.items() if k != "signature"}, sort_keys=True)
        return hmac.new(self._action_key, document.encode(), hashlib.sha256).hexdigest()

    async def button_action(self, request: Request) -> JSONResponse:
        """A click on one of our buttons, as the Mattermost server forwards it: the person answers as
        if they had typed the button's value in the prompt's thread; the prompt loses its buttons, marked
        with the choice, unless the bot said the click answers nothing (`ClickOutcome.taken` False: the
        prompt expired or was answered already), which leaves it as it is."""
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # UnicodeDecodeError too
            return JSONResponse({"error": {"message": "the action request is not JSON (UTF-8): Mattermost sends "
                                                      "a JSON object with user_id, channel_id and context"}},
                                status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "the action request must be a JSON object with user_id, "
                                                      "channel_id and context"}}, status_code=400)
        if body.get("type") == "dialog_submission":
            return await self._dialog_submission(body)
        context = body.get("context")
        # Ours hold strings only: anything else was not made here (and is not worth hashing).
        if not (isinstance(context, dict) and all(isinstance(v, str) for v in context.values())
                and hmac.compare_digest(str(context.get("signature", "")).encode(), self._sign(context).encode())):
            log.warning("Mattermost: refused a button action whose context this Squall did not sign")
            return JSONResponse({"error": {"message": "this button was not made by this Squall"}}, status_code=401)
        wrong = next((k for k in ("user_id", "channel_id", "user_name", "channel_name")
                      if body.get(k) is not None and not isinstance(body[k], str)), None)
        if wrong is not None:
            log.warning("Mattermost: refused a button action whose %s is not a string", wrong)
            return JSONResponse({"error": {"message": f"the action request's {wrong} must be a string"}},
                                status_code=400)
        user_id, channel = str(body.get("user_id") or ""), str(body.get("channel_id") or "")
        if not user_id or not channel:
            return JSONResponse({"error": {"message": "the action request lacks user_id or channel_id"}},
                                status_code=400)
        if self._on_message is None:
            return JSONResponse({"error": {"message": "Squall's chat is not running"}}, status_code=503)
        try:
            user = await self._username(user_id)
        except UnknownPerson as exc:  # refused, not guessed: the buttons stay for a click a moment later
            log.warning("Mattermost: a button click refused: %s", exc)
            return JSONResponse({"ephemeral_text": "Mattermost could not say who you are just now, so your "
                                                   "click was not taken; click again in a moment."})
        # A prompt at the top of a channel (an inquiry asked through a route) is its own thread's root:
        # its post id names it, so the click answers that question as a reply in its thread would.
        post_id = body.get("post_id") if isinstance(body.get("post_id"), str) else ""
        thread = str(context.get("thread") or "") or post_id or None
        message = Message(adapter=self.name, channel=channel, user=user, text=str(context["value"]),
                          thread=thread, mentioned=True,
                          direct=await self._channel_type(channel) == "D", raw={"action": body}, user_id=user_id,
                          channel_name=body.get("channel_name") or None,
                          trigger=body["trigger_id"] if isinstance(body.get("trigger_id"), str) else None,
                          clicked=True)
        message.click = click = ClickOutcome()
        task = asyncio.create_task(self._handle(message), name="mattermost-button")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        # Whose click takes the buttons off: the asker's by user id where the prompt carries it (a name can
        # pass to someone else while the prompt waits), by name on a prompt posted before it did.
        asked = context["asker_id"] == user_id if context.get("asker_id") else context.get("asker") in ("", user)
        if not asked:
            return JSONResponse({})  # someone else's click: the buttons stay for the one asked
        if await click.known(task, CLICK_ANSWER_WAIT) is False:
            return JSONResponse({})  # expired or answered already: the bot's reply says so, the prompt stays
        chosen = f"_{user} chose **{context.get('label', context['value'])}**_"
        update = quiet_mentions(f"{context.get('prompt', '')}\n\n{chosen}".strip())
        return JSONResponse({"update": {"message": update, "props": {}}})

    # -- interactive dialogs (forms) -------------------------------------------------------------------
    async def open_form(self, trigger: str, form: Form) -> None:
        """`POST /actions/dialogs/open`: the form as an interactive dialog, submitted to `actions_url`."""
        if not self.settings.actions_url:
            raise DeliveryError("forms need adapters.mattermost.actions_url", permanent=True)
        try:
            await self._call("POST", "/actions/dialogs/open",
                             body={"trigger_id": trigger, "url": self.settings.actions_url, "dialog": dialog(form)})
        except MattermostError as exc:
            raise DeliveryError(f"Mattermost refused to open the form: {exc}", permanent=True) from None

    async def _dialog_submission(self, body: dict[str, Any]) -> JSONResponse:
        """A dialog sent back (the server forwards it with the submitter's user_id): the bot's check
        answers at once, `errors` per field keep the dialog open, `error` is about the whole form. A
        cancellation (`cancelled: true`; the web app sends no submission with it) is handed on as a
        cancelled submission with no values."""
        submitted, user_id = body.get("submission"), body.get("user_id")
        cancelled = body.get("cancelled") is True
        if self.on_form is None:
            return JSONResponse({})
        if cancelled:
            submitted = {}
        if not isinstance(submitted, dict) or not isinstance(user_id, str) or not isinstance(body.get("state"), str):
            return JSONResponse({"error": "the dialog submission lacks user_id, state or submission"}, status_code=400)
        values = {k: ("true" if v is True else str(v)) for k, v in submitted.items()
                  if v is not None and v is not False and v != ""}
        try:
            user = await self._username(user_id)
        except UnknownPerson as exc:  # the dialog stays open, to be submitted again
            log.warning("Mattermost: a dialog submission refused: %s", exc)
            return JSONResponse({"error": "Mattermost could not say who you are just now; submit the form again "
                                          "in a moment."})
        errors = await self.on_form(FormSubmission(adapter=self.name, user=user, state=body["state"], values=values,
                                                   user_id=user_id, cancelled=cancelled))
        general = errors.pop("", None)
        return JSONResponse({**({"errors": errors} if errors else {}), **({"error": general} if general else {})})

    # -- slash commands ------------------------------------------------------------------------------
    def mount(self, app: Any) -> None:  # app: fastapi.FastAPI
        """`POST /mattermost/command` (and GET, a slash command's other method) and, for buttons,
        `POST /mattermost/actions`, on Squall's API server."""
        async def mattermost_command(request: Request) -> JSONResponse:
            return await self.slash_command(request)

        async def mattermost_actions(request: Request) -> JSONResponse:
            return await self.button_action(request)

        app.add_api_route("/mattermost/command", mattermost_command, methods=["POST", "GET"],
                          include_in_schema=False)
        app.add_api_route("/mattermost/actions", mattermost_actions, methods=["POST"], include_in_schema=False)

    async def slash_command(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            form = dict(request.query_params)
        else:
            try:
                form = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError:
                return JSONResponse({"text": "the slash-command body is not UTF-8 form data"}, status_code=400)
        if not self._slash_token_ok(form.get("token"), request.headers.get("authorization")):
            return JSONResponse({"response_type": "ephemeral", "text": "invalid slash-command token"},
                                status_code=401)
        missing = [k for k in ("channel_id", "response_url") if not form.get(k)]
        if not (form.get("user_name") or form.get("user_id")):
            missing.append("user_name")
        if missing:
            return JSONResponse({"response_type": "ephemeral",
                                 "text": f"the slash-command request lacks {', '.join(missing)}"}, status_code=400)
        try:
            response_url = urlsplit(form["response_url"])
            usable = response_url.scheme in ("http", "https") and bool(response_url.hostname)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            usable = False
        if not usable:
            log.warning("Mattermost: refused a slash command whose response_url is not an http(s) URL")
            return JSONResponse({"response_type": "ephemeral",
                                 "text": "the slash-command request's response_url must be an http(s) URL, not "
                                         f"{form['response_url'][:60]!r}"}, status_code=400)
        if self._on_message is None:
            return JSONResponse({"response_type": "ephemeral", "text": "Squall's chat is not running"},
                                status_code=503)
        try:
            user = form.get("user_name") or await self._username(form["user_id"])
        except UnknownPerson as exc:
            log.warning("Mattermost: a slash command refused: %s", exc)
            return JSONResponse({"response_type": "ephemeral",
                                 "text": "Mattermost could not say who you are just now, so the command did not "
                                         "run; try again in a moment."})
        self._expire_slash()
        key = secrets.token_hex(8)
        command = _SlashCommand(response_url=form["response_url"], channel=form["channel_id"],
                                first=asyncio.get_running_loop().create_future())
        self._slash[key] = command
        message = Message(adapter=self.name, channel=form["channel_id"], user=user, text=form.get("text", "").strip(),
                          thread=_SLASH + key, mentioned=True, id=_SLASH + key, raw=form,
                          user_id=form.get("user_id") or None, channel_name=form.get("channel_name") or None,
                          trigger=form.get("trigger_id") or None)
        task = asyncio.create_task(self._handle(message), name="mattermost-slash")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(command.first), SLASH_ANSWER_WAIT)
        command.answered = True  # from here on, replies go through response_url
        if command.first.done() and not command.first.cancelled():
            first = command.first.result()
            return JSONResponse(_response_payload(first.text, attachments(first.extra)))
        shown = (form.get("command", "") + " " + form.get("text", "")).strip()
        return JSONResponse({"response_type": "ephemeral", "text": f"Working on `{shown}` …"})

    async def _handle(self, message: Message) -> None:
        """A slash command or a button click, handled after the HTTP answer (errors are logged)."""
        assert self._on_message is not None
        try:
            await self._on_message(message)
        except Exception:
            log.exception("Mattermost: handling a slash command or button click failed")

    def _slash_token_ok(self, form_token: str | None, authorization: str | None) -> bool:
        expected = self.settings.slash_token
        if not expected:
            log.warning("Mattermost slash command refused: adapters.mattermost.slash_token is not set")
            return False
        presented = [form_token] if form_token else []
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "token" and value.strip():
            presented.append(value.strip())
        return bool(presented) and all(hmac.compare_digest(p.encode(), expected.encode()) for p in presented)

    def _slash_command(self, thread: str | None) -> _SlashCommand | None:
        if not thread or not thread.startswith(_SLASH):
            return None
        return self._slash.get(thread[len(_SLASH):])

    def _expire_slash(self) -> None:
        now = time.monotonic()
        for key, command in list(self._slash.items()):
            if now - command.created > RESPONSE_URL_TTL:
                del self._slash[key]

    async def _answer_slash(self, command: _SlashCommand, reply: Reply, text: str,
                            extra_attachments: list[dict[str, Any]]) -> str | None:
        """The HTTP answer (first reply, if the request still waits) or a POST to response_url; None when
        the response_url is used up or expired, so the reply becomes an ordinary post in the channel."""
        if not command.answered and not command.first.done():
            command.first.set_result(Reply(**{**reply.__dict__, "text": text}))
            return f"{_SLASH}{id(command)}:0"
        if command.uses >= RESPONSE_URL_USES or time.monotonic() - command.created > RESPONSE_URL_TTL:
            return None
        assert self._session is not None
        try:  # no Authorization header: response_url needs none, and the bot token must not travel there
            async with self._session.post(command.response_url, json=_response_payload(text, extra_attachments),
                                          timeout=REST_TIMEOUT) as response:
                raw = await response.read()
                _decode(response, raw, "POST response_url", expect_json=False)
        except aiohttp.ClientError as exc:
            raise MattermostError(f"POST response_url: cannot reach it ({exc.__class__.__name__})") from None
        except TimeoutError:
            raise MattermostError("POST response_url: no answer in time") from None
        command.uses += 1
        return f"{_SLASH}{id(command)}:{command.uses}"


def _element(item: FormField) -> dict[str, Any]:
    """A dialog element for a field's kind (Mattermost's limits: display_name 24, help_text 150)."""
    element: dict[str, Any] = {"display_name": item.label[:24], "name": item.name, "optional": not item.required,
                               "help_text": item.hint[:150], "type": "text"}
    if item.kind == "enum":
        element |= {"type": "select", "options": [{"text": o, "value": o} for o in item.options]}
    elif item.kind == "boolean":
        element |= {"type": "bool", "placeholder": item.label}
    elif item.kind in ("array", "object"):
        element |= {"type": "textarea", "max_length": 3000}
    elif item.kind in ("integer", "number", "secret"):
        element["subtype"] = "password" if item.kind == "secret" else "number"
    if item.initial and item.kind != "secret":
        element["default"] = item.initial
    return element


def dialog(form: Form) -> dict[str, Any]:
    """A form as an interactive dialog; `state` comes back with the submission, and with its cancellation
    (`notify_on_cancel`: without it Mattermost says nothing, and the person is never told nothing ran)."""
    return {"callback_id": "squall_form", "title": form.title, "elements": [_element(f) for f in form.fields],
            "submit_label": form.submit, "state": form.state, "notify_on_cancel": True}




def _inline(text: str, file: tuple[str, str] | None, limit: int) -> str:
    """A reply's text, with its file (if any) inline: as much of the start as one post takes, cut at a
    line, and a note saying how much was left out, since the file itself could not be posted."""
    if file is None:
        return text
    name, content = file
    said = caption(text, content)
    room = max(0, limit - len(said) - 300)
    head = content[:room]
    if len(head) < len(content) and "\n" in head:
        head = head.rsplit("\n", 1)[0]
    note = "" if len(head) == len(content) else (
        f"\n(output truncated: the first {len(head):,} of {len(content):,} characters; {name} could not be "
        "uploaded to this channel, where the bot is not a member)")
    # A fence longer than any backtick run in the output (CommonMark's rule, which Mattermost follows), so
    # no line of it closes the block.
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", head)), default=0))
    return f"{said}\n{fence}\n{head}\n{fence}{note}".lstrip("\n")


def _response_payload(text: str, extra_attachments: list[dict[str, Any]]) -> dict[str, Any]:
    payload: dict[str, Any] = {"response_type": "in_channel", "text": text}
    if extra_attachments:
        payload["attachments"] = extra_attachments
    return payload


def _decode(response: aiohttp.ClientResponse, raw: bytes, what: str, expect_json: bool = True) -> Any:
    """The JSON body of a 2xx answer; otherwise a `MattermostError` with Mattermost's id and message."""
    if response.status == 429:
        wait = retry_after(response.headers)
        raise MattermostError(f"{what}: rate limited by Mattermost; retry in {wait:g}s", status=429,
                              error_id="rate_limited", retry_after=wait)
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    if response.status >= 400:
        error_id = body.get("id", "") if isinstance(body, dict) else ""
        reason = body.get("message", "") if isinstance(body, dict) else raw[:200].decode("utf-8", "replace")
        raise MattermostError(f"{what}: HTTP {response.status} {error_id} {reason}".rstrip(), status=response.status,
                              error_id=error_id)
    if expect_json and body is None:
        raise MattermostError(f"{what}: the answer is not JSON", status=response.status)
    return body


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def create(section: dict[str, Any], config: Any) -> MattermostAdapter:
    """`adapters.mattermost`: url, token, team, slash_token (env MATTERMOST_URL, MATTERMOST_TOKEN)."""
    path = getattr(config, "path", None)
    return MattermostAdapter(MattermostSettings.from_section(section or {}, where=f"{path}: " if path else ""))
