"""Slack through slack-bolt: Socket Mode (default, no public URL) or HTTP mode (`POST /slack/events`).

Thin by design: Slack events, slash commands and button clicks become `Message`s; `Reply`s become
`chat.postMessage`, `chat.update` or `files_upload_v2`. What the peers get wrong is handled here
(../shared/reference/peers.md §3): an event's envelope is acknowledged only once what it carries is
stored, or is no command (bolt's `process_before_response`; its default acknowledged first, and a crash
then lost a command Slack never sent again), and a slash command, a click or a shortcut once its command
is stored or after `ACK_WITHIN` (Slack sends those only once); Slack's retries of an event run it once
(by `event_id`, and an `app_mention` and its `message` twin by channel and timestamp, in memory; after a
restart by the key its command was stored with, `Message.delivery`); a 429 becomes a `DeliveryError`
carrying `Retry-After`, so the outbox waits and keeps the channel's order; a watchdog reconnects a
socket that went silent; a failing handler is logged and the adapter goes on (an event it failed is
left to Slack's retry). In HTTP mode a request is checked before bolt sees it: a missing, malformed or
stale timestamp or a wrong signature is 401, a signed payload with a field of the wrong type
(`payload_problem`) is 400 and one log line; an event not stored is a 503.

Forms (issue 20): `open_form` is `views.open` with the bot's fields as Block Kit inputs; a
`view_submission` is checked by the bot (`on_form`) before the ack, so errors go back on the fields
(`response_action: errors`); a valid one is acked once its command is stored, or within 2 s
(`bot.chat.forms.ANSWER_WITHIN`) if that takes longer. Modals are opened with `notify_on_close`, so Slack sends a
`view_closed` when the person closes one unsent; it is handed on as a cancelled submission (the bot says nothing was
run and forgets the form). A message shortcut sends the command its `callback_id` names
(`run-form` in the app's manifest) on the message's text, with the shortcut's `trigger_id`.

Config (`adapters.slack`): `mode` (`socket`|`http`), `bot_token`, `app_token`, `signing_secret`
(tokens default to `SLACK_BOT_TOKEN`, `SLACK_APP_TOKEN`, `SLACK_SIGNING_SECRET`), `base_url`,
`slash_command`, `thread_replies`, `file_threshold`, `watchdog_seconds`, `status_reactions`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.request.internals import parse_body
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import (
    AdapterConfigError,
    Capabilities,
    ClickOutcome,
    DeliveryError,
    Form,
    FormHandler,
    FormSubmission,
    FoundPost,
    HomeHandler,
    Message,
    MessageHandler,
    Part,
    Reply,
    attached,
)
from adapters.slack_format import (
    ACTION_PREFIX,
    FORM_CALLBACK,
    MAX_BLOCKS,
    MAX_TEXT,
    SECTION_LIMIT,
    clicked_summary,
    escape,
    form_values,
    form_view,
    home_view,
    inline_file,
    mentioned_users,
    message_arguments,
    plain_text,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://slack.com/api/"
#: Message subtypes a person produces; the rest (bot_message, message_changed, ...) are not commands.
_PERSON_SUBTYPES = {None, "thread_broadcast", "file_share"}
_TOKENS = {"bot_token": "SLACK_BOT_TOKEN", "app_token": "SLACK_APP_TOKEN", "signing_secret": "SLACK_SIGNING_SECRET"}
_KEYS = {"enabled", "mode", "base_url", "slash_command", "thread_replies", "file_threshold", "watchdog_seconds",
         "status_reactions", *_TOKENS}
#: Errors after which a reply can still reach the channel through a slash command's response_url.
_USE_RESPONSE_URL = {"not_in_channel", "channel_not_found", "is_archived"}
#: Errors worth the outbox's retry (with HTTP 5xx, `_transient`); any other refusal of an edit makes it a
#: new message instead, and of an upload the start of the output posted inline.
_TRANSIENT = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout",
              "team_added_to_org"}
#: Errors Slack may answer after doing part of the call (`fatal_error`: "some aspect of the operation
#: succeeded"), or after it ran out of time on its side: a message may be posted, so the outbox looks
#: for it before sending it again (`DeliveryError.maybe_taken`), as after a 5xx or a dropped connection.
_MAYBE_DONE = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
#: Web API methods that post a message (completing an upload shares it in a message of its own): the client
#: never repeats one after a dropped connection (slack_sdk's default retry did, blindly, so a message Slack
#: had stored was posted twice). The outbox retries it, asking `find_sent` first whether Slack has it.
_POSTS = frozenset({"chat.postMessage", "files.completeUploadExternal"})
IDENTITY_TTL = 3600.0
#: `users.info` calls per minute for people mentioned (`<@U…>`) and not known yet. Every message is
#: passed on, chatter too, so made-up mentions would otherwise spend the rate limit senders' names
#: need (a sender not yet named is dropped); past it, and for a while after a failed lookup
#: (`MENTION_RETRY`), a mention stays `@U…`.
MENTION_LOOKUPS_PER_MINUTE = 20
MENTION_RETRY = 600.0
GROUPS_TTL = 300.0
SEEN_SIZE = 5000
#: Seconds a slash command, a click or a shortcut waits for what it carries to be stored (`Message` handed
#: on, `MessageHandler`) before it is acknowledged all the same: Slack never sends those again, and shows
#: the person an error after 3 s for a command that is about to be stored. (An event waits for its
#: outcome however long: Slack has sent it again by then, and that delivery waits for the same outcome.)
ACK_WITHIN = 2.5
#: Seconds of a 429's `Retry-After` a lookup (a sender's or a mentioned person's name, a channel's, the
#: user groups) waits out before asking once more. Lookups run before what a payload carries is stored,
#: so before its ack, which Slack wants within 3 s: waiting out a longer one held an event's ack past
#: that (Slack sent it again) and a slash command's "try again" until after its ack. Past it the lookup
#: fails at once: a sender not named yet is not taken (an event is answered 503 and Slack's retry runs
#: it; a slash command, click or shortcut is told to try again in a moment).
LOOKUP_RETRY_WITHIN = 1.0
#: The answer to an event Squall did not take (not stored, or not yet): anything but a 200 leaves it
#: unacknowledged, in Socket Mode and HTTP mode alike, and Slack sends it again.
NOT_TAKEN = "Squall has not stored what this event carries (yet); Slack sends it again"
#: Characters (escaped, as Slack counts them) of the message that says the start of a file's content
#: inline when the upload itself is refused (`inline_file`).
UPLOAD_FALLBACK = 3500
#: The `block_id` prefix of a prompt's buttons that ask one person (`_with_asker`): whose click removes them.
#: By name on prompts posted before they carried the person's user id (`ASKER_ID_BLOCK`).
ASKER_BLOCK = "squall_buttons.asker."
#: The same, by the person's Slack user id: a name can be renamed away and taken while the prompt waits.
ASKER_ID_BLOCK = "squall_buttons.asker_id."
#: The metadata event type that carries a reply's outbox id (`find_sent`).
OUTBOX_EVENT = "squall_reply"
#: The `block_id` prefix that carries it on the message an upload shares: `files.completeUploadExternal`
#: takes no metadata, but it takes `blocks`, and `conversations.history` gives them back with their ids.
#: After the prefix: the outbox id, then the `Part` (number, count, end) of a reply sent in parts.
OUTBOX_BLOCK = "squall_reply."
#: HTTP mode: how far `X-Slack-Request-Timestamp` may be from this server's clock, either way (Slack's
#: own advice: older requests may be replays).
MAX_CLOCK_SKEW = 300
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
#: A Slack message timestamp (its id in a channel), e.g. 1700000000.000100.
_SLACK_TS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


#: Slack errors that no retry will fix: the reply fails at once instead of holding its channel.
_PERMANENT = {"channel_not_found", "not_in_channel", "is_archived", "msg_too_long", "no_text", "invalid_blocks",
              "invalid_attachments", "missing_scope", "not_authed", "invalid_auth", "account_inactive",
              "restricted_action", "cannot_dm_bot"}


@dataclass
class SlackSettings:
    """`adapters.slack`, checked: tokens are kept out of reprs so they never reach a log."""

    mode: str = "socket"
    bot_token: str = field(default="", repr=False)
    app_token: str = field(default="", repr=False)
    signing_secret: str = field(default="", repr=False)
    base_url: str = DEFAULT_BASE_URL
    slash_command: str = "/squall"
    thread_replies: bool = True
    file_threshold: int = 4000
    #: Reconnect the socket when Slack sent nothing for this long (0: never).
    watchdog_seconds: float = 600.0
    status_reactions: bool = False

    @classmethod
    def from_section(cls, section: dict[str, Any], environ: dict[str, str] | None = None) -> SlackSettings:
        env = os.environ if environ is None else environ
        unknown = sorted(set(section) - _KEYS)
        if unknown:
            raise AdapterConfigError(f"unknown key 'adapters.slack.{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
        mode = str(section.get("mode") or "socket").lower()
        if mode not in ("socket", "http"):
            raise AdapterConfigError(f"adapters.slack.mode must be 'socket' or 'http', not {section.get('mode')!r}")
        tokens = {key: str(section.get(key) or env.get(var) or "") for key, var in _TOKENS.items()}
        needed = ["bot_token", "app_token" if mode == "socket" else "signing_secret"]
        for key in needed:
            if not tokens[key]:
                raise AdapterConfigError(f"adapters.slack.{key} is not set and neither is the environment variable "
                                         f"{_TOKENS[key]}; the Slack adapter in {mode} mode needs it")
        # Swapped tokens are the classic set-up mistake; other shapes (rotated `xoxe.xoxb-`) are Slack's to judge.
        if tokens["bot_token"].startswith("xapp-"):
            raise AdapterConfigError("adapters.slack.bot_token (or SLACK_BOT_TOKEN) holds an app-level token (xapp-); "
                                     "it needs the Bot User OAuth Token (xoxb-)")
        if mode == "socket" and tokens["app_token"].startswith(("xoxb-", "xoxp-")):
            raise AdapterConfigError("adapters.slack.app_token (or SLACK_APP_TOKEN) holds a bot token (xox…); it "
                                     "needs an app-level token (xapp-, Basic Information > App-Level Tokens, scope "
                                     "connections:write)")
        base_url = str(section.get("base_url") or DEFAULT_BASE_URL)
        if not base_url.startswith(("http://", "https://")):
            raise AdapterConfigError(f"adapters.slack.base_url must be an http(s) URL, not {base_url!r}")
        command = str(section.get("slash_command") or "/squall")
        return cls(
            mode=mode, **tokens,
            base_url=base_url if base_url.endswith("/") else base_url + "/",  # urljoin drops a last segment
            slash_command=command if command.startswith("/") else "/" + command,
            thread_replies=bool(section.get("thread_replies", True)),
            file_threshold=_number(section, "file_threshold", 4000, int, minimum=1),
            watchdog_seconds=_number(section, "watchdog_seconds", 600.0, float, minimum=0),
            status_reactions=bool(section.get("status_reactions", False)),
        )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _strings(where: str, document: dict[str, Any], *keys: str) -> str | None:
    """The first of `keys` present in `document` with a value that is neither a string nor null."""
    for key in keys:
        value = document.get(key)
        if value is not None and not isinstance(value, str):
            return f"{where}{key} must be a string, not {_kind(value)} ({_shown(value)})"
    return None


def _timestamps(where: str, document: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = document.get(key)
        if value is not None and not (isinstance(value, str) and _SLACK_TS.fullmatch(value)):
            return f"{where}{key} must be a Slack timestamp such as \"1700000000.000100\", not {_shown(value)}"
    return None


def _object(where: str, value: Any, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        return f"{where} must be an object, not {_kind(value)}"
    return None


def payload_problem(body: Any) -> str | None:  # noqa: C901 (a check per field of Slack's documented payloads)
    """What is wrong with the shape of a Slack payload, in the fields Squall or bolt reads, or None.

    Slack's own payloads always pass; this is for anything else that reaches `/slack/events` (or the
    socket) with a field of the wrong type, a missing key or a non-numeric timestamp: such a payload
    is dropped with one log line instead of failing inside a handler."""
    if not isinstance(body, dict):
        return f"the payload must be a JSON object, not {_kind(body)}"
    problem = _strings("", body, "type", "token", "team_id", "api_app_id", "event_id", "command", "text",
                       "user_id", "user_name", "channel_id", "channel_name", "response_url", "trigger_id",
                       "enterprise_id")
    if problem:
        return problem
    for key in ("team", "enterprise", "user", "channel"):  # an id, or an object with an "id"
        value = body.get(key)
        if isinstance(value, dict):
            problem = _strings(f"{key}.", value, "id", "name", "username", "enterprise_id")
        elif value is not None and not isinstance(value, str):
            problem = f"{key} must be an id or an object, not {_kind(value)} ({_shown(value)})"
        if problem:
            return problem
    authorizations = body.get("authorizations")
    if authorizations is not None:
        if not isinstance(authorizations, list) or not all(isinstance(a, dict) for a in authorizations):
            return "authorizations must be an array of objects"
        for index, item in enumerate(authorizations):
            problem = _strings(f"authorizations[{index}].", item, "user_id", "team_id", "enterprise_id")
            if problem:
                return problem
    url = body.get("response_url")
    if url is not None and not re.match(r"https?://[^/?#\s]+", url, re.IGNORECASE):
        return f"response_url must be an http(s) URL, not {_shown(url)}"
    if "command" in body and not (body.get("user_id") and body.get("channel_id")):
        return "a slash command needs user_id and channel_id"
    for key in ("view", "message", "container", "state"):  # whatever the type, bolt reads these as objects
        problem = _object(key, body.get(key))
        if problem:
            return problem
    kind = body.get("type")
    if kind == "url_verification" and not isinstance(body.get("challenge"), str):
        return "a url_verification payload needs a challenge string"
    if kind == "event_callback" or "event" in body:
        event = body.get("event")
        if not isinstance(event, dict):
            return f"event must be an object, not {_kind(event)}"
        if not isinstance(event.get("type"), str):
            return "event.type must be a string"
        if event["type"] in ("message", "app_mention"):
            problem = (_strings("event.", event, "user", "channel", "text", "subtype", "channel_type", "bot_id",
                                "team")
                       or _timestamps("event.", event, "ts", "thread_ts", "event_ts"))
            if problem is None and event.get("user") and not (event.get("channel") and event.get("ts")):
                problem = f"a {event['type']} event from a person needs channel and ts"
            return problem
    if kind == "block_actions" or "actions" in body:
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions or not all(isinstance(a, dict) for a in actions):
            return "actions must be a non-empty array of objects"
        for index, action in enumerate(actions):
            where = f"actions[{index}]."
            if not isinstance(action.get("action_id"), str):
                return f"{where}action_id must be a string"
            problem = (_strings(where, action, "value", "block_id", "type")
                       or _object(f"{where}text", action.get("text"))
                       or _strings(f"{where}text.", action.get("text") or {}, "text"))
            if problem:
                return problem
        problem = _object("channel", body.get("channel"))
        if problem:
            return problem
        container, message = body.get("container") or {}, body.get("message") or {}
        problem = (_strings("container.", container, "channel_id")
                   or _timestamps("container.", container, "thread_ts", "message_ts")
                   or _strings("message.", message, "text")
                   or _timestamps("message.", message, "ts", "thread_ts"))
        if problem:
            return problem
        if not isinstance(body.get("user"), dict) or not isinstance(body["user"].get("id"), str):
            return "user must be an object with an id string"
        home = isinstance(body.get("view"), dict) and body["view"].get("type") == "home"
        if not ((body.get("channel") or {}).get("id") or container.get("channel_id") or home):
            return "a block_actions payload needs channel.id or container.channel_id (or a home view)"
    return None


def _number(section: dict[str, Any], key: str, default: Any, kind: type, minimum: float) -> Any:
    value = section.get(key, default)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise AdapterConfigError(f"adapters.slack.{key} must be a number, not {value!r}") from None
    if isinstance(value, bool) or number < minimum:
        raise AdapterConfigError(f"adapters.slack.{key} must be a number >= {minimum}, not {value!r}")
    return number


class _Deliveries:
    """The events handed on lately or being handed on, by key (`event:<event_id>`, `message:<channel>:<ts>`),
    each with its outcome: whether what it carries was stored. Bounded: the last `size` keys.

    Slack sends an event again when it got no acknowledgement, also while the first delivery is still
    being handled, and one message as two events (an `app_mention` and its `message` twin). A later
    delivery answers as the first does, waiting for it if need be: acknowledged once that stored, never
    before. One that stored nothing is forgotten, so the next delivery is handled anew. Memory only: after
    a restart the key stored with the command (`Message.delivery`) is what runs it once."""

    def __init__(self, size: int = SEEN_SIZE) -> None:
        self.size = size
        self._outcomes: OrderedDict[str, asyncio.Future[bool]] = OrderedDict()

    def earlier(self, keys: Sequence[str]) -> tuple[str, asyncio.Future[bool]] | None:
        """The first of `keys` an earlier delivery is known by, with that delivery's outcome; None if none is."""
        return next(((key, self._outcomes[key]) for key in keys if key in self._outcomes), None)

    def begin(self, keys: Sequence[str]) -> asyncio.Future[bool]:
        """A delivery known by `keys` begins: its outcome, for the deliveries that come again meanwhile."""
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._outcomes[key] = outcome
            self._outcomes.move_to_end(key)
        while len(self._outcomes) > self.size:
            self._outcomes.popitem(last=False)
        return outcome

    def end(self, keys: Sequence[str], outcome: asyncio.Future[bool], stored: bool) -> None:
        """The delivery `begin` answered `outcome` for ended: whether what it carries was stored."""
        outcome.set_result(stored)
        if not stored:
            for key in keys:
                if self._outcomes.get(key) is outcome:
                    del self._outcomes[key]


