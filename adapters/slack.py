"""Slack through slack-bolt: Socket Mode (default, no public URL) or HTTP mode (`POST /slack/events`).

Thin by design: Slack events, slash commands and button clicks become `Message`s; `Reply`s become
`chat.postMessage`, `chat.update` or `files_upload_v2`. What the peers get wrong is handled here
(../shared/reference/peers.md §3): Slack's retries of an event run it once (by `event_id`, and an
`app_mention` and its `message` twin by channel and timestamp); a 429 becomes a `DeliveryError`
carrying `Retry-After`, so the outbox waits and keeps the channel's order; a watchdog reconnects a
socket that went silent; a failing handler is logged and the adapter goes on.

Config (`adapters.slack`): `mode` (`socket`|`http`), `bot_token`, `app_token`, `signing_secret`
(tokens default to `SLACK_BOT_TOKEN`, `SLACK_APP_TOKEN`, `SLACK_SIGNING_SECRET`), `base_url`,
`slash_command`, `thread_replies`, `file_threshold`, `watchdog_seconds`, `status_reactions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import Capabilities, DeliveryError, Message, MessageHandler, Reply
from adapters.slack_format import ACTION_PREFIX, MAX_TEXT, clicked_summary, message_arguments, plain_text
from bot.config import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://slack.com/api/"
#: Message subtypes a person produces; the rest (bot_message, message_changed, ...) are not commands.
_PERSON_SUBTYPES = {None, "thread_broadcast", "file_share"}
_TOKENS = {"bot_token": "SLACK_BOT_TOKEN", "app_token": "SLACK_APP_TOKEN", "signing_secret": "SLACK_SIGNING_SECRET"}
_KEYS = {"enabled", "mode", "base_url", "slash_command", "thread_replies", "file_threshold", "watchdog_seconds",
         "status_reactions", *_TOKENS}
#: Errors after which a reply can still reach the channel through a slash command's response_url.
_USE_RESPONSE_URL = {"not_in_channel", "channel_not_found", "is_archived"}
#: Errors worth the outbox's retry; any other refusal of an edit makes it a new message instead.
_TRANSIENT = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout",
              "team_added_to_org"}
IDENTITY_TTL = 3600.0
GROUPS_TTL = 300.0
SEEN_SIZE = 5000
#: Characters of a file's content posted inline when the upload itself is refused.
UPLOAD_FALLBACK = 3500


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
            raise ConfigError(f"unknown key 'adapters.slack.{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
        mode = str(section.get("mode") or "socket").lower()
        if mode not in ("socket", "http"):
            raise ConfigError(f"adapters.slack.mode must be 'socket' or 'http', not {section.get('mode')!r}")
        tokens = {key: str(section.get(key) or env.get(var) or "") for key, var in _TOKENS.items()}
        needed = ["bot_token", "app_token" if mode == "socket" else "signing_secret"]
        for key in needed:
            if not tokens[key]:
                raise ConfigError(f"adapters.slack.{key} is not set and neither is the environment variable "
                                  f"{_TOKENS[key]}; the Slack adapter in {mode} mode needs it")
        # Swapped tokens are the classic set-up mistake; other shapes (rotated `xoxe.xoxb-`) are Slack's to judge.
        if tokens["bot_token"].startswith("xapp-"):
            raise ConfigError("adapters.slack.bot_token (or SLACK_BOT_TOKEN) holds an app-level token (xapp-); "
                              "it needs the Bot User OAuth Token (xoxb-)")
        if mode == "socket" and tokens["app_token"].startswith(("xoxb-", "xoxp-")):
            raise ConfigError("adapters.slack.app_token (or SLACK_APP_TOKEN) holds a bot token (xox…); it needs an "
                              "app-level token (xapp-, Basic Information > App-Level Tokens, scope connections:write)")
        base_url = str(section.get("base_url") or DEFAULT_BASE_URL)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"adapters.slack.base_url must be an http(s) URL, not {base_url!r}")
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


def _number(section: dict[str, Any], key: str, default: Any, kind: type, minimum: float) -> Any:
    value = section.get(key, default)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"adapters.slack.{key} must be a number, not {value!r}") from None
    if isinstance(value, bool) or number < minimum:
        raise ConfigError(f"adapters.slack.{key} must be a number >= {minimum}, not {value!r}")
    return number


class _Seen:
    """A bounded set: remembers the last `size` keys, so retried deliveries are recognised."""

    def __init__(self, size: int = SEEN_SIZE) -> None:
        self.size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """True the first time `key` is seen."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


class _Unreachable(Exception):
    """Slack could not be reached (network, DNS, timeout): worth retrying, unlike a refused token."""


