"""IRC, through the `irc` library's asyncio client (`irc.client_aio`), on Squall's own event loop.

The adapter only translates: a PRIVMSG in a channel becomes a `Message` (with `mentioned` when it
starts with `nick:` or `nick,`), a private PRIVMSG becomes a direct one whose channel is the
sender's nick, and a `Reply` becomes PRIVMSG lines. What IRC itself demands is handled here:

- registration with an optional server password (PASS) and SASL PLAIN (IRCv3 CAP negotiation);
- a nick that falls back to `nick_`, `nick__`, ... on a collision and is taken back when it frees up:
  at once when its holder is seen to quit or rename, else when a periodic ISON finds it free;
- the 512-byte line limit: every line is split by bytes, never inside a UTF-8 sequence, with room
  for the `:nick!user@host PRIVMSG target :` prefix the server puts in front when relaying it;
- flood control: a token bucket shared by every target (servers throttle or kill per client);
- reconnect with exponential backoff, rejoining channels, after a restart, an ERROR or a kick;
- delivery at least once: IRC acknowledges nothing, so a PING follows each burst of a reply's lines
  and its PONG confirms the server read them; a connection lost before the last PONG fails the send
  (the outbox retries), and the retry resumes after the last line a PONG confirmed;
- a private reply is for the person who asked, not for their nick: a direct message's channel is
  `nick~tag`, the tag naming who held the nick then, followed through the renames and quits the bot
  sees; the chat side is told (`on_gone`) when a person leaves a nick, to close what it held for them,
  and may ask whether a private channel still reaches its person (`reaches`: never one given out
  before a restart, which lost every tag).

The `irc` library calls handlers synchronously from the protocol's `data_received`; an exception
there would close the connection, so every handler is wrapped, and messages go through a queue to
one consumer task that hands them to the dispatcher in order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import itertools
import logging
import os
import random
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import irc.client
import irc.client_aio
import irc.connection
from jaraco.stream.buffer import LenientDecodingLineBuffer

from adapters.base import (
    AdapterConfigError,
    Capabilities,
    DeliveryError,
    GoneHandler,
    Message,
    MessageHandler,
    Reply,
    line_breaks,
)

log = logging.getLogger(__name__)

#: RFC 1459 nick characters (letters, digits, `[]\`_^{|}-`), not starting with a digit or `-`.
_NICK = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]*$")
_CHANNEL_TYPES = "#&+!"
#: What a server may put in front of a relayed line, beyond the nick: `~` plus a 10-character user
#: name and a 63-character host, the longest a DNS label allows (cloaks are usually shorter).
_USER_ROOM = 11
_HOST_ROOM = 63
MAX_LINE = 512
_KNOWN_KEYS = {"enabled", "server", "port", "tls", "tls_verify", "nick", "channels", "password", "sasl_username",
               "sasl_password", "username", "realname", "flood_burst", "flood_interval", "reconnect_max",
               "max_result_lines"}
#: `max_result_lines` unless set: about 10 s of the connection's pace at the default flood settings.
DEFAULT_MAX_RESULT_LINES = 20


class IrcConfigError(ValueError):
    """An `adapters.irc` setting that cannot be used; the message names the key."""


# -- settings ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IrcSettings:
    """`adapters.irc` as the adapter uses it; secrets are kept out of `repr()`."""

    server: str
    port: int = 6667
    tls: bool = False
    tls_verify: bool = True
    nick: str = "squall"
    channels: tuple[str, ...] = ()
    password: str | None = field(default=None, repr=False)
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    username: str = "squall"
    realname: str = "Squall ChatOps"
    flood_burst: int = 5
    flood_interval: float = 0.5
    reconnect_max: float = 60.0
    #: The lines of a result (or `!execution`) shown at most, then where the rest is (0: all of it). The
    #: chat side cuts it (`bot/chat/replies.py` `cap_result`): every line costs every channel its pace.
    max_result_lines: int = DEFAULT_MAX_RESULT_LINES

    @classmethod
    def from_section(cls, section: dict[str, Any], where: str = "adapters.irc",
                     environ: dict[str, str] | None = None) -> IrcSettings:
        """Check every key and name the one that is wrong; env `IRC_PASSWORD`/`IRC_SASL_PASSWORD` fill in
        the secrets when the file leaves them out (so they need not be written to disk)."""
        env = os.environ if environ is None else environ
        for key in section:
            if key not in _KNOWN_KEYS:
                near = difflib.get_close_matches(str(key), sorted(_KNOWN_KEYS), n=1)
                hint = f" (did you mean '{where}.{near[0]}'?)" if near else ""
                raise IrcConfigError(f"unknown key '{where}.{key}'{hint}")
        server = section.get("server")
        if not server or not isinstance(server, str) or any(c.isspace() for c in server):
            raise IrcConfigError(f"'{where}.server' must be a host name or address, e.g. irc.libera.chat "
                                 f"(got {server!r})")
        tls = _bool(section.get("tls", False), f"{where}.tls")
        port = _int(section.get("port", 6697 if tls else 6667), f"{where}.port", 1, 65535)
        nick = section.get("nick", "squall")
        if not isinstance(nick, str) or not _NICK.match(nick):
            raise IrcConfigError(f"'{where}.nick' must be an IRC nick (letters, digits and []\\`_^{{|}}-, not "
                                 f"starting with a digit or '-'), not {nick!r}")
        password = section.get("password") or env.get("IRC_PASSWORD") or None
        sasl_username = section.get("sasl_username") or None
        sasl_password = section.get("sasl_password") or env.get("IRC_SASL_PASSWORD") or None
        if sasl_username and not sasl_password:
            raise IrcConfigError(f"'{where}.sasl_username' is set but '{where}.sasl_password' is not "
                                 "(nor IRC_SASL_PASSWORD)")
        if sasl_password and not sasl_username and section.get("sasl_password"):
            raise IrcConfigError(f"'{where}.sasl_password' is set but '{where}.sasl_username' is not")
        for key, value in (("password", password), ("sasl_username", sasl_username),
                           ("sasl_password", sasl_password)):
            if value is not None and (not isinstance(value, str) or "\n" in value or "\r" in value):
                raise IrcConfigError(f"'{where}.{key}' must be a single-line string")
        username = str(section.get("username") or nick)
        if not re.fullmatch(r"[^\s@]+", username):
            raise IrcConfigError(f"'{where}.username' must be one word without '@', not {username!r}")
        return cls(
            server=server, port=port, tls=tls, tls_verify=_bool(section.get("tls_verify", True), f"{where}.tls_verify"),
            nick=nick, channels=_channels(section.get("channels", []), f"{where}.channels"), password=password,
            sasl_username=sasl_username if sasl_password else None,
            sasl_password=sasl_password if sasl_username else None,
            username=username, realname=str(section.get("realname") or "Squall ChatOps"),
            flood_burst=_int(section.get("flood_burst", 5), f"{where}.flood_burst", 1, 1000),
            flood_interval=_float(section.get("flood_interval", 0.5), f"{where}.flood_interval", 0.0, 60.0),
            reconnect_max=_float(section.get("reconnect_max", 60), f"{where}.reconnect_max", 0.1, 3600.0),
            max_result_lines=_int(section.get("max_result_lines", DEFAULT_MAX_RESULT_LINES),
                                  f"{where}.max_result_lines", 0, 100_000),
        )


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise IrcConfigError(f"'{key}' must be true or false, not {value!r}")


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise IrcConfigError(f"'{key}' must be a whole number from {low} to {high}, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise IrcConfigError(f"'{key}' must be a whole number from {low} to {high}, not {value!r}") from None
    if not low <= number <= high:
        raise IrcConfigError(f"'{key}' must be from {low} to {high}, not {number}")
    return number


def _float(value: Any, key: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise IrcConfigError(f"'{key}' must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise IrcConfigError(f"'{key}' must be from {low:g} to {high:g}, not {value!r}")
    return number


def _channels(value: Any, key: str) -> tuple[str, ...]:
    """A list (or a comma-separated string) of channels; `ops` means `#ops`; `#chan key` carries a key.
    `channels: #ops` unquoted is YAML for no value (a comment): refused, or the bot would join nothing."""
    if value is None:
        raise IrcConfigError(f"'{key}' is empty: quote channel names (channels: [\"#ops\"]), since YAML reads "
                             "an unquoted # as the start of a comment; for no channel at all, say channels: []")
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise IrcConfigError(f"'{key}' must be a list of channels like [\"#ops\"], not {value!r}")
    channels: list[str] = []
    for item in items:
        if item is None:
            raise IrcConfigError(f"'{key}' has an empty entry: quote channel names (\"#ops\"), since YAML reads "
                                 "an unquoted # as the start of a comment")
        if not isinstance(item, str) or not item.strip():
            raise IrcConfigError(f"'{key}' entries must be channel names like \"#ops\", not {item!r}")
        name, _, channel_key = item.strip().partition(" ")
        if name[0] not in _CHANNEL_TYPES:
            name = f"#{name}"
        if any(c in name for c in ",\x07\x00\r\n") or len(name) < 2:
            raise IrcConfigError(f"'{key}' has an invalid channel name {item!r}")
        channels.append(f"{name} {channel_key.strip()}" if channel_key.strip() else name)
    return tuple(channels)


# -- lines ------------------------------------------------------------------------------------------

def line_budget(nick: str, target: str, username: str = "") -> int:
    """Bytes of text one PRIVMSG may carry so the relayed line, prefix and CRLF included, fits 512. The
    user name is the bot's own when longer than ten characters (the name defaults to the nick, and a
    server such as ngircd keeps it whole: the line came out over 512 and lost its end)."""
    user = "u" * max(_USER_ROOM, 1 + len(username))
    overhead = f":{nick}!{user}@{'h' * _HOST_ROOM} PRIVMSG {target} :\r\n"
    return MAX_LINE - len(overhead.encode())


#: C0 control characters a reply may not carry: \x01 starts CTCP (an ACTION, a DCC offer in the bot's
#: name), the rest mean nothing to clients. Kept: tab, and the formatting codes clients render (bold
#: \x02, colour \x03, monospace \x11, reset \x0f, reverse \x16, italic \x1d, strikethrough \x1e,
#: underline \x1f). Line breaks are split on before this applies.
_CONTROLS = re.compile("[\x00\x01\x04-\x08\x0b\x0c\x0e\x10\x12-\x15\x17-\x1c]")


def split_lines(text: str, budget: int) -> list[str]:
    """IRC lines for `text`: one per text line (broken by `line_breaks`, the rule the chat side's cap
    counts by: `\\r\\n`, `\\r` and `\\n`), long ones cut by bytes (at a space when one is near the
    end, never inside a UTF-8 sequence); inner blank lines become a single space, as empty PRIVMSGs
    are refused. Control characters other than tab and formatting codes are dropped (`_CONTROLS`), and
    what UTF-8 cannot encode (a lone surrogate, half an emoji from an action) becomes `?`: an action's
    result must never make the send fail, nor send CTCP in the bot's name."""
    budget = max(budget, 16)
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROLS.sub("", line_breaks(text)).strip("\n")  # the controls may have stood around a break
    if not text.strip():
        return []
    out: list[str] = []
    for line in text.split("\n"):
        data = line.rstrip().encode()
        if not data:
            out.append(" ")
            continue
        while len(data) > budget:
            cut = budget
            while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a continuation byte: step back to the lead byte
                cut -= 1
            space = data.rfind(b" ", 0, cut + 1)
            if space > budget // 2:
                piece, data = data[:space], data[space + 1:]
            else:
                piece, data = data[:cut], data[cut:]
            out.append(piece.decode() or " ")
        if data:
            out.append(data.decode())
    return out