class _Unreachable(Exception):
    """Slack could not be reached (network, DNS, timeout): worth retrying, unlike a refused token."""


class UnknownPerson(Exception):
    """Slack could not say who sent something (`users.info` failed for someone never looked up): what
    they sent is not taken (an event is left unacknowledged, and Slack sends it again)."""


class NoSuchPerson(UnknownPerson):
    """Slack says there is no such person (`user_not_found`): what Slack would send again names no one either."""


def _unnamed(exc: UnknownPerson, what: str) -> str:
    """What a person Slack could not name is told of their slash command, click or shortcut (`what`): in
    Mattermost's words (and the form's, `_on_form`)."""
    if isinstance(exc, NoSuchPerson):  # asking again names no one either
        return f"Slack says this app may not see who you are, so your {what} was not taken; ask a Slack admin."
    return f"Slack could not say who you are just now, so your {what} was not taken; try again in a moment."


#: users.info errors that say the id names no one this app may see: final, unlike a timeout or a 5xx.
_NO_SUCH_PERSON = frozenset({"user_not_found", "user_not_visible", "invalid_arguments"})


class _NoTokenNote(logging.Filter):
    """Drops Bolt's note that a token goes unused beside the client it is given: Bolt reads
    `SLACK_BOT_TOKEN` by itself, which docs/slack.md has people export for Squall's own client."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


def _bolt_logger() -> logging.Logger:
    """Bolt's base logger (its loggers copy its filters): `adapters.slack.bolt`, without the token note."""
    logger = logging.getLogger("adapters.slack.bolt")
    if not any(isinstance(f, _NoTokenNote) for f in logger.filters):
        logger.addFilter(_NoTokenNote())
    return logger


