"""A faithful local Mattermost (REST API v4 subset + websocket + slash-command driver) for tests.

No Mattermost server can be installed here, so this one is built from the documented payloads
(shared/reference/chat-protocols.md §2): `Content-Type: application/json` exactly, Mattermost-shaped
errors (`{"id", "message", "detailed_error", "request_id", "status_code"}`), 201 for created posts,
`posted` events whose `data.post` (and `data.mentions`) are JSON *strings*, hello at seq 0, the
bot's own posts echoed back, a bot account's posts marked `props.from_bot`, uploads and posts refused
(403) in channels the caller is not a member of, `authentication_challenge` answered with `seq_reply`, and resumable
connections (`?connection_id=&sequence_number=` replays what was queued while the socket was down).

Test controls are plain methods on `FakeMattermost` (it runs on the test's event loop): `say()`
(a person posts), `slash()` (Mattermost calls the bot's slash-command URL), `click()` (a message
button), `submit_dialog()` (an interactive dialog opened through `POST /actions/dialogs/open`, whose
trigger must be one this server issued to a slash command or a click, once), `cancel_dialog()` (its
Cancel: posted to the dialog's url only when it was opened with `notify_on_cancel`), `edit()` (a person
edits their post), `backdate()` (a post made earlier), `rate_limit()`, `drop_websockets()`,
`refuse_websockets`, and `calls`, a record of every REST call (never tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

BOT_TOKEN = "bot-token-0123456789"
ALICE_TOKEN = "alice-token-0123456789"
CALL = web.RequestKey("call", dict)
USER_ID = web.RequestKey("user_id", str)
DEAD_QUEUE = 128  # events a disconnected websocket keeps for its resume, as Mattermost's dead queue


def mmid() -> str:
    """Mattermost ids are 26 lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(26))


def now_ms() -> int:
    return int(time.time() * 1000)