class TokenBucket:
    """`burst` lines at once, then one line every `interval` seconds: the pace servers tolerate.

    `clock` and `sleep` are injectable so the pacing can be tested without measuring time."""

    def __init__(self, burst: int, interval: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.burst = burst
        self.interval = interval
        self.tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                if self.interval > 0:
                    self.tokens = min(float(self.burst), self.tokens + (now - self._stamp) / self.interval)
                else:
                    self.tokens = float(self.burst)
                self._stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await self._sleep((1 - self.tokens) * self.interval)


# -- the irc library, made safe for a long-running service ---------------------------------------

class _Protocol(irc.client_aio.IrcProtocol):
    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.connection.closed.set()


class _Connection(irc.client_aio.AioConnection):
    """An AioConnection that survives undecodable bytes, keeps secrets out of debug logs, and tells
    when its socket is closed and when the server last said anything."""

    protocol_class = _Protocol
    buffer_class = LenientDecodingLineBuffer

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.transport: Any = None  # set by connect(); None until the first connection
        self.closed = asyncio.Event()
        self.closed.set()
        self.last_heard = time.monotonic()

    def process_data(self, new_data: bytes) -> None:
        self.last_heard = time.monotonic()
        super().process_data(new_data)

    def send_raw(self, string: str) -> None:
        if self.transport is None or self.transport.is_closing():
            raise irc.client.ServerNotConnectedError("Not connected.")
        command = string.split(" ", 1)[0].upper()
        log.debug("IRC TO SERVER: %s", f"{command} ********" if command in ("PASS", "AUTHENTICATE") else string)
        self.transport.write(self._prep_message(string))

    def disconnect(self, message: str = "") -> None:
        """As the library's, but a QUIT that cannot be sent (the socket is already gone) must not stop the
        transport from closing and the `disconnect` event from firing."""
        try:
            del self.connected
        except AttributeError:
            return
        with contextlib.suppress(irc.client.ServerNotConnectedError):
            self.quit(message)
        self.transport.close()
        self._handle_event(irc.client.Event("disconnect", self.server, "", [message]))


class _Reactor(irc.client_aio.AioReactor):
    connection_class = _Connection


# -- the adapter ------------------------------------------------------------------------------------

class IrcAdapter:
    """One connection to one IRC server, joined to the configured channels."""

    capabilities = Capabilities(threads=False, edits=False, rich=False, files=False, buttons=False,
                                max_length=1600)
    #: Seconds between checks (ISON) whether the configured nick is free again after a collision.
    regain_interval = 30.0
    rejoin_delay = 1.0
    #: A channel not joined (banned, invite-only, full, a kick's rejoin refused) is tried again this long
    #: after the last attempt, the wait doubling up to `rejoin_max`: a lifted ban is noticed by itself.
    rejoin_retry = 30.0
    rejoin_max = 600.0
    #: Silence after which the server is PINGed, and after which the connection is given up as dead.
    idle_ping = 90.0
    idle_timeout = 180.0
    connect_timeout = 20.0
    register_timeout = 30.0
    #: How long `start()` waits for the first registration, and `send()` for a lost connection to return.
    start_wait = 10.0
    send_wait = 10.0
    #: How long `stop()` waits after its QUIT for the server to close the connection (`_quit_and_wait`).
    quit_wait = 10.0
    reconnect_min = 1.0
    #: How long `send()` waits for the JOIN of a channel the bot is not in (kicked, or a new route)
    #: before handing the reply back to the outbox to try again, and for each PONG that confirms the
    #: server read a reply's lines (none in time: the reply is tried again from the last confirmed line).
    join_wait = 10.0
    confirm_wait = 10.0
    #: Nick changes and quits remembered for private replies (the oldest are forgotten first).
    nick_memory = 1000
    #: People (nick holders with a tag: who sent a private message) remembered; a reply to one forgotten
    #: fails rather than going to whoever holds the nick.
    holder_memory = 10000

    def __init__(self, settings: IrcSettings, name: str = "irc") -> None:
        self.name = name
        self.settings = settings
        #: `adapters.irc.max_result_lines`, read by the chat side (`Dispatcher._capped`).
        self.max_result_lines = settings.max_result_lines
        self.wanted: list[str] = list(settings.channels)  # configured channels, then any a reply was sent to
        self.joined: set[str] = set()
        #: Channel (lower case) → (when to try joining it again, the wait after that).
        self._rejoin: dict[str, tuple[float, float]] = {}
        self.registered = asyncio.Event()
        self.connections = 0  # successful registrations so far (a reconnect makes it 2)
        self._lost = asyncio.Event()
        self._reactor: _Reactor | None = None
        self._conn: _Connection | None = None
        self._handler: MessageHandler | None = None
        self._queue: asyncio.Queue[Message | _Gone] = asyncio.Queue()
        #: Set by the chat side: told, in order with the messages, when a person leaves a nick.
        self.on_gone: GoneHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bucket = TokenBucket(settings.flood_burst, settings.flood_interval)
        #: id(reply) → (the reply, its target, its lines, the line a retry resumes at): the reply a send
        #: failed for now, which the outbox retries (the same object) and which then goes on from there.
        self._partial: dict[int, tuple[Reply, str, list[str], int]] = {}
        self._ids = itertools.count(1)
        self._fallbacks = 0
        self._last_regain = 0.0
        #: Whether the server knows ISON (RFC 1459: all do); one that answers 421 gets a plain NICK instead.
        self._ison = True
        self._pinged = False
        self._stopping = False
        self._joined_all = asyncio.Event()
        self._registered_at = 0.0
        #: Set (and replaced) whenever the bot's own JOIN or a refusal to join arrives: `send()` waits on it.
        self._join_news = asyncio.Event()
        self._join_refused: dict[str, str] = {}  # channel (lower case) → the server's last refusal
        #: Nick (lower case) → the tag of its holder, the person a private reply is for (`private_channel`).
        self._holders: dict[str, str] = {}
        #: Tag → (the nick and tag its person went on to), or None once they quit: from NICK and QUIT events
        #: seen in shared channels. A private reply follows its person, never a nick's next holder.
        self._moved: dict[str, tuple[str, str] | None] = {}
        #: For a bare nick (a notification route naming one): old nick (lower case) → new nick, and nicks
        #: seen to QUIT, forgotten when the nick speaks again.
        self._renamed: dict[str, str] = {}
        self._quit: dict[str, None] = {}
        #: PING token → (the reply being confirmed, how many of its lines the PONG confirms read).
        self._confirming: dict[str, tuple[_Confirming, int]] = {}
        #: The replies being written or confirmed: the refusals (401/404) and a disconnect go to them.
        self._sending: list[_Confirming] = []

    @property
    def nick(self) -> str:
        """The nick the server knows us by now (the configured one, or a fallback after a collision)."""
        conn = self._conn
        return conn.real_nickname if conn is not None and self.registered.is_set() else self.settings.nick

    @property
    def online(self) -> bool:
        """Registered with the server (cleared while it reconnects)."""
        return self.registered.is_set()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, on_message: MessageHandler) -> None:
        """Connect in the background; return once registered and joined (or after `start_wait`, so a
        server that is down does not hold up the rest of Squall: the adapter keeps trying)."""
        self._handler = on_message
        loop = asyncio.get_running_loop()
        self._reactor = _Reactor(loop=loop, on_connect=self._on_transport)
        self._reactor.add_global_handler("all_events", self._on_event, 0)
        self._conn = self._reactor.server()
        self._tasks = [loop.create_task(self._supervise(), name="irc-connection"),
                       loop.create_task(self._consume(), name="irc-messages"),
                       loop.create_task(self._housekeeping(), name="irc-housekeeping")]
        try:
            async with asyncio.timeout(self.start_wait):
                await self._joined_all.wait()
        except TimeoutError:
            log.warning("IRC: not connected to %s:%d yet; still trying in the background",
                        self.settings.server, self.settings.port)

    async def stop(self) -> None:
        self._stopping = True
        self._lost.set()  # the supervisor returns even if a cancel were lost (asyncio.wait_for in 3.11 can)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        conn = self._conn
        if conn is not None and conn.transport is not None:
            if conn.connected:
                await self._quit_and_wait(conn)
            with contextlib.suppress(Exception):
                conn.transport.close()
            try:
                async with asyncio.timeout(5):
                    await conn.closed.wait()
            except TimeoutError:
                conn.transport.abort()
                await asyncio.sleep(0)

    async def _quit_and_wait(self, conn: _Connection) -> None:
        """QUIT, then wait (`quit_wait` at most) for the server to close the connection, which it does once it
        has read the QUIT and let go of the nick. Closing at once left the nick held until the server read
        that far: ngircd reads a client's lines at a few a second, so a QUIT behind a reply's lines waits
        there for seconds, and a restarted Squall asking for its nick meanwhile was refused (433), ran as
        `nick_` and, not seeing the old connection quit unless it was in a channel by then, took its nick
        back only `regain_interval` later."""
        try:
            conn.quit("Squall is stopping")
        except irc.client.ServerNotConnectedError:
            return
        try:
            async with asyncio.timeout(self.quit_wait):
                await conn.closed.wait()
        except TimeoutError:
            log.warning("IRC: %s:%d did not close the connection within %.0fs of the QUIT; closing it: the nick "
                        "%s may stay taken there until the server notices", self.settings.server,
                        self.settings.port, self.quit_wait, conn.real_nickname)

    async def _supervise(self) -> None:
        """Connect, wait for the connection to end, back off, and connect again, until stopped."""
        delay = self.reconnect_min
        settings = self.settings
        while not self._stopping:
            conn = self._conn
            assert conn is not None
            self._lost.clear()
            self.registered.clear()
            self._fallbacks = 0
            self._pinged = False
            try:
                conn.closed.clear()
                async with asyncio.timeout(self.connect_timeout):
                    await conn.connect(
                        settings.server, settings.port, settings.nick, password=settings.password,
                        username=settings.username, ircname=settings.realname,
                        connect_factory=irc.connection.AioFactory(**self._tls()))
            except asyncio.CancelledError:
                if not conn.connected:
                    conn.closed.set()  # nothing was opened: stop() must not wait for a close
                raise
            except (OSError, TimeoutError, irc.client.IRCError) as exc:
                conn.closed.set()
                log.warning("IRC: cannot connect to %s:%d (%s); retrying in %.1fs", settings.server, settings.port,
                            _describe(exc), delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, settings.reconnect_max)
                continue
            conn.last_heard = time.monotonic()
            try:
                async with asyncio.timeout(self.register_timeout):
                    await self.registered.wait()
            except TimeoutError:
                log.error("IRC: %s:%d accepted the connection but did not finish registration in %.0fs",
                          settings.server, settings.port, self.register_timeout)
                with contextlib.suppress(Exception):
                    conn.disconnect("registration timed out")
            await self._lost.wait()
            if self._stopping:
                return
            if self._registered_at and time.monotonic() - self._registered_at > 60:
                delay = self.reconnect_min  # it was a healthy connection: come back quickly
            log.warning("IRC: disconnected from %s:%d; reconnecting in %.1fs", settings.server, settings.port, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, settings.reconnect_max)

    def _tls(self) -> dict[str, Any]:
        if not self.settings.tls:
            return {}
        context = ssl.create_default_context()
        if not self.settings.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return {"ssl": context, "server_hostname": self.settings.server}

    async def _consume(self) -> None:
        """Hand messages to the dispatcher one at a time, in the order they arrived, and tell the chat side
        of a person leaving a nick in that order too (a message from the nick's next holder comes after)."""
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, _Gone):
                    if self.on_gone is not None:
                        await self.on_gone(self.name, item.user)
                    continue
                assert self._handler is not None
                await self._handler(item)
            except Exception:
                log.exception("IRC: handling %s from %s failed",
                              "a departure" if isinstance(item, _Gone) else f"a message in {item.channel}", item.user)

    async def _housekeeping(self) -> None:
        """PING a silent server and drop a dead connection; under a fallback nick, ask every `regain_interval`
        whether the configured one is free (`_on_ison` takes it): its holder may share no channel with the
        bot, so its QUIT (a `kill -9`ed Squall's connection timing out) is never seen."""
        while True:
            await asyncio.sleep(1)
            conn = self._conn
            if conn is None or not self.registered.is_set():
                continue
            try:
                quiet = time.monotonic() - conn.last_heard
                if quiet > self.idle_timeout:
                    log.warning("IRC: no word from %s for %.0fs; reconnecting", self.settings.server, quiet)
                    conn.disconnect("ping timeout")
                elif quiet > self.idle_ping and not self._pinged:
                    self._pinged = True
                    conn.ping(self.settings.server)
                elif quiet <= self.idle_ping:
                    self._pinged = False
                if (conn.real_nickname.lower() != self.settings.nick.lower()
                        and time.monotonic() - self._last_regain > self.regain_interval):
                    self._last_regain = time.monotonic()
                    if self._ison:
                        conn.ison([self.settings.nick])
                    else:
                        conn.nick(self.settings.nick)
                self._rejoin_missing()
            except irc.client.ServerNotConnectedError:
                continue

    def _rejoin_missing(self) -> None:
        """Join again each wanted channel the bot is not in, once its wait is over (then wait longer)."""
        now = time.monotonic()
        for channel in list(self.wanted):
            name = channel.split(" ")[0].lower()
            if name in self.joined:
                continue
            due, wait = self._rejoin.get(name, (0.0, self.rejoin_retry))
            if now >= due:
                self._join(channel)
                self._rejoin[name] = (now + wait, min(wait * 2, self.rejoin_max))

    # -- sending --------------------------------------------------------------------------------
    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        """Post `reply` as PRIVMSG lines, paced by the token bucket, and wait until the server confirms it
        read them all (`_confirm`).

        A connection lost before that raises `DeliveryError` (the outbox retries the same reply), and
        the retry resumes after the last line the server confirmed: a few lines twice at worst, none
        missing. A private reply goes to its person's nick as it is now (`_recipient`)."""
        target = reply.channel.strip()
        if not target or any(c in target for c in " ,\r\n\x00"):
            raise DeliveryError(f"IRC: {reply.channel!r} is not a channel or nick")
        await self._wait_registered()
        private = target[0] not in _CHANNEL_TYPES
        if private:
            try:
                target = self._recipient(target)
            except DeliveryError:  # for good: nothing to resume
                self._partial.pop(id(reply), None)
                raise
        else:
            await self._ensure_joined(target)
        conn = self._conn
        assert conn is not None
        lines, done = self._resume(reply, target)
        if done < len(lines):
            sending = self._track(target, done, len(lines))
            try:
                await self._write(conn, target, lines, sending)
                await self._confirm(conn, target, private, len(lines), sending)
            except DeliveryError as exc:
                if exc.permanent:
                    self._partial.pop(id(reply), None)
                else:
                    self._partial[id(reply)] = (reply, target, lines, sending.resume)
                raise
            finally:
                self._untrack(sending)
        self._partial.pop(id(reply), None)
        return f"{target}:{next(self._ids)}"

    def _resume(self, reply: Reply, target: str) -> tuple[list[str], int]:
        """The lines of `reply` and the first one to write: where an earlier attempt to the same target
        left off (the outbox retries the same object), else all of them."""
        saved = self._partial.get(id(reply))
        if saved is not None and saved[0] is reply and saved[1] == target:
            return saved[2], saved[3]
        text = reply.text if reply.file is None else f"{reply.text}\n{reply.file[1]}"
        return split_lines(text, line_budget(self.nick, target, self.settings.username)), 0

    async def _write(self, conn: Any, target: str, lines: list[str], sending: _Confirming) -> None:
        """Write lines `sending.start` on, with a PING after each burst: its PONG confirms the server read
        the lines before it, so a retry after a lost connection repeats only what the server had not
        confirmed reading (about a burst at the default pace, which a server reads as fast as it comes)."""
        burst = self.settings.flood_burst
        for index in range(sending.start, len(lines)):
            if index > sending.start and (index - sending.start) % burst == 0:
                self._checkpoint(conn, sending, index)
            await self._bucket.take()
            if sending.lost or not self.registered.is_set():
                raise _lost(sending, target)
            try:
                conn.privmsg(target, lines[index])
            except irc.client.ServerNotConnectedError:
                raise _lost(sending, target) from None

    def _track(self, target: str, start: int, end: int) -> _Confirming:
        sending = _Confirming(target.lower(), start, end)
        self._sending.append(sending)
        return sending

    def _untrack(self, sending: _Confirming) -> None:
        with contextlib.suppress(ValueError):
            self._sending.remove(sending)
        for token in sending.tokens:
            self._confirming.pop(token, None)

    def _checkpoint(self, conn: Any, sending: _Confirming, upto: int) -> None:
        """PING: the server answers once it has read every line written before, lines `..upto` of `sending`.
        A PING that cannot be written (the connection is gone) marks the reply lost."""
        token = f"squall-{next(self._ids)}"
        self._confirming[token] = (sending, upto)
        sending.tokens.append(token)
        try:
            conn.ping(token)
        except irc.client.ServerNotConnectedError:
            sending.lost = True

    def _recipient(self, target: str) -> str:
        """The nick a private reply to `target` goes to now. `nick~tag` (a private message's channel) is
        the person who held the nick when they wrote: followed along the renames seen in shared
        channels, and failed for good once they quit, or when the tag is not known here (given out
        before a restart, or forgotten), rather than sent to whoever holds a nick now. A bare nick (a
        notification route naming one) is `_current_nick`."""
        nick, _, tag = target.partition("~")
        if not tag:
            return self._current_nick(nick)
        asked = nick
        for _ in range(len(self._moved) + 1):
            if self._holders.get(nick.lower()) == tag:
                return nick
            if tag not in self._moved:
                break
            step = self._moved[tag]
            if step is None:
                raise DeliveryError(f"IRC: {nick} (who asked as {asked}) quit before the private reply was sent; "
                                    "not sending it to whoever uses that nick now", permanent=True)
            nick, tag = step
        raise DeliveryError(f"IRC: the private reply is for whoever used the nick {asked} when they asked, and the "
                            "bot cannot tell who that is now (it did not see where they went, or Squall restarted "
                            f"since); not sending it to whoever uses {nick} now", permanent=True)

    def _current_nick(self, nick: str) -> str:
        """The nick a reply to the bare nick `nick` goes to now: a rename seen in a shared channel is
        followed; a nick seen to quit is undeliverable until someone speaks from it again."""
        seen = {nick.lower()}
        while nick.lower() in self._renamed:
            nick = self._renamed[nick.lower()]
            if nick.lower() in seen:  # a rename back and forth: the loop ends at the nick we came to
                break
            seen.add(nick.lower())
        if nick.lower() in self._quit:
            raise DeliveryError(f"IRC: {nick} quit before the reply was sent; not sending it to whoever uses "
                                "that nick now", permanent=True)
        return nick

    def _remember(self, table: dict[str, Any], key: str, value: Any, limit: int | None = None) -> None:
        table.pop(key, None)
        table[key] = value
        while len(table) > (limit or self.nick_memory):
            del table[next(iter(table))]

    def _holder(self, nick: str) -> str:
        """The tag of the person holding `nick` now (a new one if none was given out since they took it)."""
        tag = self._holders.get(nick.lower()) or secrets.token_hex(4)
        self._remember(self._holders, nick.lower(), tag, self.holder_memory)  # in use: forgotten last
        return tag

    async def _confirm(self, conn: Any, target: str, private: bool, lines: int,
                       sending: _Confirming | None = None) -> None:
        """PING after a reply's `lines` and wait for the PONG: the server answers in order, so once it
        comes the server has read every line, and its refusals of them came first. No PONG (the
        connection lost, or no answer in `confirm_wait` since the last one) is a `DeliveryError` the
        outbox retries, from the last line a PONG confirmed. A 401 (no such nick) fails a private reply
        for good. A 404 for every line (cannot send to channel: the bot is banned or muted while still
        in it) leaves a channel's reply in the outbox, retried, as one the bot cannot join is. A 404 for
        some lines only (a channel mode or filter refusing what they hold) is logged, and the reply counts
        as delivered: sending it again would repeat the lines the channel got, and be refused again."""
        if sending is None:
            sending = self._track(target, 0, lines)
        try:
            self._checkpoint(conn, sending, lines)
            await self._confirmed(sending, target)
        finally:
            self._untrack(sending)
        refused = sending.refusals
        if not refused:
            return
        if private:
            raise DeliveryError(f"IRC: {target} is not on the server ({refused[0]}); the private reply was not "
                                "delivered", permanent=True)
        if len(refused) >= sending.end - sending.start:
            sending.again_from = sending.start  # none of them got through: all of them again
            raise DeliveryError(f"IRC: {target} refused the reply ({refused[0]}: the bot is banned or muted "
                                "there); it stays in the outbox and is tried again")
        log.warning("IRC: %s refused %d of the %d lines of a reply (%s); the others were delivered", target,
                    len(refused), sending.end - sending.start, refused[0])

    async def _confirmed(self, sending: _Confirming, target: str) -> None:
        """Wait until a PONG confirms every line of `sending`; each PONG (one per burst) restarts the wait."""
        while sending.confirmed < sending.end:
            if sending.lost:
                raise _lost(sending, target)
            sending.news.clear()
            try:
                async with asyncio.timeout(self.confirm_wait):
                    await sending.news.wait()
            except TimeoutError:
                raise DeliveryError(f"IRC: the server did not answer the PING after line {sending.end} to {target} "
                                    f"in {self.confirm_wait:g}s; lines {sending.confirmed + 1}-{sending.end} are "
                                    "sent again") from None

    async def _ensure_joined(self, channel: str) -> None:
        """Be in `channel` before writing to it: join it (with the key configured for it) and wait for our
        own JOIN. A reply written to a channel the bot is not in is dropped by the server, so when the
        JOIN does not come (banned, invite-only, a wrong key) the outbox keeps the reply and tries again."""
        name = channel.lower()
        if name in self.joined:
            return
        full = next((c for c in self.wanted if c.split(" ")[0].lower() == name), channel)
        self._join_refused.pop(name, None)  # an earlier refusal says nothing about this attempt
        self._want(full)
        try:
            async with asyncio.timeout(self.join_wait):
                while name not in self.joined and name not in self._join_refused:
                    await self._join_news.wait()
        except TimeoutError:
            pass
        if name not in self.joined:
            refused = self._join_refused.pop(name, "no JOIN came back")
            raise DeliveryError(f"IRC: not in {channel} and cannot join it now ({refused}); the reply waits "
                                f"for the bot to get back in")

    def _join_happened(self) -> None:
        news, self._join_news = self._join_news, asyncio.Event()
        news.set()

    def private_channel(self, user: str) -> str:
        """Where a private exchange with `user` happens: `nick~tag`, the channel of their private messages,
        which names them rather than the nick (`_recipient`)."""
        return f"{user}~{self._holder(user)}"

    def reaches(self, channel: str) -> bool:
        """Whether a private reply to `channel` (a `private_channel` given out) would reach the person it
        names now (`_recipient`), without giving out a tag. Not one given out before a restart: the chat
        side closes what it held there (`bot/chat/forms.py`), telling the nick when it writes again, as
        it cannot tell whether the same person holds it."""
        try:
            self._recipient(channel)
        except DeliveryError:
            return False
        return True

    async def _wait_registered(self) -> None:
        if self.registered.is_set():
            return
        try:
            async with asyncio.timeout(self.send_wait):
                await self.registered.wait()
        except TimeoutError:
            raise DeliveryError(f"IRC: not connected to {self.settings.server}:{self.settings.port}") from None

    def _want(self, channel: str) -> None:
        """Join a channel a reply goes to (a notification route may name one not configured)."""
        if channel.split(" ")[0].lower() not in (c.split(" ")[0].lower() for c in self.wanted):
            self.wanted.append(channel)
        self._join(channel)

    def _join(self, channel: str) -> None:
        conn = self._conn
        if conn is None or not self.registered.is_set():
            return
        name, _, key = channel.partition(" ")
        self._rejoin.setdefault(name.lower(), (time.monotonic() + self.rejoin_retry, self.rejoin_retry * 2))
        with contextlib.suppress(irc.client.ServerNotConnectedError):
            conn.join(name, key)

    # -- events from the irc library ------------------------------------------------------------
    def _on_transport(self, protocol: Any, transport: Any) -> None:
        """Called by the library before PASS/NICK/USER: ask for SASL first, so registration waits for it."""
        if self.settings.sasl_username and self._conn is not None:
            self._conn.send_raw("CAP REQ :sasl")

    def _on_event(self, conn: Any, event: irc.client.Event) -> None:
        if conn is not self._conn:
            return
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is None:
            return
        try:
            handler(conn, event)
        except Exception:  # one odd line must never take the connection down
            log.exception("IRC: handling %s from the server failed", event.type)

    def _on_welcome(self, conn: Any, event: Any) -> None:
        self.registered.set()
        self._registered_at = time.monotonic()
        self.connections += 1
        self.joined.clear()
        log.info("IRC: connected to %s:%d as %s", self.settings.server, self.settings.port, conn.real_nickname)
        if not self.wanted:
            self._joined_all.set()
        for channel in self.wanted:
            self._join(channel)

    def _on_disconnect(self, conn: Any, event: Any) -> None:
        self.registered.clear()
        self.joined.clear()
        self._lost.set()
        self._join_happened()
        for sending in self._sending:  # what the server had not confirmed reading may be lost with it
            sending.lost = True
            sending.news.set()

    def _fallback_nick(self, conn: Any, event: Any) -> None:
        if self.registered.is_set():
            return  # a regain attempt: keep the nick we have
        self._fallbacks += 1
        self._last_regain = time.monotonic()  # it was taken just now: no point asking again at once
        candidate = self.settings.nick + "_" * self._fallbacks
        log.warning("IRC: nick %s is taken; trying %s", event.arguments[0] if event.arguments else "?", candidate)
        conn.nick(candidate)

    _on_nicknameinuse = _fallback_nick
    _on_unavailresource = _fallback_nick
    _on_nickcollision = _fallback_nick

    def _on_erroneusnickname(self, conn: Any, event: Any) -> None:
        log.error("IRC: the server refuses the nick %s: %s", self.settings.nick, " ".join(event.arguments))
        if not self.registered.is_set() and self._fallbacks < 3:
            self._fallbacks += 1
            conn.nick(f"squall{random.randint(100, 999)}")

    def _regain_if_freed(self, conn: Any, event: Any) -> None:
        """Someone holding our configured nick quit or changed nick (seen in a shared channel): take it now."""
        wanted = self.settings.nick
        if (self.registered.is_set() and event.source and event.source.nick.lower() == wanted.lower()
                and conn.real_nickname.lower() != wanted.lower()):
            self._last_regain = time.monotonic()
            conn.nick(wanted)

    def _on_ison(self, conn: Any, event: Any) -> None:
        """RPL_ISON: those of the nicks asked about that are online. Ours not among them: take it (asking
        first rather than sending NICK blindly spares the server a refused rename every interval)."""
        wanted = self.settings.nick
        online = {nick.lower() for words in event.arguments for nick in words.split()}
        if (self.registered.is_set() and conn.real_nickname.lower() != wanted.lower()
                and wanted.lower() not in online):
            self._last_regain = time.monotonic()
            conn.nick(wanted)

    def _on_unknowncommand(self, conn: Any, event: Any) -> None:
        """421 for ISON: a server without it; the periodic check sends NICK itself (a 433 keeps our nick)."""
        if event.arguments and event.arguments[0].upper() == "ISON":
            self._ison = False
            conn.nick(self.settings.nick)

    def _on_quit(self, conn: Any, event: Any) -> None:
        if event.source and event.source.nick.lower() != conn.real_nickname.lower():
            nick = event.source.nick
            self._remember(self._quit, nick.lower(), None)
            tag = self._holders.pop(nick.lower(), None)
            if tag is not None:
                self._remember(self._moved, tag, None)
            self._queue.put_nowait(_Gone(nick))
        self._regain_if_freed(conn, event)

    def _on_nick(self, conn: Any, event: Any) -> None:
        if event.source and event.source.nick != conn.real_nickname:
            old, new = event.source.nick, event.target
            if new and new.lower() != conn.real_nickname.lower() and old.lower() != new.lower():
                self._remember(self._renamed, old.lower(), new)
                self._renamed_person(old, new)
            self._regain_if_freed(conn, event)

    def _renamed_person(self, old: str, new: str) -> None:
        """`old` is now `new`: their private replies follow them under a new tag (whoever takes `old` next
        is someone else), an earlier holder of `new` (gone unseen) is forgotten, and the chat side closes
        what it held for either name (`on_gone`)."""
        tag = self._holders.pop(old.lower(), None)
        self._holders.pop(new.lower(), None)
        if tag is not None:
            self._remember(self._moved, tag, (new, self._holder(new)))
        self._queue.put_nowait(_Gone(old))
        self._queue.put_nowait(_Gone(new))

    def _on_join(self, conn: Any, event: Any) -> None:
        if event.source.nick == conn.real_nickname:
            self.joined.add(event.target.lower())
            self._join_happened()
            self._rejoin.pop(event.target.lower(), None)  # in: the next loss starts the waits afresh
            configured = {c.split(" ")[0].lower() for c in self.settings.channels}
            if configured <= self.joined:
                self._joined_all.set()

    def _on_part(self, conn: Any, event: Any) -> None:
        if event.source.nick == conn.real_nickname:
            self.joined.discard(event.target.lower())

    def _on_kick(self, conn: Any, event: Any) -> None:
        if event.arguments and event.arguments[0] == conn.real_nickname:
            channel = event.target
            self.joined.discard(channel.lower())
            log.warning("IRC: kicked from %s by %s; rejoining", channel, event.source.nick)
            full = next((c for c in self.wanted if c.split(" ")[0].lower() == channel.lower()), channel)
            asyncio.get_running_loop().call_later(self.rejoin_delay, self._join, full)

    def _on_pubmsg(self, conn: Any, event: Any) -> None:
        self._received(conn, event, direct=False)

    def _on_privmsg(self, conn: Any, event: Any) -> None:
        self._received(conn, event, direct=True)

    def _received(self, conn: Any, event: Any, direct: bool) -> None:
        sender = event.source.nick if event.source else None
        if not sender or sender == conn.real_nickname or not event.arguments:
            return
        # Replies to the bare nick (a route naming it) are for whoever writes as it now; a private
        # message's own replies are for its sender, whoever holds the nick later (`private_channel`).
        self._renamed.pop(sender.lower(), None)
        self._quit.pop(sender.lower(), None)
        text = event.arguments[0]
        addressed = re.match(rf"^@?{re.escape(conn.real_nickname)}\s*[:,]\s*", text, re.IGNORECASE)
        if addressed:
            text = text[addressed.end():]
        self._queue.put_nowait(Message(
            adapter=self.name, channel=self.private_channel(sender) if direct else event.target, user=sender,
            text=text,
            mentioned=bool(addressed), direct=direct, id=f"i{next(self._ids)}",
            raw={"source": str(event.source), "target": event.target, "text": event.arguments[0]}))

    # registration: SASL PLAIN (IRCv3), and what the server says when it refuses us
    def _on_cap(self, conn: Any, event: Any) -> None:
        sub = event.arguments[0].upper() if event.arguments else ""
        caps = event.arguments[1].split() if len(event.arguments) > 1 else []
        if sub == "ACK" and "sasl" in (c.lower() for c in caps):
            conn.send_raw("AUTHENTICATE PLAIN")
        elif sub == "NAK":
            log.error("IRC: %s:%d does not offer SASL; continuing without logging in as %s", self.settings.server,
                      self.settings.port, self.settings.sasl_username)
            conn.send_raw("CAP END")

    def _on_authenticate(self, conn: Any, event: Any) -> None:
        if event.target != "+" or not self.settings.sasl_username:
            return
        user, password = self.settings.sasl_username, self.settings.sasl_password or ""
        payload = base64.b64encode(f"{user}\0{user}\0{password}".encode()).decode()
        chunks = [payload[i:i + 400] for i in range(0, len(payload), 400)]
        for chunk in chunks:
            conn.send_raw(f"AUTHENTICATE {chunk}")
        if len(chunks[-1]) == 400:
            conn.send_raw("AUTHENTICATE +")

    def _on_saslsuccess(self, conn: Any, event: Any) -> None:
        log.info("IRC: logged in with SASL as %s", self.settings.sasl_username)
        conn.send_raw("CAP END")

    def _sasl_failed(self, conn: Any, event: Any) -> None:
        log.error("IRC: SASL login as %s failed (%s); continuing without it", self.settings.sasl_username,
                  event.arguments[-1] if event.arguments else event.type)
        conn.send_raw("CAP END")

    _on_saslfail = _sasl_failed
    _on_sasltoolong = _sasl_failed
    _on_saslaborted = _sasl_failed
    _on_saslalready = _on_saslsuccess

    def _on_passwdmismatch(self, conn: Any, event: Any) -> None:
        log.error("IRC: %s:%d refused the server password (adapters.irc.password)", self.settings.server,
                  self.settings.port)

    def _on_error(self, conn: Any, event: Any) -> None:
        # After `stop()`'s QUIT the server's ERROR is its goodbye (`_quit_and_wait`), nothing to warn of.
        (log.debug if self._stopping else log.warning)("IRC: the server closes the connection: %s", event.target)

    def _warn(self, conn: Any, event: Any) -> None:
        log.warning("IRC: %s %s: %s", event.type, event.arguments[0] if event.arguments else "",
                    event.arguments[-1] if len(event.arguments) > 1 else "")

    def _join_refusal(self, conn: Any, event: Any) -> None:
        """A JOIN refused (banned, invite-only, a wrong key, full): a `send()` waiting for it stops waiting."""
        self._warn(conn, event)
        if event.arguments:
            self._join_refused[event.arguments[0].lower()] = f"{event.type}: {event.arguments[-1]}"
            self._join_happened()

    def _on_refused(self, conn: Any, event: Any) -> None:
        """401 (a private reply's nick is not on the server) and 404 (a channel refused a line of the bot's):
        counted against the reply being sent to that target (`_confirm`)."""
        self._warn(conn, event)
        name = event.arguments[0].lower() if event.arguments else ""
        for sending in self._sending:
            if sending.target == name and sending.confirmed < sending.end:
                sending.refusals.append(event.arguments[-1] if len(event.arguments) > 1 else event.type)

    def _on_pong(self, conn: Any, event: Any) -> None:
        """The server read every line written before the PING: those of its reply are confirmed."""
        for word in (event.target, *event.arguments):
            entry = self._confirming.pop(str(word), None)
            if entry is not None:
                sending, upto = entry
                sending.confirmed = max(sending.confirmed, upto)
                sending.news.set()

    _on_nosuchnick = _on_refused
    _on_cannotsendtochan = _on_refused
    _on_nosuchchannel = _join_refusal
    _on_bannedfromchan = _join_refusal
    _on_inviteonlychan = _join_refusal
    _on_badchannelkey = _join_refusal
    _on_channelisfull = _join_refusal
    _on_yourebannedcreep = _warn