class SlackAdapter:
    name = "slack"

    def __init__(self, settings: SlackSettings) -> None:
        self.settings = settings
        self.capabilities = Capabilities(threads=settings.thread_replies, edits=True, rich=True, files=True,
                                         buttons=True, max_length=min(settings.file_threshold, MAX_TEXT))
        self.client = AsyncWebClient(token=settings.bot_token, base_url=settings.base_url, timeout=30,
                                     retry_handlers=[_RetryAllButPosts()])
        # Named for a logger of this adapter's: Bolt sets the level of the logger named after its app on
        # every request, which, named "squall", silenced Squall's own INFO lines.
        # `process_before_response`: bolt answers a payload's envelope (or HTTP request) once its listener
        # returned, never before (its default acknowledges an event as soon as it is dispatched, and a crash
        # then lost a command Slack never sends again); the listeners return once what the payload carries
        # is stored (a slash command, a click or a shortcut within ACK_WITHIN).
        self.app = AsyncApp(client=self.client, signing_secret=settings.signing_secret or "unused-in-socket-mode",
                            request_verification_enabled=settings.mode == "http", name="adapters.slack.app",
                            logger=_bolt_logger(), process_before_response=True)
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        #: The installation's workspace and Enterprise Grid organisation (auth.test): whose names count.
        self.team_id: str | None = None
        self.enterprise_id: str | None = None
        self.reconnects = 0  # watchdog reconnects, for operators and tests
        self._on_message: MessageHandler | None = None
        #: The bot's check of a submitted form (`adapters.base`: set by the bot when it has forms).
        self.on_form: FormHandler | None = None
        #: The buttons of a person's App Home tab (`adapters.base`: set by the bot when it has forms).
        self.on_home: HomeHandler | None = None
        self._deliveries = _Deliveries()
        #: Payloads being handed on, and reactions being added: held, as a task nobody references may be
        #: collected; a payload's goes on after its envelope was answered (`_handed`).
        self._handing: set[asyncio.Future[Any]] = set()
        self._users: dict[str, tuple[str, float]] = {}
        self._user_lookups: dict[str, asyncio.Future[str | None]] = {}
        self._mention_lookups: collections.deque[float] = collections.deque()
        self._unknown_mentions: OrderedDict[str, float] = OrderedDict()
        #: Ids users.info said name no one (`NoSuchPerson`): their events are taken and dropped, not retried.
        self._no_such: OrderedDict[str, None] = OrderedDict()
        self._channels: dict[str, tuple[str, float]] = {}
        self._channel_ids: dict[str, str] = {}
        self._groups: tuple[dict[str, list[str]], float] = ({}, 0.0)
        self._groups_lock = asyncio.Lock()
        self._response_urls: dict[str, tuple[str, float, int]] = {}
        self._socket: Any = None
        self._connected = asyncio.Event()
        self._last_frame = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._register()

    @property
    def online(self) -> bool:
        """Socket Mode: the socket is open and Slack said hello. HTTP mode: started (Slack calls us)."""
        if self.settings.mode == "http":
            return self._on_message is not None
        return self._socket is not None and self._connected.is_set()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, on_message: MessageHandler) -> None:
        """Check the tokens, then (Socket Mode) connect; returns once Slack said hello.

        A refused token is a `AdapterConfigError` (nothing will ever work); Slack being unreachable is not:
        the adapter keeps trying in the background and the rest of Squall serves meanwhile."""
        self._on_message = on_message
        try:
            await self._connect()
        except _Unreachable as exc:
            log.warning("Slack: %s; retrying in the background", exc)
            self._tasks.append(asyncio.create_task(self._connect_later(), name="slack-connect-later"))

    async def _connect(self) -> None:
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise AdapterConfigError(f"Slack refused adapters.slack.bot_token (auth.test: {_error(exc)})") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _Unreachable(f"the Web API at {self.settings.base_url} cannot be reached ({_error(exc)})") from None
        self.bot_user_id, self.bot_id = auth.get("user_id"), auth.get("bot_id")
        self.team_id, self.enterprise_id = auth.get("team_id"), auth.get("enterprise_id")
        log.info("Slack: connected to team %s as %s (%s mode)", auth.get("team"), auth.get("user"), self.settings.mode)
        if self.settings.mode == "socket":
            await self._start_socket()

    async def _connect_later(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect()
                return
            except _Unreachable as exc:
                delay = min(delay * 2, 60.0)
                log.warning("Slack: %s; retrying in %.0fs", exc, delay)
            except AdapterConfigError as exc:
                log.error("Slack: %s; the Slack adapter gives up", exc)
                return

    async def _start_socket(self) -> None:
        from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

        handler = AsyncSocketModeHandler(self.app, self.settings.app_token)
        handler.client.on_message_listeners.append(self._on_frame)
        try:  # asked here, once, so a bad app token is a clear error rather than slack_sdk's endless retry
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
        except SlackApiError as exc:
            await handler.client.close()
            raise AdapterConfigError(f"Slack refused adapters.slack.app_token (apps.connections.open: {_error(exc)})") \
                from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            await handler.client.close()
            raise _Unreachable(f"apps.connections.open failed ({_error(exc)})") from None
        self._socket = handler
        self._tasks.append(asyncio.create_task(handler.connect_async(), name="slack-connect"))
        try:
            await asyncio.wait_for(self._connected.wait(), 10)
        except TimeoutError:
            log.warning("Slack: no hello on the socket within 10s; still trying in the background")
        if self.settings.watchdog_seconds > 0:
            self._tasks.append(asyncio.create_task(self._watchdog(), name="slack-watchdog"))

    async def stop(self) -> None:
        """Disconnect, once the payloads being handed on are stored (for up to ACK_WITHIN), so their
        envelopes are answered on the socket still open; those still going on then stay unanswered, and
        Slack sends their events again to whichever process connects next."""
        if self._handing:
            await asyncio.wait(set(self._handing), timeout=ACK_WITHIN)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.client.close()
            self._socket = None
        self._on_message = None

    async def _on_frame(self, frame: aiohttp.WSMessage) -> None:
        self._last_frame = time.monotonic()
        if isinstance(frame.data, str) and '"hello"' in frame.data:
            self._connected.set()

    async def _watchdog(self) -> None:
        """Slack sockets can stay open yet deliver nothing (bolt #417, #1529): after a silence, reconnect."""
        limit = self.settings.watchdog_seconds
        while True:
            await asyncio.sleep(min(limit / 4, 5.0))
            silent = time.monotonic() - self._last_frame
            if silent < limit or self._socket is None:
                continue
            log.warning("Slack: nothing received for %.0fs; reconnecting the socket", silent)
            self._last_frame = time.monotonic()
            self.reconnects += 1
            client = self._socket.client
            try:
                client.wss_uri = await client.issue_new_wss_url()
                await asyncio.wait_for(client.connect(), 30)
            except Exception as exc:  # Slack unreachable: the next round tries again with a fresh URL
                log.warning("Slack: reconnecting failed (%s); retrying after another %.0fs", _error(exc), limit)

    def mount(self, app: Any) -> None:
        """HTTP mode: Slack's Events API, slash commands and interactivity all POST to /slack/events."""
        if self.settings.mode != "http":
            return
        app.add_route("/slack/events", self.http_request, methods=["POST"], include_in_schema=False)

    async def http_request(self, request: Any) -> Any:
        """One POST to /slack/events (`request`: a Starlette request).

        Checked before bolt sees it (bolt parses the body before it checks the signature, and answers
        500 to a non-numeric timestamp): a missing, malformed or stale `X-Slack-Request-Timestamp`, or a
        v0 signature that does not match, is 401; a signed body that is not UTF-8, not JSON or form data,
        or has a field of the wrong type, is 400 with one log line. Then bolt (which checks again) runs it."""
        from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
        from starlette.responses import JSONResponse

        body = await request.body()
        refused = self._unverified(request.headers, body)
        if refused:
            log.info("Slack: refused a request to /slack/events: %s", refused)  # scanners: not worth a warning
            return JSONResponse({"faultstring": f"Unauthorized - {refused}."}, status_code=401)
        try:
            payload = parse_body(body.decode("utf-8"), request.headers.get("content-type", "").split(";")[0].strip())
            problem = payload_problem(payload)
            bolt_request = None if problem else to_async_bolt_request(request, body)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            problem = f"the body is not UTF-8 JSON or form data as Slack sends ({type(exc).__name__}: {exc})"
        if problem or bolt_request is None:
            log.warning("Slack: dropped a signed request to /slack/events: %s", problem)
            return JSONResponse({"faultstring": f"Malformed Slack payload: {problem}."}, status_code=400)
        answer = await self.app.async_dispatch(bolt_request)
        if answer.status == 500:
            # bolt answers 500 only when it cannot route the payload (the listeners catch their own errors,
            # `_guarded`): a shape this check let through, so the request's fault. An event not stored yet
            # is a 503 (`NOT_TAKEN`), which Slack sends again.
            return JSONResponse({"faultstring": "Malformed Slack payload: Slack's SDK could not route it "
                                                "(the log says why)."}, status_code=400)
        return to_starlette_response(answer)

    def _unverified(self, headers: Any, body: bytes) -> str | None:
        """Why a request did not come from Slack (timestamp, v0 signature), or None when it did."""
        timestamp = headers.get("x-slack-request-timestamp")
        if not timestamp:
            return "header X-Slack-Request-Timestamp is missing (Slack sends the request's Unix time in it)"
        if not _UNIX_TIME.fullmatch(timestamp):
            return f"header X-Slack-Request-Timestamp must be a Unix time in whole seconds, not {_shown(timestamp)}"
        skew = time.time() - int(timestamp)
        if abs(skew) > MAX_CLOCK_SKEW:
            return (f"header X-Slack-Request-Timestamp is {abs(skew):.0f}s {'old' if skew > 0 else 'in the future'}; "
                    f"requests more than {MAX_CLOCK_SKEW}s from this server's clock are refused as possible replays")
        signature = headers.get("x-slack-signature")
        if not signature:
            return "header X-Slack-Signature is missing (v0=<HMAC-SHA256 of v0:timestamp:body>)"
        expected = hmac.new(self.settings.signing_secret.encode(), b"v0:" + timestamp.encode() + b":" + body,
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode("utf-8"), f"v0={expected}".encode()):
            return "header X-Slack-Signature does not match the body (check adapters.slack.signing_secret)"
        return None

    # -- Slack → Message -------------------------------------------------------------------------
    def _register(self) -> None:
        app = self.app
        app.event("app_mention")(self._on_app_mention)
        app.event("message")(self._on_message_event)
        app.command(self.settings.slash_command)(self._on_command)
        app.action(re.compile(f"^{ACTION_PREFIX}"))(self._on_button)
        app.view(FORM_CALLBACK)(self._on_form)
        app.view_closed(FORM_CALLBACK)(self._on_form)
        app.message_shortcut(re.compile(".+"))(self._on_shortcut)
        app.event("app_home_opened")(self._on_home)
        # Anything else subscribed is acknowledged, never 404 (which makes Slack retry it).
        app.event(re.compile(".*"))(self._ignore)
        app.error(self._on_error)

    async def _ignore(self, body: dict[str, Any]) -> None:
        return None

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("Slack: a handler failed on a %s payload: %s: %s", (body or {}).get("type", "?"),
                  type(error).__name__, error)

    async def _on_app_mention(self, body: dict[str, Any], event: dict[str, Any]) -> BoltResponse | None:
        return await self._acknowledged(body, event, mention=True)

    async def _on_message_event(self, body: dict[str, Any], event: dict[str, Any]) -> BoltResponse | None:
        return await self._acknowledged(body, event, mention=False)

    async def _acknowledged(self, body: dict[str, Any], event: dict[str, Any], mention: bool) -> BoltResponse | None:
        """None, and bolt acknowledges the event's envelope, once what it carries is stored or it is no
        command (chatter, the bot's own, an edit; a malformed payload, logged). Otherwise a 503
        (`NOT_TAKEN`): the envelope stays unacknowledged (in HTTP mode Slack's request gets the 503), and
        Slack sends the event again, which runs once (`_Deliveries`; after a restart, the key stored with
        its command). Storing that takes longer than Slack's 3 s is waited for all the same: Slack sends
        the event again meanwhile, and that delivery is answered as this one is."""
        if not self._well_formed(body) or await self._handed(self._event(body, event, mention)):
            return None
        return BoltResponse(status=503, body={"faultstring": NOT_TAKEN})

    async def _handed(self, handing: Awaitable[bool], within: float | None = None) -> bool:
        """Whether `handing` (a payload handed on, `_guarded`) stored what it carries; with `within`, False
        once that many seconds passed. It goes on if need be, whoever stops waiting for it (a listener
        cancelled, `within`): what is half stored is finished, never abandoned."""
        task = self._in_background(handing)
        try:
            return await asyncio.wait_for(asyncio.shield(task), within)
        except TimeoutError:
            log.info("Slack: what a payload carries is not stored after %gs; acknowledging it now", within)
            return False

    @staticmethod
    def _well_formed(body: Any) -> bool:
        """A payload with a field of the wrong type is dropped with one log line (HTTP mode refused it
        already; this is for Socket Mode)."""
        problem = payload_problem(body)
        if problem:
            log.warning("Slack: dropped a malformed %s payload: %s",
                        body.get("type", "?") if isinstance(body, dict) else "?", problem)
        return problem is None

    async def _guarded(self, work: Awaitable[bool]) -> bool:
        """Whether `work` (a payload handed on) stored what it carries. A failure (a dispatcher bug, a
        person Slack cannot name) is logged and stored nothing; the adapter keeps serving."""
        try:
            return await work
        except NoSuchPerson as exc:  # taken: what Slack sends again names no one either
            log.warning("Slack: %s", exc)
            return True
        except UnknownPerson as exc:
            log.warning("Slack: %s", exc)
        except Exception:
            log.exception("Slack: handling a payload failed")
        return False

    async def _event(self, body: dict[str, Any], event: dict[str, Any], mention: bool) -> bool:
        """Whether what `event` carries is taken: stored, or no command at all (`_acknowledged`)."""
        if event.get("subtype") not in _PERSON_SUBTYPES or event.get("bot_id") or not event.get("user"):
            return True
        if event.get("edited"):
            # An edit of a message that mentions the bot comes again as `app_mention` with an `edited`
            # field (a new event_id, the original's ts; bolt-js #960). The original already ran: an
            # edit is never a new command, whether or not `_deliveries` (memory only) still holds its ts.
            log.debug("Slack: the edit of %s:%s ignored (edits never run commands)", event.get("channel"),
                      event.get("ts"))
            return True
        if self.bot_user_id is None:  # auth.test said nothing of it: the envelope names the bot too
            self.bot_user_id = next((str(a["user_id"]) for a in body.get("authorizations") or []
                                     if a.get("is_bot") and a.get("user_id")), None)
        if event.get("user") == self.bot_user_id:
            return True
        channel, ts = str(event.get("channel", "")), str(event.get("ts", ""))
        keys = [*([f"event:{body['event_id']}"] if body.get("event_id") else []), f"message:{channel}:{ts}"]
        earlier = self._deliveries.earlier(keys)
        if earlier is not None:  # a retry, or the app_mention and the message event of one message
            if earlier[0].startswith("event:"):
                log.info("Slack: event %s delivered again (retry); it is handled once", body["event_id"])
            return await asyncio.shield(earlier[1])
        outcome = self._deliveries.begin(keys)
        stored = False
        try:
            stored = await self._guarded(self._message(event, mention, channel, ts))
        finally:
            self._deliveries.end(keys, outcome, stored)
        return stored

    async def _message(self, event: dict[str, Any], mention: bool, channel: str, ts: str) -> bool:
        """A person's message handed on: whether it was stored (`_deliver`).

        Every person's message goes on (the dispatcher decides what is addressed to the bot: a bare
        answer in an inquiry's thread has no prefix); names are cached, so chatter costs a lookup per
        person per hour, not per message. The lookups run at once: until the message is stored, its
        envelope waits (after a restart, every cache is empty)."""
        raw_text = str(event.get("text") or "")
        user, names, groups, channel_name = await asyncio.gather(
            self._user_name(event["user"]), self._mention_names(raw_text), self._groups_of(event["user"]),
            self._channel_name(channel))
        text, mentioned = plain_text(raw_text, self.bot_user_id, addressed=mention, names=names)
        message = Message(adapter=self.name, channel=channel, user=user, text=text, thread=event.get("thread_ts"),
                          mentioned=mention or mentioned, direct=event.get("channel_type") == "im"
                          or channel.startswith("D"), groups=groups, id=ts, raw={"event": event},
                          user_id=str(event["user"]), channel_name=channel_name, delivery=f"{channel}:{ts}")
        return await self._deliver(message)

    async def _on_command(self, ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
        """Acknowledged once its command is stored, or after ACK_WITHIN: Slack shows the person
        "operation_timeout" after 3 s, and never sends a slash command again."""
        await self._answered(ack, command, self._command, "command")

    async def _answered(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any],
                        hand_on: Callable[[dict[str, Any]], Awaitable[bool]], what: str) -> None:
        """Acknowledge a slash command, a click or a shortcut (`body`) once `hand_on` stored what it carries,
        or after ACK_WITHIN. Slack never sends these again, so a person Slack cannot name (`UnknownPerson`)
        is told, never left in silence, as a form's submitter is (`_on_form`): in the acknowledgement of a
        slash command when it is known by then (Slack shows its text to them alone), else through the
        payload's response_url (ephemeral: the acknowledgement of a click shows nothing)."""
        told: list[str] = []
        acked = False

        async def named() -> bool:
            try:
                return await hand_on(body)
            except UnknownPerson as exc:
                told.append(_unnamed(exc, what))
                if acked or "command" not in body:
                    await self._tell(str(body.get("response_url") or ""), told[-1])
                raise

        if self._well_formed(body):
            await self._handed(self._guarded(named()), ACK_WITHIN)
        acked = True
        if told and "command" in body:
            await ack(text=told[-1])
        else:
            await ack()

    async def _tell(self, url: str, text: str) -> None:
        """Say `text` to the person alone through a payload's response_url; a failure is logged, as there is
        no other way to reach them."""
        if not url.startswith(("https://", "http://")):
            return
        payload = {"response_type": "ephemeral", "replace_original": False, "text": escape(text)}
        try:
            async with aiohttp.ClientSession() as session, session.post(url, json=payload) as response:
                if not 200 <= response.status < 300:
                    log.warning("Slack: the response_url answered HTTP %s", response.status)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("Slack: the response_url could not be reached (%s)", _error(exc))

    async def _command(self, command: dict[str, Any]) -> bool:
        channel, user_id = str(command.get("channel_id", "")), str(command.get("user_id", ""))
        if command.get("response_url"):
            self._response_urls[channel] = (str(command["response_url"]), time.monotonic() + 1800, 0)
        user = await self._user_name(user_id)
        raw_text = str(command.get("text") or "")
        text, _ = plain_text(raw_text, self.bot_user_id, names=await self._mention_names(raw_text))
        message = Message(adapter=self.name, channel=channel, user=user, text=text, mentioned=True,
                          direct=channel.startswith("D") or command.get("channel_name") == "directmessage",
                          groups=await self._groups_of(user_id), raw={"command": command}, user_id=user_id,
                          channel_name=command.get("channel_name"), trigger=command.get("trigger_id"))
        return await self._deliver(message)

    async def _on_button(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any]) -> None:
        """Acknowledged once what the click answers is stored, or after ACK_WITHIN (`_on_command`)."""
        await self._answered(ack, body, self._button, "click")

    async def _button(self, body: dict[str, Any]) -> bool:
        """A click answers as if the person had typed the button's value in the same thread."""
        action = (body.get("actions") or [{}])[0]
        user_id = str((body.get("user") or {}).get("id", ""))
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id", ""))
        if not channel and (body.get("view") or {}).get("type") == "home":
            channel = user_id  # a click in the App Home tab: answered in the person's DM with the app
        original = body.get("message") or {}
        thread = original.get("thread_ts") or (body.get("container") or {}).get("thread_ts")
        if not thread and self.capabilities.threads:
            # A prompt at the top of a channel (an inquiry asked through a route) is its own thread's
            # root: its ts names it, so the click answers that question as a reply in its thread would.
            thread = original.get("ts") or None
        user = await self._user_name(user_id)
        message = Message(adapter=self.name, channel=channel, user=user, text=str(action.get("value", "")),
                          thread=thread, mentioned=True, direct=channel.startswith("D"),
                          groups=await self._groups_of(user_id), raw={"action": body}, user_id=user_id,
                          trigger=body.get("trigger_id"), clicked=True)
        message.click = click = ClickOutcome()
        handing = asyncio.ensure_future(self._deliver(message))
        # Marked once the bot said what became of the click (before it runs anything): never "chose Yes" over
        # a prompt that expired or was answered already (`taken` False: its reply says so). Someone else's
        # click leaves the buttons to the one asked.
        if await click.known(handing) is not False and _asked(action, user, user_id):
            await self._mark_chosen(channel, original, user, action,
                                    bool((body.get("container") or {}).get("is_ephemeral")))
        return await handing

    async def _mark_chosen(self, channel: str, original: dict[str, Any], user: str, action: dict[str, Any],
                           ephemeral: bool) -> None:
        """The question stays, the buttons go, with who chose what: no second click on an answered prompt.
        An ephemeral prompt cannot be updated by its ts; a failure is logged (the answer was taken)."""
        if not original.get("ts") or ephemeral:
            return
        choice = (action.get("text") or {}).get("text", "") or str(action.get("value", ""))
        try:
            await self.client.chat_update(channel=channel, ts=original["ts"], text=original.get("text", ""),
                                          blocks=clicked_summary(original.get("text", ""), user, choice))
        except Exception as exc:
            log.warning("Slack: could not update the answered prompt: %s", _error(exc))

    async def _on_shortcut(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any]) -> None:
        """Acknowledged once its command is stored, or after ACK_WITHIN (`_on_command`)."""
        await self._answered(ack, body, self._shortcut, "shortcut")

    async def _shortcut(self, body: dict[str, Any]) -> bool:
        """A message shortcut: the command its `callback_id` names (the app's manifest: `run-form`) on
        the message's text, in the message's thread, with the shortcut's trigger to open a form."""
        user = body.get("user") or {}
        channel = body.get("channel") or {}
        original = body.get("message") or {}
        if not isinstance(user.get("id"), str) or not isinstance(channel.get("id"), str):
            return True
        name = await self._user_name(user["id"])
        raw_text = str(original.get("text") or "")
        text, _ = plain_text(raw_text, self.bot_user_id, addressed=True, names=await self._mention_names(raw_text))
        thread = original.get("thread_ts") or original.get("ts")
        message = Message(adapter=self.name, channel=channel["id"], user=name, text=f"{body.get('callback_id')} {text}",
                          thread=thread, mentioned=True, direct=channel["id"].startswith("D"),
                          groups=await self._groups_of(user["id"]), raw={"shortcut": body}, user_id=user["id"],
                          channel_name=channel.get("name"), trigger=body.get("trigger_id"))
        return await self._deliver(message)

    async def _on_form(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any], view: dict[str, Any]) -> None:
        """A form modal submitted: the bot checks it before the ack, so its errors go back on the fields
        (`response_action: errors`, within Slack's 3 s) and the modal stays open to fix them. A modal
        closed unsent (`view_closed`) is a cancelled submission with no values, acknowledged plainly:
        the modal is gone, and errors have nowhere to show."""
        user = body.get("user") or {}
        cancelled = body.get("type") == "view_closed"
        if self.on_form is None or not self._well_formed(body) or not isinstance(user.get("id"), str):
            await ack()
            return
        blocks = [b.get("block_id") for b in view.get("blocks") or [] if b.get("type") == "input"]
        try:
            name = await self._user_name(user["id"])
        except UnknownPerson as exc:
            log.warning("Slack: %s", exc)
            errors = {"": "Slack could not say who you are just now; submit the form again in a moment."}
        else:
            errors = await self.on_form(FormSubmission(
                adapter=self.name, user=name, state=str(view.get("private_metadata") or ""),
                values={} if cancelled else form_values(view), groups=await self._groups_of(user["id"]),
                user_id=user["id"], cancelled=cancelled))
        if not errors or cancelled:
            await ack()
            return
        await ack(response_action="errors",
                  errors={(name if name in blocks else blocks[0] if blocks else name): text[:2000]
                          for name, text in errors.items()})

    async def _on_home(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """Acknowledged at once: publishing the tab (lookups, `views.publish`) stores nothing, and may take
        longer than Slack waits."""
        if self._well_formed(body):
            self._in_background(self._guarded(self._home(event)))

    def _in_background(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """`work` as a task held until it ends (`_handing`; `stop` waits for it a while)."""
        task = asyncio.ensure_future(work)
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)
        return task

    async def _home(self, event: dict[str, Any]) -> bool:
        """The App Home tab opened: publish the commands this person may run, as buttons that open
        their forms (the bot decides which, by the same check as a typed command, in their DM)."""
        user_id = event.get("user")
        if self.on_home is None or event.get("tab", "home") != "home" or not isinstance(user_id, str):
            return True
        person = Message(adapter=self.name, channel=str(event.get("channel") or user_id),
                         user=await self._user_name(user_id), text="", direct=True, mentioned=True,
                         groups=await self._groups_of(user_id), user_id=user_id)
        buttons = await self.on_home(person)
        view = home_view("Commands you may run", buttons, "There is nothing you may run here yet.")
        try:
            await self.client.views_publish(user_id=user_id, view=view)
        except SlackApiError as exc:
            log.warning("Slack: could not publish the App Home tab: %s", _error(exc))
        return True

    async def open_form(self, trigger: str, form: Form) -> None:
        """`views.open` with the form as a modal (Block Kit inputs, `private_metadata` the bot's state),
        `notify_on_close` so that closing it unsent comes back as a `view_closed` (`_on_form`): without it
        Slack says nothing, and the person is never told that nothing ran."""
        try:
            await self.client.views_open(trigger_id=trigger, view={**form_view(form), "notify_on_close": True})
        except SlackApiError as exc:
            raise DeliveryError(f"Slack refused to open the form: {_error(exc)}", permanent=True) from None

    async def _deliver(self, message: Message) -> bool:
        """Hand `message` on (built with the sender's user id, `Message.user_id`: `auth` may name a person
        by it, `slack:U0123ABCD`, since no one can change it, as they can their profile's names); whether
        what it carries was stored (the handler answers False when the database took nothing of it)."""
        if self._on_message is None:
            log.warning("Slack: a message arrived before the adapter started; not taken")
            return False
        return await self._on_message(message) is not False

    # -- identity --------------------------------------------------------------------------------
    async def _call(self, method: str, **kwargs: Any) -> Any:
        """A lookup with one retry after a short Retry-After (identity must not flap on a brief 429); a
        longer one is raised at once, as the ack of what the lookup is for cannot wait (`LOOKUP_RETRY_WITHIN`)."""
        for attempt in (1, 2):
            try:
                return await self.client.api_call(method, http_verb="GET", params=kwargs)
            except SlackApiError as exc:
                wait = _retry_after(exc)
                if wait is None or attempt == 2 or wait > LOOKUP_RETRY_WITHIN:
                    if wait is not None and wait > LOOKUP_RETRY_WITHIN:
                        log.info("Slack: %s rate-limited (Retry-After %gs); not waited for before the ack",
                                 method, wait)
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _user_name(self, user_id: str) -> str:
        """A person's name, cached for an hour; concurrent messages of one person share one
        `users.info` call (every message is passed on, chatter too, so a busy channel must not
        cost a call per message).

        A name is who the person is to permissions and approvals, so it comes from `users.info`
        alone, never from a payload's own `user_name`: were a click named by the payload and a typed
        message by the id when a lookup failed, one person would be two, and could approve their own
        request. When the lookup fails the name last looked up stands; a person never looked up
        cannot be named, and what they sent is dropped (`UnknownPerson`)."""
        cached = self._users.get(user_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        lookup = self._user_lookups.get(user_id)
        if lookup is None:
            lookup = self._user_lookups[user_id] = asyncio.ensure_future(self._look_up_user(user_id))
            lookup.add_done_callback(lambda _done: self._user_lookups.pop(user_id, None))
        name = await asyncio.shield(lookup)
        if name is not None:
            return name
        if cached:
            return cached[0]
        if user_id in self._no_such:
            raise NoSuchPerson(f"Slack says {user_id} names no one this app may see (users.info); what they sent "
                               "is dropped")
        raise UnknownPerson(f"Slack could not say who {user_id} is (users.info failed); what they sent is not "
                            "taken (Slack sends an event again; the sender of a slash command, click or shortcut is "
                            "told to try again)")

    async def _mention_names(self, text: str) -> dict[str, str]:
        """The names of the people `text` mentions (`<@U123>`), so a mention typed as a parameter reaches
        the alias as the `@name` the person typed, as hubot-slack and st2chatops give it. Looked up as
        senders are (`_user_name`: cached, shared, a foreign organisation's member by id); a failed
        lookup leaves the id and never drops the message. The bot's own id is not looked up: a leading
        mention of it addresses the bot and is removed."""
        ids = [user_id for user_id in mentioned_users(text) if user_id != self.bot_user_id]
        names = await asyncio.gather(*(self._mention_name(user_id) for user_id in ids))
        return {user_id: name for user_id, name in zip(ids, names, strict=True) if name}

    async def _mention_name(self, user_id: str) -> str | None:
        """A mentioned person's name if known or looked up within the budget, else None (`@U…` stays)."""
        now = time.monotonic()
        cached = self._users.get(user_id)
        if cached and cached[1] > now:
            return cached[0]
        if self._unknown_mentions.get(user_id, 0.0) > now or (
                user_id not in self._user_lookups and not self._mention_budget(now)):  # one in flight is shared
            return cached[0] if cached else None
        try:
            return await self._user_name(user_id)
        except UnknownPerson:
            self._unknown_mentions[user_id] = now + MENTION_RETRY
            self._unknown_mentions.move_to_end(user_id)
            while len(self._unknown_mentions) > SEEN_SIZE:
                self._unknown_mentions.popitem(last=False)
            return None

    def _mention_budget(self, now: float) -> bool:
        """Whether one more mention may be looked up this minute (`MENTION_LOOKUPS_PER_MINUTE`)."""
        while self._mention_lookups and self._mention_lookups[0] <= now - 60:
            self._mention_lookups.popleft()
        if len(self._mention_lookups) >= MENTION_LOOKUPS_PER_MINUTE:
            return False
        self._mention_lookups.append(now)
        return True

    async def _look_up_user(self, user_id: str) -> str | None:
        try:
            user = (await self._call("users.info", user=user_id))["user"]
        except Exception as exc:
            log.warning("Slack: users.info for %s failed (%s)", user_id, _error(exc))
            if isinstance(exc, SlackApiError) and exc.response.get("error") in _NO_SUCH_PERSON:
                self._no_such[user_id] = None
                while len(self._no_such) > SEEN_SIZE:
                    self._no_such.popitem(last=False)
            return None
        self._no_such.pop(user_id, None)
        # Who the person is to permissions and approvals: never `profile.display_name` nor `real_name`,
        # which anyone may set to `carol`; without a `name`, the id, which no one chooses.
        name = str(user.get("name") or user_id)
        if not self._of_this_organisation(user):
            # A Slack Connect member of another organisation: Slack names are unique within one
            # workspace only, so theirs may be a local admin's. The id is theirs alone and matches
            # no name a permission lists.
            name = user_id
        self._users[user_id] = (name, time.monotonic() + IDENTITY_TTL)
        return name

    def _of_this_organisation(self, user: dict[str, Any]) -> bool:
        """Whether `users.info`'s person belongs to the workspace the bot is installed in (or, on
        Enterprise Grid, to its organisation); unknown when auth.test named no team."""
        if self.team_id is None or user.get("team_id") in (None, self.team_id):
            return True
        enterprise = (user.get("enterprise_user") or {}).get("enterprise_id")
        return self.enterprise_id is not None and enterprise == self.enterprise_id

    async def _channel_name(self, channel_id: str) -> str | None:
        cached = self._channels.get(channel_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            info = (await self._call("conversations.info", channel=channel_id))["channel"]
        except Exception as exc:
            log.debug("Slack: conversations.info for %s failed: %s", channel_id, _error(exc))
            return None
        name = str(info.get("name") or channel_id)
        self._channels[channel_id] = (name, time.monotonic() + IDENTITY_TTL)
        self._channel_ids[f"#{name}"] = channel_id
        return name

    async def _groups_of(self, user_id: str) -> list[str]:
        """Slack user groups (by handle, e.g. `oncall`) the user is in: Squall groups for `auth`."""
        async with self._groups_lock:
            members, expires = self._groups
            if expires <= time.monotonic():
                loaded, again = await self._load_groups()
                if loaded is not None:
                    members = loaded
                self._groups = (members, time.monotonic() + again)
        return sorted(members.get(user_id, []))

    async def _load_groups(self) -> tuple[dict[str, list[str]] | None, float]:
        """The user groups' members and the seconds until they are asked again: `GROUPS_TTL`, or (None: the
        members known so far stay) Slack's `Retry-After` when it rate-limited the lookup. An empty list for
        `GROUPS_TTL` after a 429 refused the members of `@oncall` its group-only aliases for five minutes."""
        members: dict[str, list[str]] = {}
        try:
            groups = (await self._call("usergroups.list", include_users="true"))["usergroups"] or []
            for group in groups:
                handle = str(group.get("handle") or group.get("name") or group.get("id"))
                users = group.get("users")
                if users is None:
                    users = (await self._call("usergroups.users.list", usergroup=group["id"])).get("users") or []
                for user_id in users:
                    members.setdefault(str(user_id), []).append(handle)
        except Exception as exc:  # no usergroups:read scope, or a free workspace: no platform groups
            wait = _retry_after(exc) if isinstance(exc, SlackApiError) else None
            if wait is not None:
                log.info("Slack: user groups rate-limited; the ones known so far apply, asked again in %gs", wait)
                return None, max(wait, 1.0)
            log.warning("Slack: user groups unavailable (%s); only config auth.groups apply", _error(exc))
        return members, GROUPS_TTL

    async def received(self, message: Message) -> None:
        """The dispatcher took `message` as a command: mark it `:eyes:` if `status_reactions` is on. In the
        background: the command is stored after this returns, and its envelope is answered after that."""
        if self.settings.status_reactions and message.id:  # slash commands and clicks carry no message id
            self._in_background(self._react(message.channel, message.id, "eyes"))

    async def _react(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except Exception as exc:
            log.debug("Slack: reaction %s failed: %s", name, _error(exc))

    # -- Reply → Slack ---------------------------------------------------------------------------
    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        channel = self._channel_ids.get(reply.channel, reply.channel)
        reply = _fitted(reply)
        try:
            if reply.file is not None:
                return await self._upload(channel, reply)
            arguments = _with_asker(message_arguments(reply), reply.asker, reply.asker_id)
            if not (reply.text.strip() or arguments.get("blocks") or arguments.get("attachments")):
                log.debug("Slack: an empty reply to %s skipped (Slack refuses it: no_text)", reply.channel)
                return None
            if edit_of and not edit_of.startswith("file:"):
                edited_channel, _, ts = edit_of.partition(":")
                try:
                    await self._post(self.client.chat_update, reply, channel=edited_channel or channel, ts=ts,
                                     **arguments)
                    return edit_of
                except SlackApiError as exc:
                    if _transient(exc):
                        raise
                    # Too old, deleted, or not editable: the news must still reach the channel.
                    log.info("Slack: cannot edit %s (%s); posting the update as a new message", edit_of,
                             _error(exc))
            response = await self._post(self.client.chat_postMessage, reply, channel=channel,
                                        thread_ts=reply.thread, **_with_outbox_id(arguments, reply))
            return f"{response.get('channel') or channel}:{response.get('ts', '')}" if response is not None else None
        except SlackApiError as exc:
            wait = _retry_after(exc)
            if wait is not None:
                raise DeliveryError(f"Slack rate-limited the reply to {reply.channel}", retry_after=wait) from None
            if _error(exc) in _USE_RESPONSE_URL and await self._respond(channel, reply, _error(exc)):
                return None
            raise DeliveryError(f"Slack refused the reply to {reply.channel}: {_error(exc)}",
                                permanent=_error(exc) in _PERMANENT, maybe_taken=_maybe_posted(exc)) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"Slack unreachable: {type(exc).__name__}", maybe_taken=_maybe_posted(exc)) from None

    async def find_sent(self, replies: Sequence[Reply], since: datetime) -> dict[int, list[FoundPost]]:
        """Which of these replies (left pending by a crash, or sent without an answer) the bot already
        posted: outbox id → its messages ("channel:ts", or "file:F…" for an upload, as `send` answers;
        the `Part` it is of a reply sent in several, or None), read with `conversations.history` (or
        `.replies` in a thread) since `since`, by the outbox id a message carries (`_outbox_payload`:
        a post's metadata, `include_all_metadata`, or the first block of the message an upload shared;
        needs the history scopes)."""
        wanted: dict[tuple[str, str | None], set[int]] = {}
        for reply in replies:
            if reply.outbox_id is not None:
                channel = self._channel_ids.get(reply.channel, reply.channel)
                wanted.setdefault((channel, reply.thread), set()).add(reply.outbox_id)
        if wanted and self.bot_user_id is None:  # not connected yet: whose messages are ours
            self.bot_user_id = (await self.client.auth_test()).get("user_id")
        found: dict[int, list[FoundPost]] = {}
        oldest = f"{since.timestamp():.6f}"
        for (channel, thread), ids in wanted.items():
            async for message in self._history(channel, thread, oldest):
                payload = _outbox_payload(message) if message.get("user") == self.bot_user_id else None
                if payload is not None and payload["outbox_id"] in ids:
                    found.setdefault(payload["outbox_id"], []).append((_sent_id(channel, message),
                                                                      Part.from_json(payload)))
        return found

    async def _history(self, channel: str, thread: str | None, oldest: str) -> AsyncIterator[dict[str, Any]]:
        """The messages of `channel` (of `thread`'s thread) since `oldest`, with their metadata, page by page."""
        arguments: dict[str, Any] = {"channel": channel, "oldest": oldest, "include_all_metadata": "true",
                                     "limit": 200, **({"ts": thread} if thread else {})}
        cursor: str | None = None
        while True:
            page = await self._call("conversations.replies" if thread else "conversations.history",
                                    **arguments, **({"cursor": cursor} if cursor else {}))
            for message in page.get("messages") or []:
                if isinstance(message, dict):
                    yield message
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                return

    async def _post(self, call: Callable[..., Awaitable[Any]], reply: Reply, **arguments: Any) -> Any:
        try:
            return await call(**arguments)
        except SlackApiError as exc:
            if _error(exc) not in ("invalid_blocks", "invalid_attachments", "invalid_blocks_format"):
                raise
            # A hand-written extra.slack Slack rejects must not lose the reply: send the plain text.
            log.warning("Slack rejected the reply's blocks/attachments (%s); sending plain text", _error(exc))
            plain = {k: v for k, v in arguments.items() if k not in ("blocks", "attachments")}
            bare = Reply(adapter=reply.adapter, channel=reply.channel, text=reply.text, buttons=reply.buttons)
            return await call(**{**plain, **_with_asker(message_arguments(bare), reply.asker, reply.asker_id)})

    async def _upload(self, channel: str, reply: Reply) -> str | None:
        name, content = reply.file or ("output.txt", "")
        try:
            response = await self._share(channel, reply, name, content)
        except SlackApiError as exc:
            if _transient(exc) or _error(exc) in _USE_RESPONSE_URL:
                raise
            # No files:write scope (or uploads disabled): the head of the output beats no output at all.
            log.warning("Slack: uploading %s failed (%s); posting the start of it instead", name, _error(exc))
            text = inline_file(reply.text, (name, content), UPLOAD_FALLBACK,
                               f"uploading the file failed: {_error(exc)}")
            fallback = Reply(adapter=reply.adapter, channel=reply.channel, text=text, thread=reply.thread)
            response = await self._post(self.client.chat_postMessage, fallback, channel=channel,
                                        thread_ts=reply.thread, **_with_outbox_id(message_arguments(fallback), reply))
            return f"{response.get('channel') or channel}:{response.get('ts', '')}"
        files = response.get("files") or [response.get("file") or {}]
        return f"file:{(files[0] or {}).get('id', '')}"

    async def _share(self, channel: str, reply: Reply, name: str, content: str) -> Any:
        """Upload the file and share it in the channel (`files_upload_v2`: three calls, the last of which,
        `files.completeUploadExternal`, posts the message). A reply from the outbox says its text in
        blocks whose first carries the outbox id (`_tagged_blocks`), so `find_sent` finds the message
        after a crash or a lost answer; Slack ignores blocks beside an `initial_comment`, which says the
        text otherwise. Blocks Slack refuses are not worth losing the upload for: it goes again with the
        text as its comment (untagged, so at least once, as before)."""
        upload = {"channel": channel, "filename": name, "title": name, "content": content, "thread_ts": reply.thread}
        blocks = _tagged_blocks(reply)
        if blocks is None:
            return await self.client.files_upload_v2(**upload, initial_comment=reply.text)
        try:
            return await self.client.files_upload_v2(**upload, blocks=json.dumps(blocks))
        except SlackApiError as exc:
            if _error(exc) not in ("invalid_blocks", "invalid_blocks_format"):
                raise
            log.warning("Slack refused the blocks of an upload's message (%s); sharing it with its text as the "
                        "comment", _error(exc))
            return await self.client.files_upload_v2(**upload, initial_comment=reply.text)

    async def _respond(self, channel: str, reply: Reply, error: str) -> bool:
        """The bot is not in the channel (Slack's `error`), but a slash command there left a response_url
        (5 uses, 30 min). A file cannot go that way: the start of it does, inline (`inline_file`)."""
        url, expires, used = self._response_urls.get(channel, ("", 0.0, 0))
        if not url or expires < time.monotonic() or used >= 5:
            return False
        self._response_urls[channel] = (url, expires, used + 1)
        text = reply.text if reply.file is None else inline_file(
            reply.text, reply.file, MAX_TEXT, f"it could not be shared in this channel ({error}), where the bot is "
                                               "not a member: invite the bot there for whole outputs")
        payload = {"response_type": "in_channel", **message_arguments(Reply(**{**reply.__dict__, "text": text}))}
        async with aiohttp.ClientSession() as session, session.post(url, json=payload) as response:
            return 200 <= response.status < 300


def _fitted(reply: Reply) -> Reply:
    """`reply`, or, where its text is too long for a message once escaped (`&` is five characters to Slack,
    `<` four: `capabilities.max_length` counts them as one), its text as a file with its first line as the
    message, as `bot.chat.replies.fit` attaches one (which cannot count as Slack does): Slack would cut the
    text, and `message_arguments` would. A prompt keeps its text (its buttons must stay), cut with a note."""
    # An escape is at most five characters (`&amp;`): a text that short fits without escaping it here too.
    if (reply.file is not None or reply.buttons or 5 * len(reply.text) <= MAX_TEXT
            or len(escape(reply.text)) <= MAX_TEXT):
        return reply
    return attached(reply, SECTION_LIMIT - 40)


def _outbox_tag(reply: Reply) -> dict[str, Any]:
    """What a post of `reply` carries to be found (`find_sent`): its outbox id and `Part`."""
    return {"outbox_id": reply.outbox_id, **(reply.part.to_json() if reply.part else {})}


def _with_outbox_id(arguments: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """`chat.postMessage` arguments with the reply's outbox id (and `Part`) in the message's metadata,
    where `find_sent` reads it after a crash; unchanged for a reply from no outbox."""
    if reply.outbox_id is None:
        return arguments
    return {**arguments, "metadata": {"event_type": OUTBOX_EVENT, "event_payload": _outbox_tag(reply)}}


def _tagged_blocks(reply: Reply) -> list[dict[str, Any]] | None:
    """The text of an upload's message as mrkdwn sections, the first of which carries the outbox id
    and `Part` in its `block_id` (`OUTBOX_BLOCK`); None for a reply from no outbox, or without text,
    or too long for Slack's blocks (`initial_comment` says those)."""
    pieces = _escaped_pieces(reply.text)
    if reply.outbox_id is None or not reply.text.strip() or len(pieces) > MAX_BLOCKS:
        return None
    tag = _outbox_tag(reply)
    block_id = OUTBOX_BLOCK + ".".join(str(tag[key]) for key in ("outbox_id", "part", "parts", "end") if key in tag)
    return [{"type": "section", "text": {"type": "mrkdwn", "text": piece}, **({} if index else {"block_id": block_id})}
            for index, piece in enumerate(pieces)]


def _escaped_pieces(text: str) -> list[str]:
    """`text` escaped as message text is (`escape`), in pieces a section block takes (`SECTION_LIMIT`),
    never cutting an escape (`&amp;`) in two."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for char in text:
        shown = escape(char)
        if size + len(shown) > SECTION_LIMIT:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(shown)
        size += len(shown)
    return [*pieces, "".join(current)] if current else pieces


def _outbox_payload(message: dict[str, Any]) -> dict[str, Any] | None:
    """The outbox id (and `Part`) a message of the bot carries: in its metadata (a post) or in its first
    block's id (the message an upload shared, `_tagged_blocks`); None when it carries none."""
    metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
    payload = metadata.get("event_payload")
    if metadata.get("event_type") == OUTBOX_EVENT and isinstance(payload, dict):
        return payload if isinstance(payload.get("outbox_id"), int) else None
    blocks = message.get("blocks")
    first = blocks[0] if isinstance(blocks, list) and blocks and isinstance(blocks[0], dict) else {}
    block_id = str(first.get("block_id") or "")
    numbers = block_id.removeprefix(OUTBOX_BLOCK).split(".") if block_id.startswith(OUTBOX_BLOCK) else []
    if len(numbers) not in (1, 4) or not all(number.isdigit() for number in numbers):
        return None
    return dict(zip(("outbox_id", "part", "parts", "end"), map(int, numbers), strict=False))


def _sent_id(channel: str, message: dict[str, Any]) -> str:
    """The platform id `send` answers for `message`: `file:F…` for the one an upload shared, else `channel:ts`."""
    files = message.get("files")
    if isinstance(files, list) and files and isinstance(files[0], dict) and files[0].get("id"):
        return f"file:{files[0]['id']}"
    return f"{channel}:{message.get('ts', '')}"


def _asker_tag(name: str, user_id: str | None = None) -> str:
    """The `block_id` of a prompt's buttons that ask one person alone: by their user id where it is
    known (`ASKER_ID_BLOCK`: their name can pass to someone else while the prompt waits), else by
    `name`. A digest, so any name fits Slack's 255 characters."""
    if user_id:
        return ASKER_ID_BLOCK + hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]
    return ASKER_BLOCK + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]


def _with_asker(arguments: dict[str, Any], asker: str | None, asker_id: str | None = None) -> dict[str, Any]:
    """`arguments` with the buttons' block (`squall_buttons`) naming whom the prompt asks (by user id
    where the reply has it).

    The prompt itself carries it, so a click after a restart still knows it (a table in memory did
    not). Blocks are replaced, never changed in place: the others may be an alias's `extra.slack`."""
    blocks = arguments.get("blocks")
    if (asker or asker_id) and blocks:
        arguments["blocks"] = [{**block, "block_id": _asker_tag(asker or "", asker_id)}
                               if block.get("type") == "actions" and block.get("block_id") == "squall_buttons"
                               else block for block in blocks]
    return arguments


def _asked(action: dict[str, Any], user: str, user_id: str) -> bool:
    """Whether a click by `user` (Slack's `user_id`) answers its prompt and so removes the buttons: the
    prompt asks anyone, or asks that person, by user id where the prompt carries one (a namesake's
    click then leaves them, the renamed asker's removes them), by name on a prompt posted before it
    did. Only that: the dispatcher decides who may answer, never this tag."""
    block_id = str(action.get("block_id") or "")
    if block_id.startswith(ASKER_ID_BLOCK):
        return block_id == _asker_tag(user, user_id)
    return not block_id.startswith(ASKER_BLOCK) or block_id == _asker_tag(user)


def _error(exc: Exception) -> str:
    """The short Slack error code (never the request, which carries the token)."""
    if isinstance(exc, SlackApiError) and exc.response is not None:
        with contextlib.suppress(Exception):
            return str(exc.response.get("error") or exc.response.status_code)
    return type(exc).__name__


def _transient(exc: SlackApiError) -> bool:
    """A refusal the outbox should retry (rate limits, Slack's own errors, any HTTP 5xx such as an HTML
    503 from its edge): never a reason to post an edit anew or cut an upload short."""
    status = getattr(exc.response, "status_code", None) if exc.response is not None else None
    return (_retry_after(exc) is not None or _error(exc) in _TRANSIENT
            or (isinstance(status, int) and status >= 500))


def _maybe_posted(exc: Exception) -> bool:
    """Whether Slack may have posted the message although the call failed: the connection dropped
    after the request went out, no answer came in time, or Slack had trouble of its own (a 5xx, an
    HTML 503 from its edge, `_MAYBE_DONE`). Not a refusal with a reason or a 429, nor a connection
    never made (`ClientConnectorError`): those posted nothing."""
    if isinstance(exc, SlackApiError):
        status = getattr(exc.response, "status_code", None) if exc.response is not None else None
        return _retry_after(exc) is None and (_error(exc) in _MAYBE_DONE or (isinstance(status, int) and status >= 500))
    return not isinstance(exc, aiohttp.ClientConnectorError)


class _RetryAllButPosts(AsyncConnectionErrorRetryHandler):
    """slack_sdk's retry after a dropped connection (once), for every call but those that post a
    message (`_POSTS`): Slack may have stored the message before the connection dropped, and a blind
    repeat posts it twice. Those go back to the outbox as `DeliveryError.maybe_taken`."""

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        method = request.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if method in _POSTS:
            return False
        return await super()._can_retry_async(state=state, request=request, response=response, error=error)


def _retry_after(exc: SlackApiError) -> float | None:
    response = exc.response
    if response is None or response.status_code != 429:
        return None
    headers = {str(k).lower(): v for k, v in (response.headers or {}).items()}
    value = headers.get("retry-after")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(float(value), 0.0) if value is not None else 1.0
    except ValueError:
        return 1.0


def create(section: dict[str, Any], config: Any) -> SlackAdapter:
    """`adapters.slack` → a Slack adapter; a missing token is a `AdapterConfigError` naming key and variable."""
    settings = SlackSettings.from_section(section)
    api_on = True
    with contextlib.suppress(Exception):
        api_on = bool(config.section("api").get("enabled", True))
    if settings.mode == "http" and not api_on:
        raise AdapterConfigError("adapters.slack.mode 'http' receives Slack's requests on Squall's API server, but "
                                 "api.enabled is false; enable the API or use mode 'socket'")
    return SlackAdapter(settings)


__all__ = ["SlackAdapter", "SlackSettings", "create"]