def J(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with the exact Content-Type the real server sends (aiohttp's json_response adds a charset)."""
    return web.Response(body=json.dumps(obj).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


def error(status: int, error_id: str, message: str) -> web.Response:
    return J({"id": error_id, "message": message, "detailed_error": "", "request_id": mmid(),
              "status_code": status}, status)


@dataclass
class Connection:
    """One websocket session as the server keeps it: it outlives the socket so it can be resumed."""

    id: str
    user_id: str
    next_seq: int = 0
    ws: web.WebSocketResponse | None = None
    sent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=DEAD_QUEUE))


@dataclass
class RateLimit:
    method: str
    path: str
    times: int
    retry_after: int


class FakeMattermost:
    def __init__(self, max_post_size: int = 16383, bot_username: str = "squallbot") -> None:
        self.max_post_size = max_post_size
        self.url = ""
        self.users: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self.teams: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.members: dict[str, set[str]] = {}
        self.posts: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.hooks: dict[str, dict[str, Any]] = {}
        #: Every REST call: {"method", "path", "query", "body"} (JSON body or form fields; never headers).
        self.calls: list[dict[str, Any]] = []
        #: Slash-command answers: {"hook", "payload", "via": "answer" (the HTTP answer) or "response_url"}.
        self.responses: list[dict[str, Any]] = []
        #: Interactive dialogs opened: {"trigger_id", "url", "dialog", "user_id"} (the trigger's user).
        self.dialogs: list[dict[str, Any]] = []
        #: Trigger ids issued with slash commands and clicks, by the user they belong to (single use).
        self.triggers: dict[str, str] = {}
        #: Every websocket upgrade: {"query": {...}}.
        self.ws_connects: list[dict[str, str]] = []
        self.connections: dict[str, Connection] = {}
        self.refuse_websockets = False
        #: False acts like a proxy that strips the upgrade's Authorization header: only the challenge works.
        self.websocket_header_auth = True
        self._limits: list[RateLimit] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

        self.team = self._add_team("ops")
        self.bot = self.add_user(bot_username, BOT_TOKEN, is_bot=True)
        self.alice = self.add_user("alice", ALICE_TOKEN)
        self.bob = self.add_user("bob")
        self.town_square = self.add_channel("town-square", "O")
        self.dm_alice = self.direct_channel(self.alice["id"], self.bot["id"])

    # -- data ---------------------------------------------------------------------------------------
    def _add_team(self, name: str) -> dict[str, Any]:
        team = {"id": mmid(), "name": name, "display_name": name.title(), "type": "O", "create_at": now_ms()}
        self.teams[team["id"]] = team
        return team

    def add_user(self, username: str, token: str | None = None, is_bot: bool = False) -> dict[str, Any]:
        user = {"id": mmid(), "username": username, "is_bot": is_bot, "first_name": "", "last_name": "",
                "nickname": "", "email": f"{username}@example.com", "roles": "system_user", "locale": "en",
                "create_at": now_ms(), "update_at": now_ms(), "delete_at": 0}
        self.users[user["id"]] = user
        if token:
            self.tokens[token] = user["id"]
        for channel in self.channels.values():
            if channel["type"] == "O":
                self.members[channel["id"]].add(user["id"])
        return user

    async def rename(self, user: dict[str, Any], username: str, *, announce: bool = True) -> None:
        """An admin renames `user`; like the server, `user_updated` goes to every session (unless
        `announce` is false: a rename made while the bot's websocket was down, whose event it missed)."""
        user["username"] = username
        user["update_at"] = now_ms()
        if announce:
            for connection in list(self.connections.values()):
                await self._send(connection, {"event": "user_updated", "data": {"user": dict(user)},
                                              "broadcast": {"omit_users": None, "user_id": "", "channel_id": "",
                                                            "team_id": ""}})
            await self._notify()

    def add_channel(self, name: str, kind: str = "O", members: list[str] | None = None) -> dict[str, Any]:
        channel = {"id": mmid(), "create_at": now_ms(), "update_at": now_ms(), "delete_at": 0,
                   "team_id": self.team["id"] if kind in "OP" else "", "type": kind, "display_name": name.title(),
                   "name": name, "header": "", "purpose": "", "last_post_at": 0, "total_msg_count": 0,
                   "creator_id": ""}
        self.channels[channel["id"]] = channel
        self.members[channel["id"]] = set(members if members is not None else self.users)
        return channel

    def direct_channel(self, user_a: str, user_b: str) -> dict[str, Any]:
        name = "__".join(sorted([user_a, user_b]))
        for channel in self.channels.values():
            if channel["type"] == "D" and channel["name"] == name:
                return channel
        channel = self.add_channel(name, "D", [user_a, user_b])
        channel["display_name"] = ""
        return channel

    def posts_by(self, user_id: str, channel_id: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.posts.values() if p["user_id"] == user_id and channel_id in (None, p["channel_id"])]

    def bot_posts(self, channel_id: str | None = None) -> list[dict[str, Any]]:
        return self.posts_by(self.bot["id"], channel_id)

    def backdate(self, post: dict[str, Any], seconds: float) -> None:
        """Make `post` (and its channel's last post) `seconds` older, as if it had been posted then."""
        ms = int(seconds * 1000)
        post["create_at"] -= ms
        post["update_at"] -= ms
        channel = self.channels[post["channel_id"]]
        channel["last_post_at"] = max(p["create_at"] for p in self.posts.values()
                                      if p["channel_id"] == channel["id"])

    async def edit(self, post: dict[str, Any], message: str) -> None:
        """Its author edits `post` (as `PUT /posts/{id}/patch` does): `edit_at` and `update_at` move on,
        `create_at` and the channel's `last_post_at` do not; `post_edited` goes to the channel's members."""
        post["message"] = message
        post["edit_at"] = post["update_at"] = now_ms()
        await self._publish("post_edited", {"post": json.dumps(post)}, {"channel_id": post["channel_id"]},
                            post["channel_id"])

    # -- test controls ------------------------------------------------------------------------------
    async def start(self, port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware], client_max_size=50 * 1024 * 1024)
        r = app.router
        r.add_get("/api/v4/websocket", self._websocket)
        r.add_get("/api/v4/users/me", self._users_me)
        r.add_get("/api/v4/users/username/{name}", self._user_by_name)
        r.add_get("/api/v4/users/{id}", self._user)
        r.add_get("/api/v4/users/{id}/channels", self._channels_for_user)
        r.add_get("/api/v4/teams/name/{name}", self._team_by_name)
        r.add_get("/api/v4/teams/{team}/channels/name/{name}", self._channel_by_name)
        r.add_get("/api/v4/channels/{id}", self._channel)
        r.add_get("/api/v4/channels/{id}/posts", self._channel_posts)
        r.add_post("/api/v4/channels/direct", self._create_direct)
        r.add_get("/api/v4/config/client", self._client_config)
        r.add_post("/api/v4/posts", self._create_post)
        r.add_get("/api/v4/posts/{id}", self._get_post)
        r.add_put("/api/v4/posts/{id}/patch", self._patch_post)
        r.add_put("/api/v4/posts/{id}", self._update_post)
        r.add_post("/api/v4/files", self._upload)
        r.add_post("/api/v4/actions/dialogs/open", self._open_dialog)
        r.add_post("/hooks/commands/{id}", self._command_hook)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for connection in self.connections.values():
            if connection.ws is not None:
                with contextlib.suppress(Exception):
                    await connection.ws.close()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def rate_limit(self, times: int = 1, retry_after: int = 1, method: str = "POST",
                   path: str = "/api/v4/posts") -> None:
        """Answer the next `times` calls of `method path` with 429 and Mattermost's rate-limit headers."""
        self._limits.append(RateLimit(method, path, times, retry_after))

    async def drop_websockets(self, forget: bool = False) -> None:
        """Close every websocket from the server side; `forget` also drops the sessions (a server restart)."""
        for connection in list(self.connections.values()):
            ws, connection.ws = connection.ws, None
            if ws is not None:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        if forget:
            self.connections.clear()

    def live_connections(self, user_id: str | None = None) -> list[Connection]:
        return [c for c in self.connections.values() if c.ws is not None and user_id in (None, c.user_id)]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15) -> Any:
        """Wait until `predicate()` is truthy (checked whenever the fake's state changes)."""
        async def poll() -> Any:
            async with self._changed:
                while not (result := predicate()):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.2)
                return result
        return await asyncio.wait_for(poll(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def say(self, user: dict[str, Any], channel: dict[str, Any], message: str,
                  root_id: str = "") -> dict[str, Any]:
        """A person posts in a channel (as the webapp would, through the API)."""
        return await self.make_post(user["id"], channel["id"], message, root_id)

    async def slash(self, target_url: str, text: str, *, user: dict[str, Any] | None = None,
                    channel: dict[str, Any] | None = None, token: str | None = "slash-token",
                    command: str = "/squall") -> tuple[int, Any]:
        """Mattermost runs a custom slash command: POST the form (and `Authorization: Token`) to the bot.

        Like the server, an `in_channel` answer becomes a post by the person who ran the command, marked
        `from_webhook`; returns (status, answer)."""
        user = user or self.alice
        channel = channel or self.town_square
        hook = mmid()
        self.hooks[hook] = {"channel_id": channel["id"], "user_id": user["id"], "uses": 0, "created": time.time()}
        form = {"channel_id": channel["id"], "channel_name": channel["name"], "command": command,
                "response_url": f"{self.url}/hooks/commands/{hook}", "team_domain": self.team["name"],
                "team_id": self.team["id"], "text": text, "trigger_id": self._trigger(user), "user_id": user["id"],
                "user_name": user["username"]}
        headers = {}
        if token is not None:
            form["token"] = token
            headers["Authorization"] = f"Token {token}"
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(target_url, data=form, headers=headers) as response:
            raw = await response.read()
            answer: Any = raw.decode()
            if response.content_type == "application/json":
                answer = json.loads(raw)
            if response.status == 200 and isinstance(answer, dict):
                await self._command_response(hook, answer, via="answer")
            return response.status, answer

    async def click(self, post: dict[str, Any], index: int = 0, *,
                    user: dict[str, Any] | None = None) -> tuple[int, Any]:
        """A person clicks a message button: the server POSTs a PostActionIntegrationRequest (with the
        button's context, which clients never see) to its integration URL and applies the `update`."""
        user = user or self.alice
        actions = [a for attachment in (post.get("props") or {}).get("attachments", [])
                   for a in attachment.get("actions", [])]
        integration = actions[index]["integration"]
        channel = self.channels[post["channel_id"]]
        request = {"user_id": user["id"], "user_name": user["username"], "channel_id": channel["id"],
                   "channel_name": channel["name"], "team_id": self.team["id"], "team_domain": self.team["name"],
                   "post_id": post["id"], "trigger_id": self._trigger(user), "type": "", "data_source": "",
                   "context": integration.get("context") or {}}
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(integration["url"], json=request) as response:
            status, answer = response.status, await response.json(content_type=None)
        update = answer.get("update") if status == 200 and isinstance(answer, dict) else None
        if update:
            stored = self.posts[post["id"]]
            stored["message"] = update.get("message", "")
            stored["props"] = update.get("props") or {}
            stored["edit_at"] = stored["update_at"] = now_ms()
            await self._publish("post_edited", {"post": json.dumps(stored)}, {"channel_id": stored["channel_id"]},
                                stored["channel_id"])
        return status, answer

    def _trigger(self, user: dict[str, Any]) -> str:
        trigger = mmid()
        self.triggers[trigger] = user["id"]
        return trigger

    async def submit_dialog(self, opened: dict[str, Any], values: dict[str, Any], *,
                            user: dict[str, Any] | None = None, cancelled: bool = False) -> tuple[int, Any]:
        """A person submits an opened dialog: the server POSTs a SubmitDialogRequest to the dialog's
        url, with the submitter's user_id (and the dialog's state); returns (status, answer). A bool
        element is sent as true/false, the others as the text typed (absent when left empty)."""
        dialog = opened["dialog"]
        user = user or self.users[opened["user_id"]]
        submission = {e["name"]: (bool(values.get(e["name"])) if e["type"] == "bool" else values[e["name"]])
                      for e in dialog["elements"] if e["type"] == "bool" or values.get(e["name"]) is not None}
        request = {"type": "dialog_submission", "url": opened["url"], "callback_id": dialog.get("callback_id", ""),
                   "state": dialog.get("state", ""), "user_id": user["id"], "channel_id": self.town_square["id"],
                   "team_id": self.team["id"], "submission": {} if cancelled else submission, "cancelled": cancelled}
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(opened["url"], json=request) as response:
            return response.status, await response.json(content_type=None)

    async def cancel_dialog(self, opened: dict[str, Any], *,
                            user: dict[str, Any] | None = None) -> tuple[int, Any] | None:
        """A person cancels an opened dialog. The web app tells the integration only when the dialog asked
        (`notify_on_cancel: true`): then the server POSTs the SubmitDialogRequest it builds (type
        `dialog_submission`, `cancelled: true`, no submission: Go's nil map, `null`) to the dialog's url,
        and (status, answer) is returned; otherwise nothing is sent, and None."""
        dialog = opened["dialog"]
        if not dialog.get("notify_on_cancel"):
            return None
        user = user or self.users[opened["user_id"]]
        request = {"type": "dialog_submission", "callback_id": dialog.get("callback_id", ""),
                   "state": dialog.get("state", ""), "user_id": user["id"], "channel_id": self.town_square["id"],
                   "team_id": self.team["id"], "submission": None, "cancelled": True}
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(opened["url"], json=request) as response:
            return response.status, await response.json(content_type=None)

    # -- middleware ---------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/api/v4/websocket":
            return await handler(request)
        body: Any = None
        if request.content_type == "application/json":
            with contextlib.suppress(ValueError):
                body = await request.json()
        record: dict[str, Any] = {"method": request.method, "path": request.path, "query": dict(request.query),
                                  "body": body, "status": None}
        self.calls.append(record)
        request[CALL] = record
        response = await self._answer(request, handler)
        record["status"] = response.status
        return response

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        for limit in self._limits:
            if limit.times > 0 and limit.method == request.method and request.path == limit.path:
                limit.times -= 1
                return J({"id": "api.context.rate_limit.app_error", "message": "Too many requests.",
                          "status_code": 429}, 429,
                         {"X-Ratelimit-Limit": "10", "X-Ratelimit-Remaining": "0",
                          "X-Ratelimit-Reset": str(limit.retry_after), "Retry-After": str(limit.retry_after)})
        if request.path.startswith("/hooks/") or request.path == "/api/v4/config/client":
            return await handler(request)
        user_id = self._auth(request)
        if user_id is None:
            return error(401, "api.context.session_expired.app_error",
                         "Invalid or expired session, please login again.")
        request[USER_ID] = user_id
        return await handler(request)

    def _auth(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("bearer", "token") and token:
            return self.tokens.get(token.strip())
        return self.tokens.get(request.cookies.get("MMAUTHTOKEN", ""))

    # -- REST -----------------------------------------------------------------------------------------
    async def _open_dialog(self, request: web.Request) -> web.Response:
        body = request[CALL]["body"] or {}
        user_id = self.triggers.pop(str(body.get("trigger_id")), None)
        dialog = body.get("dialog")
        if user_id is None:
            return error(400, "interactive_message.decode_trigger_id.expired", "Trigger ID for interactive "
                         "dialog is expired.")
        if not isinstance(dialog, dict) or not body.get("url") or not dialog.get("elements"):
            return error(400, "api.context.invalid_body_param.app_error", "Invalid or missing dialog in request body.")
        self.dialogs.append({"trigger_id": body["trigger_id"], "url": body["url"], "dialog": dialog,
                             "user_id": user_id})
        await self._notify()
        return J({"status": "OK"})

    async def _users_me(self, request: web.Request) -> web.Response:
        return J(self.users[request[USER_ID]])

    async def _user(self, request: web.Request) -> web.Response:
        user = self.users.get(request.match_info["id"])
        return J(user) if user else error(404, "app.user.missing_account.const", "Unable to find the user.")

    async def _user_by_name(self, request: web.Request) -> web.Response:
        for user in self.users.values():
            if user["username"] == request.match_info["name"]:
                return J(user)
        return error(404, "app.user.missing_account.const", "Unable to find the user.")

    async def _team_by_name(self, request: web.Request) -> web.Response:
        for team in self.teams.values():
            if team["name"] == request.match_info["name"]:
                return J(team)
        return error(404, "app.team.get_by_name.missing.app_error", "Unable to find the existing team.")

    async def _channel_by_name(self, request: web.Request) -> web.Response:
        for channel in self.channels.values():
            if channel["team_id"] == request.match_info["team"] and channel["name"] == request.match_info["name"]:
                return J(channel)
        return error(404, "app.channel.get_by_name.missing.app_error", "Channel does not exist.")

    async def _channel(self, request: web.Request) -> web.Response:
        channel = self.channels.get(request.match_info["id"])
        if channel is None or request[USER_ID] not in self.members[channel["id"]]:
            return error(404, "app.channel.get.existing.app_error", "Unable to find the existing channel.")
        return J(channel)

    async def _channels_for_user(self, request: web.Request) -> web.Response:
        """`GET /users/{user_id}/channels` (server 6.1+): every channel of every team the user is a member
        of, direct and group messages included, as one list (the server streams it whole, no pages);
        `me` is the caller; another user's needs `edit_other_users`, which no one here has. Archived
        channels only with `include_deleted=true` (and then those archived after `last_delete_at`)."""
        user_id = request.match_info["id"]
        if user_id == "me":
            user_id = request[USER_ID]
        if user_id != request[USER_ID]:
            return error(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        include_deleted = request.query.get("include_deleted") == "true"
        last_delete_at = int(request.query.get("last_delete_at") or 0)
        return J([c for c in self.channels.values() if user_id in self.members[c["id"]]
                  and (not c["delete_at"] or (include_deleted and c["delete_at"] > last_delete_at))])

    async def _channel_posts(self, request: web.Request) -> web.Response:
        """A PostList of the channel's posts; with `since` (ms), as the real server's getPostsSince: those
        changed after it (created, edited, reacted to, deleted: `update_at`; at most 1000), thread
        replies included, and the root of every thread among them, however old."""
        channel = self.channels.get(request.match_info["id"])
        if channel is None:
            return error(404, "app.channel.get.existing.app_error", "Unable to find the existing channel.")
        if request[USER_ID] not in self.members[channel["id"]]:
            return error(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        since = int(request.query.get("since") or 0)
        posts = [p for p in self.posts.values() if p["channel_id"] == channel["id"] and p["update_at"] > since][:1000]
        roots = {p["root_id"] for p in posts if p["root_id"]} - {p["id"] for p in posts}
        posts += [self.posts[root] for root in roots if root in self.posts]
        posts.sort(key=lambda p: p["create_at"], reverse=True)
        return J({"order": [p["id"] for p in posts], "posts": {p["id"]: p for p in posts}, "next_post_id": "",
                  "prev_post_id": ""})

    async def _create_direct(self, request: web.Request) -> web.Response:
        ids = await request.json()
        if not isinstance(ids, list) or len(ids) != 2 or any(i not in self.users for i in ids):
            return error(400, "api.context.invalid_body_param.app_error", "Invalid or missing user_ids in request "
                                                                          "body.")
        channel = self.direct_channel(ids[0], ids[1])
        return J(channel, 201)

    async def _client_config(self, request: web.Request) -> web.Response:
        if request.query.get("format") != "old":
            return error(501, "api.config.client.old_format.app_error", "New format for the client configuration "
                                                                        "is not supported yet. Please specify "
                                                                        "format=old in the query string.")
        return J({"Version": "10.0.0", "BuildNumber": "fake", "SiteURL": self.url, "SiteName": "Fake Mattermost",
                  "MaxPostSize": str(self.max_post_size), "EnableCustomEmoji": "false"})

    async def _create_post(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "api.context.invalid_body_param.app_error", "Invalid or missing post in request body.")
        channel = self.channels.get(body.get("channel_id", ""))
        if channel is None:
            return error(400, "api.context.invalid_body_param.app_error", "Invalid or missing channel_id.")
        if request[USER_ID] not in self.members[channel["id"]]:
            return error(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        message = body.get("message", "")
        if len(message) > self.max_post_size:
            return error(400, "model.post.is_valid.msg.app_error", "Invalid message.")
        root_id = body.get("root_id") or ""
        if root_id:
            root = self.posts.get(root_id)
            if root is None or root["channel_id"] != channel["id"] or root["root_id"]:
                return error(400, "api.post.create_post.root_id.app_error", "Invalid RootId parameter.")
        file_ids = body.get("file_ids") or []
        if any(f not in self.files or self.files[f]["post_id"] for f in file_ids):
            return error(400, "api.post.create_post.file_ids.app_error", "Invalid file_ids.")
        post = await self.make_post(request[USER_ID], channel["id"], message, root_id, body.get("props") or {},
                                    file_ids)
        return J(post, 201)

    async def _get_post(self, request: web.Request) -> web.Response:
        post = self.posts.get(request.match_info["id"])
        return J(post) if post else error(404, "app.post.get.app_error", "Unable to get the post.")

    async def _patch_post(self, request: web.Request) -> web.Response:
        post = self.posts.get(request.match_info["id"])
        if post is None:
            return error(404, "app.post.get.app_error", "Unable to get the post.")
        if post["user_id"] != request[USER_ID]:
            return error(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        patch = await request.json()
        if "message" in patch:
            if len(patch["message"]) > self.max_post_size:
                return error(400, "model.post.is_valid.msg.app_error", "Invalid message.")
            post["message"] = patch["message"]
        if "props" in patch:
            post["props"] = patch["props"]
        post["edit_at"] = post["update_at"] = now_ms()
        await self._publish("post_edited", {"post": json.dumps(post)}, {"channel_id": post["channel_id"]},
                            post["channel_id"])
        return J(post)

    async def _update_post(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("id") != request.match_info["id"]:
            return error(400, "api.context.invalid_body_param.app_error", "Invalid or missing id in request body.")
        return await self._patch_post(request)

    async def _upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        channel_id = ""
        infos = []
        async for part in reader:
            if part.name == "channel_id":
                channel_id = (await part.read()).decode()
            elif part.name == "files":
                content = await part.read()
                info = {"id": mmid(), "user_id": request[USER_ID], "post_id": "", "channel_id": channel_id,
                        "create_at": now_ms(), "update_at": now_ms(), "delete_at": 0, "name": part.filename,
                        "extension": (part.filename or "").rpartition(".")[2], "size": len(content),
                        "mime_type": part.headers.get("Content-Type", "application/octet-stream")}
                self.files[info["id"]] = {**info, "content": content}
                infos.append(info)
        request[CALL]["body"] = {"channel_id": channel_id, "files": [i["name"] for i in infos]}
        if not infos or channel_id not in self.channels:
            return error(400, "api.file.upload_file.incorrect_number_of_files.app_error", "Unable to upload files.")
        if request[USER_ID] not in self.members[channel_id]:  # the server checks upload_file on the channel
            for info in infos:
                del self.files[info["id"]]
            return error(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        return J({"file_infos": infos, "client_ids": []}, 201)

    async def _command_hook(self, request: web.Request) -> web.Response:
        hook_id = request.match_info["id"]
        hook = self.hooks.get(hook_id)
        if hook is None or hook["uses"] >= 5 or time.time() - hook["created"] > 1800:
            return error(400, "web.command_webhook.invalid.app_error", "Invalid webhook.")
        try:
            payload = await request.json()
        except ValueError:
            return error(400, "web.command_webhook.parse.app_error", "Unable to parse incoming data.")
        hook["uses"] += 1
        await self._command_response(hook_id, payload, via="response_url")
        return web.Response(text="ok", content_type="text/plain")

    async def _command_response(self, hook_id: str, payload: dict[str, Any], via: str) -> None:
        hook = self.hooks[hook_id]
        self.responses.append({"hook": hook_id, "payload": payload, "via": via})
        if payload.get("response_type") == "in_channel":
            # As the server posts a command's answer (app/command.go, HandleCommandResponsePost): as the
            # person who ran the command, marked `from_webhook`.
            props = {"from_webhook": "true"}
            if payload.get("attachments"):
                props["attachments"] = payload["attachments"]
            await self.make_post(hook["user_id"], hook["channel_id"], payload.get("text", ""), "", props)
        else:
            await self._notify()

    # -- posts and events -----------------------------------------------------------------------------
    async def make_post(self, user_id: str, channel_id: str, message: str, root_id: str = "",
                        props: dict[str, Any] | None = None, file_ids: list[str] | None = None) -> dict[str, Any]:
        t = now_ms()
        props = dict(props or {})
        if self.users[user_id].get("is_bot"):  # as the server marks a bot account's posts (app/post.go)
            props["from_bot"] = "true"
        post = {"id": mmid(), "create_at": t, "update_at": t, "edit_at": 0, "delete_at": 0, "is_pinned": False,
                "user_id": user_id, "channel_id": channel_id, "root_id": root_id, "original_id": "",
                "message": message, "type": "", "props": props, "hashtags": "", "pending_post_id": "",
                "reply_count": 0, "file_ids": file_ids or [], "metadata": {}}
        if file_ids:
            post["metadata"]["files"] = []
            for file_id in file_ids:
                self.files[file_id]["post_id"] = post["id"]
                post["metadata"]["files"].append({k: v for k, v in self.files[file_id].items() if k != "content"})
        self.posts[post["id"]] = post
        channel = self.channels[channel_id]
        channel["last_post_at"] = t
        sender = self.users[user_id]["username"]
        data: dict[str, Any] = {"channel_display_name": channel["display_name"], "channel_name": channel["name"],
                                "channel_type": channel["type"], "post": json.dumps(post),
                                "sender_name": "@" + sender, "set_online": True, "team_id": channel["team_id"]}
        mentions = [uid for uid in self.members[channel_id] if uid != user_id
                    and f"@{self.users[uid]['username']}".lower() in message.lower()]
        if channel["type"] == "D":
            mentions = [uid for uid in self.members[channel_id] if uid != user_id]
        if mentions:
            data["mentions"] = json.dumps(mentions)
        await self._publish("posted", data, {"channel_id": channel_id, "omit_users": None, "user_id": "",
                                             "team_id": ""}, channel_id)
        return post

    async def _publish(self, event: str, data: dict[str, Any], broadcast: dict[str, Any], channel_id: str) -> None:
        """Send to every session of the channel's members; a session whose socket is down queues it."""
        members = self.members[channel_id]
        for connection in list(self.connections.values()):
            if connection.user_id in members:
                await self._send(connection, {"event": event, "data": data, "broadcast": broadcast})
        await self._notify()

    async def _send(self, connection: Connection, event: dict[str, Any]) -> None:
        event = {**event, "seq": connection.next_seq}
        connection.next_seq += 1
        connection.sent.append(event)
        if connection.ws is not None:
            try:
                await connection.ws.send_str(json.dumps(event))
            except (ConnectionError, RuntimeError):
                connection.ws = None

    # -- websocket --------------------------------------------------------------------------------------
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_websockets:
            return error(503, "api.web_socket.connect.upgrade.app_error", "Failed to upgrade websocket connection.")
        self.ws_connects.append(dict(request.query))
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        state: dict[str, Any] = {"connection": None}

        async def authenticated(user_id: str) -> None:
            resume = self.connections.get(request.query.get("connection_id", ""))
            wanted = request.query.get("sequence_number")
            connection: Connection | None = None
            if resume is not None and resume.user_id == user_id and resume.ws is None and wanted is not None:
                seq = int(wanted)
                held = [e["seq"] for e in resume.sent]
                if seq == resume.next_seq or (held and held[0] <= seq < resume.next_seq):
                    connection = resume
            if connection is None:
                connection = Connection(id=mmid(), user_id=user_id)
                self.connections[connection.id] = connection
                missed: list[dict[str, Any]] = []
            else:
                missed = [e for e in connection.sent if e["seq"] >= int(wanted or 0)]
            connection.ws = ws
            state["connection"] = connection
            for event in missed:  # replay what the client has not seen, in order
                await ws.send_str(json.dumps(event))
            await self._send(connection, {"event": "hello", "data": {"connection_id": connection.id,
                                                                     "server_version": "10.0.0.fake"},
                                          "broadcast": {"user_id": user_id}})
            await self._notify()

        header_user = self._auth(request) if self.websocket_header_auth else None
        if header_user is not None:
            await authenticated(header_user)
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    action = json.loads(frame.data)
                except ValueError:
                    continue
                if action.get("action") == "authentication_challenge":
                    user_id = self.tokens.get((action.get("data") or {}).get("token", ""))
                    if user_id is None:
                        await ws.send_str(json.dumps({"status": "FAIL", "seq_reply": action.get("seq"),
                                                      "error": {"id": "api.web_socket_router.not_authenticated."
                                                                      "app_error", "message": "Not authenticated."}}))
                        continue
                    if state["connection"] is None:
                        await authenticated(user_id)
                await ws.send_str(json.dumps({"status": "OK", "seq_reply": action.get("seq")}))
        finally:
            connection = state["connection"]
            if connection is not None and connection.ws is ws:
                connection.ws = None
            await self._notify()
        return ws


@pytest.fixture
async def fake_mattermost() -> AsyncIterator[FakeMattermost]:
    """A `FakeMattermost` serving for one test, stopped after it: a test module takes it under the name its
    tests use (`fake = fake_mattermost`)."""
    server = FakeMattermost()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