@dataclass
class _Confirming:
    """A reply being written and confirmed (`IrcAdapter.send`): where it goes (lower case), the lines this
    attempt writes (`start` to `end`), how many of them the server has confirmed reading (each PONG
    moves it on), its refusals (401/404) of them, and whether the connection was lost meanwhile."""

    target: str
    start: int
    end: int
    confirmed: int = -1
    refusals: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    news: asyncio.Event = field(default_factory=asyncio.Event)  # a PONG came, or the connection went
    lost: bool = False
    #: Where a retry starts when not after the confirmed lines (all of them refused: from the start).
    again_from: int | None = None

    def __post_init__(self) -> None:
        self.confirmed = max(self.confirmed, self.start)

    @property
    def resume(self) -> int:
        """The line a retry starts at: the first one the server did not confirm reading."""
        return self.confirmed if self.again_from is None else self.again_from


@dataclass(frozen=True)
class _Gone:
    """In the message queue: the person known as `user` left that nick (renamed away or quit)."""

    user: str


def _lost(sending: _Confirming, target: str) -> DeliveryError:
    return DeliveryError(f"IRC: disconnected before the server confirmed reading lines {sending.confirmed + 1}-"
                         f"{sending.end} to {target}; they are sent again")


def _describe(exc: BaseException) -> str:
    return str(exc) or exc.__class__.__name__


def create(section: dict[str, Any], config: Any) -> IrcAdapter:
    """`adapters.irc`: server, port, tls, nick, channels, password, sasl_username, sasl_password
    (plus tls_verify, username, realname, flood_burst, flood_interval, reconnect_max, max_result_lines); see
    docs/irc.md."""
    try:
        settings = IrcSettings.from_section(section)
    except IrcConfigError as exc:
        where = getattr(config, "path", None)
        raise AdapterConfigError(f"{where}: {exc}" if where else str(exc)) from None
    return IrcAdapter(settings)