class SlackAdapter:
    name = "slack"

    def __init__(self, settings: SlackSettings, prefix: str = "!") -> None:
        self.settings = settings
        self.prefix = prefix
        self.capabilities = Capabilities(threads=settings.thread_replies, edits=True, rich=True, files=True,
                                         buttons=True, max_length=min(settings.file_threshold, MAX_TEXT))
        self.client = AsyncWebClient(token=settings.bot_token, base_url=settings.base_url, timeout=30)
        self.app = AsyncApp(client=self.client, signing_secret=settings.signing_secret or "unused-in-socket-mode",
                            request_verification_enabled=settings.mode == "http", name="squall",
                            logger=logging.getLogger("adapters.slack.bolt"))
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.reconnects = 0  # watchdog reconnects, for operators and tests
        self._on_message: MessageHandler | None = None
        self._seen = _Seen()
        self._users: dict[str, tuple[str, float]] = {}
        self._channels: dict[str, tuple[str, float]] = {}
        self._channel_ids: dict[str, str] = {}
        self._groups: tuple[dict[str, list[str]], float] = ({}, 0.0)
        self._groups_lock = asyncio.Lock()
        self._response_urls: dict[str, tuple[str, float, int]] = {}
        self._askers: OrderedDict[str, str] = OrderedDict()
        self._socket: Any = None
        self._connected = asyncio.Event()
        self._last_frame = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._register()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, on_message: MessageHandler) -> None:
        """Check the tokens, then (Socket Mode) connect; returns once Slack said hello.

        A refused token is a `ConfigError` (nothing will ever work); Slack being unreachable is not:
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
            raise ConfigError(f"Slack refused adapters.slack.bot_token (auth.test: {_error(exc)})") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _Unreachable(f"the Web API at {self.settings.base_url} cannot be reached ({_error(exc)})") from None
        self.bot_user_id, self.bot_id = auth.get("user_id"), auth.get("bot_id")
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
            except ConfigError as exc:
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
            raise ConfigError(f"Slack refused adapters.slack.app_token (apps.connections.open: {_error(exc)})") \
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
        """HTTP mode: Slack's Events API, slash commands and interactivity all POST to /slack/events.

        bolt checks the v0 signature and the timestamp's age (401 otherwise) before anything runs."""
        if self.settings.mode != "http":
            return
        from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler

        handler = AsyncSlackRequestHandler(self.app)
        app.add_route("/slack/events", handler.handle, methods=["POST"], include_in_schema=False)

    # -- Slack → Message -------------------------------------------------------------------------
    def _register(self) -> None:
        app = self.app
        app.event("app_mention")(self._on_app_mention)
        app.event("message")(self._on_message_event)
        app.command(self.settings.slash_command)(self._on_command)
        app.action(re.compile(f"^{ACTION_PREFIX}"))(self._on_button)
        # Anything else subscribed is acknowledged, never 404 (which makes Slack retry it).
        app.event(re.compile(".*"))(self._ignore)
        app.error(self._on_error)

    async def _ignore(self, body: dict[str, Any]) -> None:
        return None

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("Slack: a handler failed on a %s payload: %s: %s", (body or {}).get("type", "?"),
                  type(error).__name__, error)

    async def _on_app_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._guarded(self._event(body, event, mention=True))

    async def _on_message_event(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._guarded(self._event(body, event, mention=False))

    async def _guarded(self, work: Awaitable[None]) -> None:
        """One bad payload (or a dispatcher bug) is logged; the adapter keeps serving."""
        try:
            await work
        except Exception:
            log.exception("Slack: handling a payload failed")

    async def _event(self, body: dict[str, Any], event: dict[str, Any], mention: bool) -> None:
        if event.get("subtype") not in _PERSON_SUBTYPES or event.get("bot_id") or not event.get("user"):
            return
        if self.bot_user_id is None:  # auth.test said nothing of it: the envelope names the bot too
            self.bot_user_id = next((str(a["user_id"]) for a in body.get("authorizations") or []
                                     if a.get("is_bot") and a.get("user_id")), None)
        if event.get("user") == self.bot_user_id:
            return
        if body.get("event_id") and not self._seen.add(f"event:{body['event_id']}"):
            log.info("Slack: event %s delivered again (retry); ignored", body["event_id"])
            return
        channel, ts = str(event.get("channel", "")), str(event.get("ts", ""))
        text, mentioned = plain_text(str(event.get("text") or ""), self.bot_user_id, addressed=mention)
        direct = event.get("channel_type") == "im" or channel.startswith("D")
        if not (mention or mentioned or direct or (self.prefix and text.startswith(self.prefix))):
            return  # chatter: not worth a users.info call
        if not self._seen.add(f"message:{channel}:{ts}"):
            return  # the app_mention and the message event of one message
        if self.settings.status_reactions:
            await self._react(channel, ts, "eyes")
        user = await self._user_name(event["user"])
        message = Message(adapter=self.name, channel=channel, user=user, text=text, thread=event.get("thread_ts"),
                          mentioned=mention or mentioned, direct=direct, groups=await self._groups_of(event["user"]),
                          id=ts, raw={"event": event}, channel_name=await self._channel_name(channel))
        await self._deliver(message, event["user"])

    async def _on_command(self, ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
        await ack()  # first: Slack shows "operation_timeout" after 3 s
        await self._guarded(self._command(command))

    async def _command(self, command: dict[str, Any]) -> None:
        channel, user_id = str(command.get("channel_id", "")), str(command.get("user_id", ""))
        if command.get("response_url"):
            self._response_urls[channel] = (str(command["response_url"]), time.monotonic() + 1800, 0)
        text, _ = plain_text(str(command.get("text") or ""), self.bot_user_id)
        user = await self._user_name(user_id, fallback=command.get("user_name"))
        message = Message(adapter=self.name, channel=channel, user=user, text=text, mentioned=True,
                          direct=channel.startswith("D") or command.get("channel_name") == "directmessage",
                          groups=await self._groups_of(user_id), raw={"command": command},
                          channel_name=command.get("channel_name"))
        await self._deliver(message, user_id)

    async def _on_button(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any]) -> None:
        await ack()
        await self._guarded(self._button(body))

    async def _button(self, body: dict[str, Any]) -> None:
        """A click answers as if the person had typed the button's value in the same thread."""
        action = (body.get("actions") or [{}])[0]
        user_id = str((body.get("user") or {}).get("id", ""))
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id", ""))
        original = body.get("message") or {}
        thread = original.get("thread_ts") or (body.get("container") or {}).get("thread_ts")
        user = await self._user_name(user_id, fallback=(body.get("user") or {}).get("username"))
        asker = self._askers.get(f"{channel}:{original.get('ts')}")  # whom the prompt asks, by name
        answered = asker in (None, user)  # someone else's click leaves the buttons to the one asked
        if answered and original.get("ts") and not (body.get("container") or {}).get("is_ephemeral"):
            try:  # the question stays, the buttons go: no second click on an answered prompt
                await self.client.chat_update(channel=channel, ts=original["ts"], text=original.get("text", ""),
                                              blocks=clicked_summary(original.get("text", ""), user,
                                                                     (action.get("text") or {}).get("text", "")
                                                                     or str(action.get("value", ""))))
            except Exception as exc:
                log.warning("Slack: could not update the answered prompt: %s", _error(exc))
        message = Message(adapter=self.name, channel=channel, user=user, text=str(action.get("value", "")),
                          thread=thread, mentioned=True, direct=channel.startswith("D"),
                          groups=await self._groups_of(user_id), raw={"action": body})
        await self._deliver(message, user_id)

    async def _deliver(self, message: Message, user_id: str) -> None:
        if self._on_message is None:
            log.warning("Slack: a message arrived before the adapter started; dropped")
            return
        await self._on_message(message)

    # -- identity --------------------------------------------------------------------------------
    async def _call(self, method: str, **kwargs: Any) -> Any:
        """A lookup with one retry after a short Retry-After; identity must not flap on a 429."""
        for attempt in (1, 2):
            try:
                return await self.client.api_call(method, http_verb="GET", params=kwargs)
            except SlackApiError as exc:
                wait = _retry_after(exc)
                if wait is None or attempt == 2 or wait > 10:
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _user_name(self, user_id: str, fallback: Any = None) -> str:
        cached = self._users.get(user_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            user = (await self._call("users.info", user=user_id))["user"]
            name = str(user.get("name") or (user.get("profile") or {}).get("display_name") or user_id)
        except Exception as exc:
            log.warning("Slack: users.info for %s failed (%s); using %s", user_id, _error(exc), fallback or user_id)
            return str(fallback or user_id)
        self._users[user_id] = (name, time.monotonic() + IDENTITY_TTL)
        return name

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
                members = await self._load_groups()
                self._groups = (members, time.monotonic() + GROUPS_TTL)
        return sorted(members.get(user_id, []))

    async def _load_groups(self) -> dict[str, list[str]]:
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
            log.warning("Slack: user groups unavailable (%s); only config auth.groups apply", _error(exc))
        return members

    async def _react(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except Exception as exc:
            log.debug("Slack: reaction %s failed: %s", name, _error(exc))

    # -- Reply → Slack ---------------------------------------------------------------------------
    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        channel = self._channel_ids.get(reply.channel, reply.channel)
        try:
            if reply.file is not None:
                return await self._upload(channel, reply)
            arguments = message_arguments(reply)
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
                    if _retry_after(exc) is not None or _error(exc) in _TRANSIENT:
                        raise
                    # Too old, deleted, or not editable: the news must still reach the channel.
                    log.info("Slack: cannot edit %s (%s); posting the update as a new message", edit_of,
                             _error(exc))
            response = await self._post(self.client.chat_postMessage, reply, channel=channel,
                                        thread_ts=reply.thread, **arguments)
            if reply.buttons and reply.asker and response is not None:
                _remember(self._askers, f"{response.get('channel') or channel}:{response.get('ts')}", reply.asker)
            return f"{response.get('channel') or channel}:{response.get('ts', '')}" if response is not None else None
        except SlackApiError as exc:
            wait = _retry_after(exc)
            if wait is not None:
                raise DeliveryError(f"Slack rate-limited the reply to {reply.channel}", retry_after=wait) from None
            if _error(exc) in _USE_RESPONSE_URL and await self._respond(channel, reply):
                return None
            raise DeliveryError(f"Slack refused the reply to {reply.channel}: {_error(exc)}",
                                permanent=_error(exc) in _PERMANENT) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"Slack unreachable: {type(exc).__name__}") from None

    async def _post(self, call: Callable[..., Awaitable[Any]], reply: Reply, **arguments: Any) -> Any:
        try:
            return await call(**arguments)
        except SlackApiError as exc:
            if _error(exc) not in ("invalid_blocks", "invalid_attachments", "invalid_blocks_format"):
                raise
            # A hand-written extra.slack Slack rejects must not lose the reply: send the plain text.
            log.warning("Slack rejected the reply's blocks/attachments (%s); sending plain text", _error(exc))
            plain = {k: v for k, v in arguments.items() if k not in ("blocks", "attachments")}
            return await call(**{**plain, **message_arguments(Reply(adapter=reply.adapter, channel=reply.channel,
                                                                     text=reply.text, buttons=reply.buttons))})

    async def _upload(self, channel: str, reply: Reply) -> str | None:
        name, content = reply.file or ("output.txt", "")
        try:
            response = await self.client.files_upload_v2(channel=channel, filename=name, title=name, content=content,
                                                         initial_comment=reply.text, thread_ts=reply.thread)
        except SlackApiError as exc:
            if _retry_after(exc) is not None or _error(exc) in _USE_RESPONSE_URL:
                raise
            # No files:write scope (or uploads disabled): the head of the output beats no output at all.
            log.warning("Slack: uploading %s failed (%s); posting the start of it instead", name, _error(exc))
            head = content[: UPLOAD_FALLBACK]
            note = f"\n(output truncated: {len(content):,} characters; uploading the file failed: {_error(exc)})"
            text = f"{reply.text}\n```\n{head}\n```" + (note if len(content) > len(head) else "")
            fallback = Reply(adapter=reply.adapter, channel=reply.channel, text=text, thread=reply.thread)
            response = await self._post(self.client.chat_postMessage, fallback, channel=channel,
                                        thread_ts=reply.thread, **message_arguments(fallback))
            return f"{response.get('channel') or channel}:{response.get('ts', '')}"
        files = response.get("files") or [response.get("file") or {}]
        return f"file:{(files[0] or {}).get('id', '')}"

    async def _respond(self, channel: str, reply: Reply) -> bool:
        """The bot is not in the channel, but a slash command there left a response_url (5 uses, 30 min)."""
        url, expires, used = self._response_urls.get(channel, ("", 0.0, 0))
        if not url or expires < time.monotonic() or used >= 5:
            return False
        self._response_urls[channel] = (url, expires, used + 1)
        text = reply.text if reply.file is None else f"{reply.text}\n```\n{reply.file[1][:MAX_TEXT - 200]}\n```"
        payload = {"response_type": "in_channel", **message_arguments(Reply(**{**reply.__dict__, "text": text}))}
        async with aiohttp.ClientSession() as session, session.post(url, json=payload) as response:
            return 200 <= response.status < 300


def _remember(table: OrderedDict[str, str], key: str, value: str, size: int = SEEN_SIZE) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > size:
        table.popitem(last=False)


def _error(exc: Exception) -> str:
    """The short Slack error code (never the request, which carries the token)."""
    if isinstance(exc, SlackApiError) and exc.response is not None:
        with contextlib.suppress(Exception):
            return str(exc.response.get("error") or exc.response.status_code)
    return type(exc).__name__


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
    """`adapters.slack` → a Slack adapter; a missing token is a `ConfigError` naming key and variable."""
    settings = SlackSettings.from_section(section)
    prefix = "!"
    with contextlib.suppress(Exception):
        prefix = str(config.section("chat").get("prefix", "!"))
    api_on = True
    with contextlib.suppress(Exception):
        api_on = bool(config.section("api").get("enabled", True))
    if settings.mode == "http" and not api_on:
        raise ConfigError("adapters.slack.mode 'http' receives Slack's requests on Squall's API server, but "
                          "api.enabled is false; enable the API or use mode 'socket'")
    return SlackAdapter(settings, prefix=prefix)


__all__ = ["SlackAdapter", "SlackSettings", "create"]
