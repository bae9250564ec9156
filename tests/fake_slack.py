"""A local fake Slack: the Web API methods Squall's bot calls and the Socket Mode websocket.

No Slack server can run here, so this follows Slack's documented payloads and the behaviour
verified against slack-bolt 1.30 / slack_sdk 3.48 (../shared/reference/chat-protocols.md §1):
- `/api/{method}`: parameters from the query string, a form or a JSON body (slack_sdk uses all
  three); the bearer token must be the configured one (`invalid_auth`, HTTP 200, otherwise);
  errors are `{"ok": false, "error": ...}` with HTTP 200, a rate limit is HTTP 429 + `Retry-After`.
- `/link/`: the Socket Mode socket. `hello` at once; envelopes carry an `envelope_id`; acks
  (`{"envelope_id", "payload"?}`) are recorded. With `retry_after` set, an `events_api` envelope nobody
  acknowledged in that time is sent again, as Slack does (at most `RETRIES` times, each a new envelope
  with `retry_attempt` counting and `retry_reason: "timeout"`, to whichever socket is connected then).
- `/upload/{file_id}` (files_upload_v2's step 2) and `/response/{n}` (slash commands' response_url).
- `views.open` opens a modal (recorded in `views`, answered with the view and its id, `expired_trigger_id`
  for a trigger used before); `submit_view` sends its `view_submission` as Slack does (an
  `interactive` envelope whose ack may carry `response_action`) and returns that ack's payload; `close_view`
  closes one unsent, sending its `view_closed` only when the view was opened with `notify_on_close: true`.
- `views.publish` records each user's App Home tab (`homes`); `chat.postMessage` to a user id
  posts in that user's DM with the app, as Slack does.
It runs on the test's own event loop, on a free 127.0.0.1 port, and records every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret"
TEAM = "T0000001"
BOT_USER = "UBOT0001"
BOT_ID = "BBOT0001"
#: How often Slack sends an unacknowledged event again (Events API and Socket Mode: three retries).
RETRIES = 3


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int = 200


@dataclass
class FakeSlack:
    bot_token: str = BOT_TOKEN
    app_token: str = APP_TOKEN
    users: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "UALICE01": {"name": "alice", "real_name": "Alice A."},
        "UBOB0001": {"name": "bob", "real_name": "Bob B."},
        "UOLIVIA1": {"name": "olivia", "real_name": "Olivia O."},
    })
    channels: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "COPS0001": {"name": "ops"}, "CRANDOM1": {"name": "random"}, "DALICE01": {"name": "", "is_im": True},
    })
    usergroups: list[dict[str, Any]] = field(default_factory=lambda: [
        {"id": "S0000001", "handle": "operators", "name": "Operators", "users": ["UOLIVIA1"]},
        {"id": "S0000002", "handle": "oncall", "name": "On call"},  # members only via usergroups.users.list
    ])
    group_members: dict[str, list[str]] = field(default_factory=lambda: {"S0000002": ["UBOB0001"]})
    calls: list[Call] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)   # chat.postMessage, as stored
    uploads: dict[str, bytes] = field(default_factory=dict)
    #: The messages files.completeUploadExternal made where it shared files (a `channel_id`), as stored.
    shares: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)  # what was POSTed to response_urls
    connections: int = 0
    views: list[dict[str, Any]] = field(default_factory=list)  # modals opened by views.open, as Slack holds them
    homes: dict[str, dict[str, Any]] = field(default_factory=dict)  # App Home tabs by user, from views.publish
    #: Methods that answer `{"ok": false, "error": <value>}` (a missing scope, say).
    errors: dict[str, str] = field(default_factory=dict)
    #: Channels the bot is not a member of: chat.postMessage answers `not_in_channel`.
    not_member: set[str] = field(default_factory=set)
    #: Seconds after which an unacknowledged `events_api` envelope is sent again (Slack: 3); None: never,
    #: for tests that send their retries themselves.
    retry_after: float | None = None
    #: The envelope ids of the events sent again (`retry_after`).
    retried: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ratelimits: dict[str, list[float]] = {}
        self._outages: dict[str, int] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._zombies: set[web.WebSocketResponse] = set()
        self._silent = False
        self._ts = itertools.count(1)
        self._files = itertools.count(1)
        self._file_names: dict[str, str] = {}  # file id → the filename files.getUploadURLExternal was given
        self._changed = asyncio.Condition()
        self._retrying: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- life --------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/"

    async def start(self, port: int = 0) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link", self._link)
        app.router.add_get("/link/", self._link)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/response/{n}", self._response)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        for task in self._retrying:
            task.cancel()
        await asyncio.gather(*self._retrying, return_exceptions=True)
        for ws in [*self._sockets, *self._zombies]:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test controls -----------------------------------------------------------------------------
    def ratelimit(self, method: str, times: int = 1, retry_after: float = 1) -> None:
        """The next `times` calls of `method` get HTTP 429 with `Retry-After: retry_after`."""
        self._ratelimits[method] = [retry_after] * times

    def outage(self, prefix: str, times: int = 1) -> None:
        """The next `times` calls of methods starting `prefix` get an HTML 503, as Slack's edge answers
        in an outage (no JSON, no error code)."""
        self._outages[prefix] = times

    def go_silent(self, silent: bool = True) -> None:
        """Keep sockets open but deliver nothing (no envelopes, no hello): a zombie connection."""
        self._silent = silent

    async def drop_sockets(self) -> None:
        """Close every Socket Mode connection, as a Slack backend restart does."""
        for ws in [*self._sockets, *self._zombies]:
            await ws.close()

    async def push(self, type_: str, payload: dict[str, Any], **extra: Any) -> str:
        """Send an envelope to a connected socket (waits for one); returns its envelope_id."""
        await self.wait_for(lambda: any(not ws.closed for ws in self._sockets), what="a Socket Mode connection")
        envelope = {"envelope_id": str(uuid.uuid4()), "type": type_, "payload": payload,
                    "accepts_response_payload": type_ != "events_api", **extra}
        ws = next(ws for ws in self._sockets if not ws.closed)
        await ws.send_str(json.dumps(envelope))
        if type_ == "events_api" and self.retry_after is not None and "retry_attempt" not in extra:
            task = asyncio.ensure_future(self._send_again(payload, envelope["envelope_id"]))
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)
        return envelope["envelope_id"]

    def acked(self, envelope_id: str) -> bool:
        return any(a["envelope_id"] == envelope_id for a in self.acks)

    async def _send_again(self, payload: dict[str, Any], envelope_id: str) -> None:
        """Slack's retries of an event: sent again while no envelope of it was acknowledged."""
        sent = [envelope_id]
        for attempt in range(1, RETRIES + 1):
            assert self.retry_after is not None
            await asyncio.sleep(self.retry_after)
            if any(self.acked(envelope) for envelope in sent):
                return
            sent.append(await self.push("events_api", payload, retry_attempt=attempt, retry_reason="timeout"))
            self.retried.append(sent[-1])

    async def wait_for(self, predicate: Any, timeout: float = 10, what: str = "the condition") -> Any:
        """Wait until `predicate()` is truthy (re-checked on every recorded call); returns its value."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not (value := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake Slack: timed out waiting for {what}; calls: {self.methods()}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
            return value

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.status == 200]

    def posted(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if channel in (None, m["channel"])]

    @staticmethod
    def shown(message: dict[str, Any]) -> str:
        """The text a stored message shows: its `text`, else that of its section blocks (the message an
        upload shared may say its text in blocks), `&`, `<` and `>` unescaped."""
        blocks = message.get("blocks")
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks or []
        text = message.get("text") or "".join(((b.get("text") or {}).get("text") or "") for b in blocks
                                              if b.get("type") == "section")
        return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    # -- payload builders (what Slack sends) -------------------------------------------------------
    def event(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {"token": "legacy", "team_id": TEAM, "api_app_id": "A0000001", "type": "event_callback",
                "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}", "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}], "event": event}

    def message_event(self, text: str, *, user: str = "UALICE01", channel: str = "COPS0001",
                      kind: str = "message", thread_ts: str | None = None, channel_type: str | None = None,
                      **extra: Any) -> dict[str, Any]:
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        event = {"type": kind, "user": user, "text": text, "ts": ts, "channel": channel, "event_ts": ts, **extra}
        if kind == "message":
            event["channel_type"] = channel_type or ("im" if channel.startswith("D") else "channel")
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def slash(self, text: str, *, command: str = "/squall", user: str = "UALICE01",
              channel: str = "COPS0001") -> dict[str, Any]:
        n = next(self._ts)
        return {"token": "legacy", "team_id": TEAM, "team_domain": "fake", "channel_id": channel,
                "channel_name": self.channels.get(channel, {}).get("name") or "directmessage", "user_id": user,
                "user_name": self.users.get(user, {}).get("name", user), "command": command, "text": text,
                "api_app_id": "A0000001", "is_enterprise_install": "false",
                "response_url": f"{self.url}/response/{n}", "trigger_id": f"trig.{n}"}

    def click(self, message: dict[str, Any], value: str, *, user: str = "UALICE01") -> dict[str, Any]:
        """The block_actions payload of a click on the button with `value` in a posted message (`yes`
        finds a confirmation's `yes:<token>` too; the payload carries the button's own value)."""
        blocks = json.loads(message["blocks"]) if isinstance(message.get("blocks"), str) else message.get("blocks")
        # Slack's block_actions names the clicked button's own block (`actions[].block_id`).
        buttons = [(e, b.get("block_id") or "generated") for b in blocks or [] if b.get("type") == "actions"
                   for e in b["elements"]]
        button, block_id = next((p for p in buttons if p[0].get("value") == value), None) or next(
            p for p in buttons if str(p[0].get("value")).partition(":")[0] == value)
        value = button["value"]
        container = {"type": "message", "message_ts": message["ts"], "channel_id": message["channel"],
                     "is_ephemeral": False}
        stored = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "ts": message["ts"],
                  "text": message.get("text", ""), "blocks": blocks}
        if message.get("thread_ts"):
            container["thread_ts"] = stored["thread_ts"] = message["thread_ts"]
        return {"type": "block_actions", "team": {"id": TEAM, "domain": "fake"},
                "user": {"id": user, "username": self.users.get(user, {}).get("name", user), "team_id": TEAM},
                "api_app_id": "A0000001", "token": "legacy", "container": container,
                "trigger_id": f"trig.click.{next(self._ts)}",
                "channel": {"id": message["channel"], "name": self.channels.get(message["channel"], {}).get("name")},
                "message": stored, "response_url": f"{self.url}/response/click",
                "actions": [{"action_id": button["action_id"], "block_id": block_id, "value": value,
                             "type": "button", "text": button["text"], "action_ts": str(time.time())}]}

    def home_opened(self, user: str = "UALICE01") -> dict[str, Any]:
        """The `app_home_opened` event of `user` opening the app's Home tab."""
        return {"type": "app_home_opened", "user": user, "channel": f"D{user[1:]}", "tab": "home",
                "event_ts": f"{int(time.time())}.{next(self._ts):06d}"}

    def click_home(self, value: str, *, user: str = "UALICE01") -> dict[str, Any]:
        """The block_actions payload of a click on the button with `value` in `user`'s App Home tab."""
        view = self.homes[user]
        button = next(e for b in view["blocks"] if b.get("type") == "actions" for e in b["elements"]
                      if e.get("value") == value)
        return {"type": "block_actions", "team": {"id": TEAM, "domain": "fake"},
                "user": {"id": user, "username": self.users.get(user, {}).get("name", user), "team_id": TEAM},
                "api_app_id": "A0000001", "token": "legacy", "container": {"type": "view", "view_id": view["id"]},
                "trigger_id": f"trig.home.{next(self._ts)}", "view": view,
                "actions": [{"action_id": button["action_id"], "block_id": "squall_buttons_0", "value": value,
                             "type": "button", "text": button["text"], "action_ts": str(time.time())}]}

    def message_shortcut(self, message: dict[str, Any], callback_id: str, *, user: str = "UALICE01") -> dict[str, Any]:
        """The `message_action` payload of a message shortcut used on `message` (an event's or a post's)."""
        channel = message["channel"]
        shown = {"type": "message", "user": message.get("user", BOT_USER), "ts": message["ts"],
                 "text": message.get("text", "")}
        if message.get("thread_ts"):
            shown["thread_ts"] = message["thread_ts"]
        return {"type": "message_action", "token": "legacy", "action_ts": str(time.time()),
                "team": {"id": TEAM, "domain": "fake"},
                "user": {"id": user, "name": self.users.get(user, {}).get("name", user), "team_id": TEAM},
                "channel": {"id": channel, "name": self.channels.get(channel, {}).get("name") or "directmessage"},
                "is_enterprise_install": False, "callback_id": callback_id,
                "trigger_id": f"trig.shortcut.{next(self._ts)}", "response_url": f"{self.url}/response/shortcut",
                "message_ts": message["ts"], "message": shown}

    async def submit_view(self, view: dict[str, Any], values: dict[str, Any], *,
                          user: str = "UALICE01") -> dict[str, Any]:
        """Submit an opened modal with `values` (per field: text, an option's value, or True/False for
        a checkbox), as Slack's `view_submission`; returns the ack's payload ({} for a plain ack)."""
        state: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks") or []:
            if block.get("type") != "input":
                continue
            element = block["element"]
            value = values.get(block["block_id"])
            entry: dict[str, Any] = {"type": element["type"]}
            if element["type"] == "static_select":
                entry["selected_option"] = next((o for o in element["options"] if o["value"] == value), None)
            elif element["type"] == "checkboxes":
                entry["selected_options"] = element["options"][:1] if value else []
            else:
                entry["value"] = None if value is None else str(value)
            state[block["block_id"]] = {element["action_id"]: entry}
        payload = {"type": "view_submission", "team": {"id": TEAM, "domain": "fake"},
                   "user": {"id": user, "username": self.users.get(user, {}).get("name", user),
                            "name": self.users.get(user, {}).get("name", user), "team_id": TEAM},
                   "api_app_id": "A0000001", "token": "legacy", "trigger_id": f"trig.view.{next(self._ts)}",
                   "view": {**{k: v for k, v in view.items() if k != "trigger_id"}, "state": {"values": state}},
                   "response_urls": [],
                   "is_enterprise_install": False, "enterprise": None}
        envelope = await self.push("interactive", payload)
        ack = await self.wait_for(lambda: next((a for a in self.acks if a["envelope_id"] == envelope), None),
                                  what="the view_submission's ack")
        return ack.get("payload") or {}

    async def close_view(self, view: dict[str, Any], *, user: str = "UALICE01") -> dict[str, Any] | None:
        """The person closes an opened modal unsent (its Cancel button or its ✕). Slack tells the app only
        when the view asked (`notify_on_close: true`): then a `view_closed` in an `interactive` envelope, and
        the ack's payload is returned; otherwise nothing is sent, and None."""
        if not view.get("notify_on_close"):
            return None
        payload = {"type": "view_closed", "team": {"id": TEAM, "domain": "fake"},
                   "user": {"id": user, "username": self.users.get(user, {}).get("name", user),
                            "name": self.users.get(user, {}).get("name", user), "team_id": TEAM},
                   "api_app_id": "A0000001", "token": "legacy",
                   "view": {k: v for k, v in view.items() if k != "trigger_id"},
                   "is_cleared": False, "is_enterprise_install": False, "enterprise": None}
        envelope = await self.push("interactive", payload)
        ack = await self.wait_for(lambda: next((a for a in self.acks if a["envelope_id"] == envelope), None),
                                  what="the view_closed's ack")
        return ack.get("payload") or {}

    # -- the Web API -------------------------------------------------------------------------------
    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(request.query_string).items()}
        raw = await request.read()
        kind = request.headers.get("Content-Type", "")
        if raw and kind.startswith("application/json"):
            params.update(json.loads(raw))
        elif raw and kind.startswith("application/x-www-form-urlencoded"):
            params.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or params.pop("token", "")
        down = next((prefix for prefix, left in self._outages.items() if left and method.startswith(prefix)), None)
        if down is not None:
            self._outages[down] -= 1
            await self._record(Call(method, params, status=503))
            return web.Response(status=503, text="<html>503 Service Unavailable</html>", content_type="text/html")
        limits = self._ratelimits.get(method)
        if limits:
            wait = limits.pop(0)
            await self._record(Call(method, params, status=429))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": f"{wait:g}"})
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            await self._record(Call(method, params, status=401))
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method in self.errors:
            await self._record(Call(method, params, status=400))
            return web.json_response({"ok": False, "error": self.errors[method]})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        body = handler(params) if handler is not None else {"ok": False, "error": "unknown_method"}
        await self._record(Call(method, params))
        return web.json_response(body)

    def _m_views_open(self, p: dict[str, Any]) -> dict[str, Any]:
        """A trigger opens one view, once (Slack: valid 3 s, single use)."""
        view = json.loads(p["view"]) if isinstance(p.get("view"), str) else p.get("view")
        if not p.get("trigger_id") or not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        if any(v["trigger_id"] == p["trigger_id"] for v in self.views):
            return {"ok": False, "error": "expired_trigger_id"}
        opened = {**view, "id": f"V{len(self.views) + 1:08d}", "team_id": TEAM, "app_id": "A0000001",
                  "bot_id": BOT_ID, "state": {"values": {}}, "hash": uuid.uuid4().hex, "trigger_id": p["trigger_id"]}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def _m_views_publish(self, p: dict[str, Any]) -> dict[str, Any]:
        """A user's App Home tab (a `home` view, at most 100 blocks)."""
        view = json.loads(p["view"]) if isinstance(p.get("view"), str) else p.get("view")
        if p.get("user_id") not in self.users or not isinstance(view, dict) or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        if len(view.get("blocks") or []) > 100:
            return {"ok": False, "error": "invalid_blocks"}
        self.homes[p["user_id"]] = {**view, "id": f"VH{p['user_id']}"}
        return {"ok": True, "view": self.homes[p["user_id"]]}

    def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "squall", "team_id": TEAM,
                "user_id": BOT_USER, "bot_id": BOT_ID}

    def _m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4()}&app_id=A0000001"}

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel", "")
        if channel not in self.channels and channel not in self.users:  # a user id: the DM with the app
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.not_member:
            return {"ok": False, "error": "not_in_channel"}
        if not (p.get("text") or p.get("blocks") or p.get("attachments")):
            return {"ok": False, "error": "no_text"}
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        stored = {**p, "ts": ts, "edits": []}
        self.messages.append(stored)
        return {"ok": True, "channel": channel, "ts": ts,
                "message": {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "text": p.get("text"), "ts": ts}}

    def _history(self, p: dict[str, Any], thread: str | None) -> dict[str, Any]:
        """conversations.history / .replies: newest first, `oldest` exclusive, metadata only when asked.
        Posted messages and the messages uploads shared (`files`, `upload: true`), with their blocks."""
        channel = p.get("channel", "")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(p.get("oldest") or 0)
        with_metadata = str(p.get("include_all_metadata", "")).lower() in ("true", "1")
        found = []
        for stored in sorted([*self.messages, *self.shares], key=lambda m: float(m["ts"])):
            in_thread = stored.get("thread_ts") == thread or (thread is not None and stored["ts"] == thread)
            if stored["channel"] != channel or float(stored["ts"]) <= oldest or not in_thread:
                continue
            message = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "text": stored.get("text"),
                       "ts": stored["ts"]}
            blocks = stored.get("blocks")
            if blocks:
                message["blocks"] = json.loads(blocks) if isinstance(blocks, str) else blocks
            if stored.get("files"):
                message.update(files=stored["files"], upload=True, display_as_bot=False)
            metadata = stored.get("metadata")
            if with_metadata and metadata:
                message["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
            found.append(message)
        return {"ok": True, "messages": found[::-1], "has_more": False, "response_metadata": {"next_cursor": ""}}

    def _m_conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._history(p, None)

    def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("ts"):
            return {"ok": False, "error": "invalid_arguments"}
        return self._history(p, p["ts"])

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        for stored in self.messages:
            if stored["channel"] == p.get("channel") and stored["ts"] == p.get("ts"):
                stored["edits"].append(p)
                return {"ok": True, "channel": stored["channel"], "ts": stored["ts"], "text": p.get("text")}
        return {"ok": False, "error": "message_not_found"}

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(p.get("user", ""))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        # A Slack Connect member of another organisation keeps their own team (`team_id` in `users`). The
        # profile's `display_name` and `real_name` are the person's own to set (their name when not given);
        # a `name` of None leaves the key out, as for a user Slack gives no legacy username.
        found = {"id": p["user"], "team_id": user.get("team_id", TEAM), "name": user["name"], "is_bot": False,
                 "deleted": False, "real_name": user["real_name"], "tz": "Europe/London",
                 "profile": {"display_name": user.get("display_name", user["name"] or ""),
                             "real_name": user["real_name"]}}
        return {"ok": True, "user": {k: v for k, v in found.items() if v is not None}}

    def _m_conversations_info(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self.channels.get(p.get("channel", ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        im = bool(channel.get("is_im"))
        return {"ok": True, "channel": {"id": p["channel"], "name": channel["name"], "is_channel": not im,
                                        "is_im": im, "is_private": False, "is_member": True}}

    def _m_usergroups_list(self, p: dict[str, Any]) -> dict[str, Any]:
        with_users = str(p.get("include_users", "")).lower() in ("true", "1")
        groups = [{k: v for k, v in g.items() if k != "users" or with_users} for g in self.usergroups]
        return {"ok": True, "usergroups": groups}

    def _m_usergroups_users_list(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "users": self.group_members.get(p.get("usergroup", ""), [])}

    def _m_reactions_add(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("filename") or not str(p.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._files):07d}"
        self._file_names[file_id] = str(p["filename"])
        return {"ok": True, "file_id": file_id, "upload_url": f"{self.url}/upload/{file_id}"}

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        """Completes the uploads and, given a `channel_id`, shares them there (in `thread_ts`'s thread) in
        one message by the bot: `initial_comment` its text, else `blocks` (ignored beside a comment)."""
        files = json.loads(p.get("files") or "[]")
        if not files or any(f["id"] not in self.uploads for f in files):
            return {"ok": False, "error": "file_not_found"}
        shown = [{"id": f["id"], "name": self._file_names.get(f["id"], ""), "title": f.get("title", ""),
                  "mimetype": "text/plain", "size": len(self.uploads[f["id"]])} for f in files]
        channel = p.get("channel_id")
        if channel:
            if channel not in self.channels and channel not in self.users:
                return {"ok": False, "error": "channel_not_found"}
            comment = p.get("initial_comment") or ""
            share = {"channel": channel, "ts": f"{int(time.time())}.{next(self._ts):06d}", "text": comment,
                     "files": shown, "blocks": None if comment else p.get("blocks")}
            if p.get("thread_ts"):
                share["thread_ts"] = p["thread_ts"]
            self.shares.append(share)
        return {"ok": True, "files": [{"id": f["id"], "title": f["title"]} for f in shown]}

    async def _upload(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.uploads[request.match_info["file_id"]] = data
        await self._record(Call("UPLOAD", {"file_id": request.match_info["file_id"], "length": len(data)}))
        return web.Response(text=f"OK - {len(data)}")

    async def _response(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append({"url": str(request.url), **body})
        await self._record(Call("RESPONSE_URL", body))
        return web.Response(text="ok")

    # -- Socket Mode -------------------------------------------------------------------------------
    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self._silent:  # a zombie: accepted, then nothing, ever
            self._zombies.add(ws)
            await self._record(Call("SOCKET_ZOMBIE", {}))
            try:
                async for _ in ws:
                    pass
            finally:
                self._zombies.discard(ws)
            return ws
        self.connections += 1
        self._sockets.add(ws)
        await self._record(Call("SOCKET_OPEN", {"n": self.connections}))
        await ws.send_str(json.dumps({"type": "hello", "num_connections": len(self._sockets),
                                      "debug_info": {"host": "fake", "approximate_connection_time": 18060},
                                      "connection_info": {"app_id": "A0000001"}}))
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                data = json.loads(frame.data)
                if "envelope_id" in data:
                    async with self._changed:
                        self.acks.append(data)
                        self._changed.notify_all()
        finally:
            self._sockets.discard(ws)
        return ws


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A `FakeSlack` serving for one test, closed after it: a test module takes it under the name its tests
    use (`fake = fake_slack`), as errbot ships its test backend as a fixture."""
    server = await FakeSlack().start()
    try:
        yield server
    finally:
        await server.close()
