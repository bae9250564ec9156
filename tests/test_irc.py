"""The IRC adapter against a real ngircd on loopback, with a raw-socket client playing the person.

Unit tests cover line splitting, the flood-control bucket and the settings; the rest drive a real
server: a `!` command, `squall:` addressing, private messages, a nick collision, a long multi-line
UTF-8 reply, a kick, a server password, SASL, TLS, a server restart (also just after a reply: no line
lost), private replies and forms after their person renamed or quit, and `squall serve` itself.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import irc.client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.base import AdapterConfigError, DeliveryError, Message, Reply
from adapters.irc import (
    _CONTROLS,
    IrcAdapter,
    IrcConfigError,
    IrcSettings,
    TokenBucket,
    create,
    line_budget,
    split_lines,
)
from bot.app import Squall
from bot.chat import sessions
from bot.chat.bot import ChatBot
from engine.config import load_config
from tests.conftest import free_port, server_missing, write
from tests.ircd import IrcServer, NgircdUnavailable, Person, running_ngircd
from tests.ircd import ircd as ircd_fixture
from tests.test_cli import SQUALL

ircd = ircd_fixture  # the fixture from tests/ircd.py, by the name tests ask for

LONG_LINE = "é" * 300


def _home(home: Path, extra: str = "") -> None:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        routes:
          ops: {{adapter: irc, channel: "#ops"}}
        {extra}
    """)
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "big.yaml", """
        name: big
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: 'for i in 1 2 3; do printf "é%.0s" $(seq 300); echo; done; echo "done ✓"', immutable: true}
        notify:
          on-success:
            message: "big finished"
            routes: [ops]
    """)
    write(pack / "aliases" / "big.yaml", """
        name: big
        action_ref: demo.big
        description: Print a lot of accented text.
        formats: ["big"]
        ack: {enabled: false}
        result:
          format: "{{ execution.result.stdout }}"
    """)


def _section(server: IrcServer, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "server": "127.0.0.1", "port": server.port, "nick": "squall", "channels": ["#ops"],
            "flood_interval": 0.05, "reconnect_max": 1, **extra}


async def _start(home: Path, section: dict[str, Any]) -> tuple[Squall, ChatBot, IrcAdapter]:
    _home(home)
    config = load_config(home / "config.yml")
    adapter = create(section, config)
    squall = await Squall.start(config, adapters=[adapter])
    adapter.reconnect_min = 0.2
    bot = squall.chat
    await bot.start()
    return squall, bot, adapter


@pytest.fixture
async def chat(home: Path, ircd: IrcServer) -> AsyncIterator[tuple[IrcServer, IrcAdapter, Person]]:
    squall, bot, adapter = await _start(home, _section(ircd))
    alice = await Person("alice").connect(ircd.port)
    try:
        await alice.join("#ops", wait_for="squall")
        yield ircd, adapter, alice
    finally:
        await alice.close()
        await bot.stop()
        await squall.close()


# -- lines, pacing, settings -----------------------------------------------------------------------

def test_budget_leaves_room_for_the_relay_prefix() -> None:
    budget = line_budget("squall", "#ops")
    prefix = f":squall!{'u' * 11}@{'h' * 63} PRIVMSG #ops :"
    assert budget == 512 - len(prefix) - 2
    assert line_budget("squall", "#a-much-longer-channel-name") < budget
    assert line_budget("squall", "#ops", "squall") == budget  # up to ten characters: the usual room
    # A longer user name (it defaults to the nick) takes its own room: the relayed line stays in 512 bytes.
    long_name = "squallchatopsbot"
    relayed = f":{long_name}!~{long_name}@{'h' * 63} PRIVMSG #ops :".encode()
    assert len(relayed) + line_budget(long_name, "#ops", long_name) + 2 <= 512


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=2000), st.integers(16, 450))
def test_split_lines_respects_bytes_and_utf8(text: str, budget: int) -> None:
    lines = split_lines(text, budget)
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x00" not in line
        assert 0 < len(line.encode()) <= budget  # encodes: no half characters anywhere
    # nothing but the whitespace at the cuts and line ends (and the control characters that are not
    # formatting codes) is lost or reordered
    kept = "".join(_CONTROLS.sub("", text.replace("\r", "\n")).split())
    assert "".join("".join(lines).split()) == kept


def test_split_lines_cuts_at_spaces_and_keeps_blank_inner_lines() -> None:
    assert split_lines("one\n\ntwo\n", 100) == ["one", " ", "two"]
    words = " ".join(["word"] * 40)  # 199 bytes
    lines = split_lines(words, 50)
    assert all(line.split() == ["word"] * len(line.split()) for line in lines)  # no word cut in half
    assert split_lines(LONG_LINE, 101) == ["é" * 50] * 6  # 101 bytes would cut an é: 100 are used
    assert split_lines("  \n \n", 100) == []


async def test_token_bucket_allows_a_burst_then_paces() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(burst=3, interval=0.5, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await bucket.take()
    assert slept == []
    await bucket.take()
    await bucket.take()
    assert slept == [pytest.approx(0.5), pytest.approx(0.5)]
    now[0] += 10  # a quiet spell refills the bucket, but only up to the burst
    for _ in range(3):
        await bucket.take()
    assert len(slept) == 2
    await bucket.take()
    assert len(slept) == 3


@pytest.mark.parametrize(("section", "message"), [
    ({}, "'adapters.irc.server' must be a host name"),
    ({"server": "irc.example.org", "port": "x"}, "'adapters.irc.port' must be a whole number"),
    ({"server": "irc.example.org", "port": 70000}, "'adapters.irc.port' must be from 1 to 65535"),
    ({"server": "irc.example.org", "nick": "9lives"}, "'adapters.irc.nick' must be an IRC nick"),
    ({"server": "irc.example.org", "channels": [None]}, "quote channel names"),
    # `channels: #ops` unquoted: YAML reads the # as a comment, leaving the key without a value
    ({"server": "irc.example.org", "channels": None}, "'adapters.irc.channels' is empty: quote channel names"),
    ({"server": "irc.example.org", "tls": "yes"}, "'adapters.irc.tls' must be true or false"),
    ({"server": "irc.example.org", "sasl_username": "bot"}, "'adapters.irc.sasl_password' is not"),
    ({"server": "irc.example.org", "chanels": ["#ops"]}, "did you mean 'adapters.irc.channels'"),
])
def test_bad_settings_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(IrcConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        IrcSettings.from_section(section, environ={})


def test_settings_defaults_channels_and_secrets_from_the_environment(config) -> None:
    env = {"IRC_PASSWORD": "server-secret", "IRC_SASL_PASSWORD": "sasl-secret"}
    parsed = IrcSettings.from_section({"server": "irc.example.org", "tls": True, "channels": ["ops", "#dev key"],
                                       "sasl_username": "squallbot"}, environ=env)
    assert (parsed.port, parsed.channels) == (6697, ("#ops", "#dev key"))
    assert IrcSettings.from_section({"server": "irc.example.org"}, environ={}).channels == ()  # private messages only
    assert IrcSettings.from_section({"server": "irc.example.org", "channels": []}, environ={}).channels == ()
    assert (parsed.password, parsed.sasl_password) == ("server-secret", "sasl-secret")
    assert "secret" not in repr(parsed)
    with pytest.raises(AdapterConfigError, match=r"adapters\.irc\.port"):
        create({"server": "x", "port": 0}, config)


# -- against ngircd --------------------------------------------------------------------------------

async def test_prefix_command_in_a_channel_gets_its_answer(chat) -> None:
    _, _, alice = chat
    mark = len(alice.lines)
    await alice.say("#ops", "!echo hello from irc")
    replies = await alice.wait_privmsgs("squall", 1, "#ops", start=mark)
    await alice.wait_for(lambda words, raw: b"hello from irc" in raw and words[1] == "PRIVMSG", start=mark)
    assert replies
    await alice.say("#ops", "just chatting, echo nothing")  # neither prefixed nor addressed: ignored
    await alice.say("#ops", "!echo second")
    await alice.wait_for(lambda words, raw: b"second" in raw and words[1] == "PRIVMSG", start=mark)
    assert not any("nothing" in text for text in alice.privmsgs("squall", start=mark))


async def test_addressing_by_nick_gets_help(chat) -> None:
    _, _, alice = chat
    mark = len(alice.lines)
    await alice.say("#ops", "squall: help")
    await alice.wait_for(lambda words, raw: b":built in: " in raw, start=mark)  # the built-ins' line comes last
    lines = [line.strip() for line in alice.privmsgs("squall", "#ops", start=mark)]  # help indents by pack
    assert "!echo {{message}} — Echo a message back." in lines
    assert "!big — Print a lot of accented text." in lines
    mark = len(alice.lines)
    await alice.say("#ops", "SQUALL, echo comma works")
    await alice.wait_for(lambda words, raw: b"comma works" in raw, start=mark)


async def test_private_message_is_answered_privately(chat) -> None:
    _, _, alice = chat
    bob = await Person("bob").connect(chat[0].port)
    try:
        await bob.join("#ops")
        mark, bob_mark = len(alice.lines), len(bob.lines)
        await alice.say("squall", "echo just between us")
        texts = await alice.wait_privmsgs("squall", 1, "alice", start=mark)
        await alice.wait_for(lambda words, raw: b"just between us" in raw and words[2] == "alice", start=mark)
        assert texts
        await alice.say("#ops", "!echo sync")  # once this is answered in the channel, any leak would have shown
        await bob.wait_for(lambda words, raw: b"sync" in raw, start=bob_mark)
        assert not any("between us" in text for text in bob.privmsgs("squall", start=bob_mark))
        assert not any("between us" in text for text in alice.privmsgs("squall", "#ops", start=mark))
    finally:
        await bob.close()


async def test_long_multiline_reply_is_split_into_valid_lines(chat) -> None:
    _, _, alice = chat
    mark = len(alice.lines)
    await alice.say("#ops", "!big")
    await alice.wait_for(lambda words, raw: "done ✓".encode() in raw, start=mark, timeout=30)
    raw_lines = [raw for raw in alice.lines[mark:] if b" PRIVMSG #ops :" in raw and raw.startswith(b":squall!")]
    assert all(len(raw) <= 512 for raw in raw_lines), [len(raw) for raw in raw_lines]
    texts = [text for text in alice.privmsgs("squall", "#ops", start=mark)  # strict UTF-8: a split é raises
             if text != "big finished"]  # the action's notify route, also to #ops
    assert len(texts) >= 7  # three 600-byte lines cannot fit one IRC line each
    assert "".join(texts[:-1]) == LONG_LINE * 3
    assert texts[-1] == "done ✓"


async def test_nick_collision_falls_back_and_takes_the_nick_back(home: Path, ircd: IrcServer) -> None:
    squatter = await Person("squall").connect(ircd.port)
    await squatter.join("#ops")
    alice = await Person("alice").connect(ircd.port)
    squall = bot = None
    try:
        squall, bot, adapter = await _start(home, _section(ircd))
        assert adapter.nick == "squall_"
        await alice.join("#ops", wait_for="squall_")
        mark = len(alice.lines)
        await alice.say("#ops", "squall_: echo fallback works")
        await alice.wait_for(lambda words, raw: b"fallback works" in raw and raw.startswith(b":squall_!"), start=mark)
        await squatter.close()  # the bot sees the QUIT in #ops and takes its nick back at once
        await alice.wait_for(lambda words, raw: words[1] == "NICK" and raw.startswith(b":squall_!"), start=mark)
        assert adapter.nick == "squall"
        mark = len(alice.lines)
        await alice.say("#ops", "squall: echo back to my name")
        await alice.wait_for(lambda words, raw: b"back to my name" in raw and raw.startswith(b":squall!"),
                             start=mark)
    finally:
        await alice.close()
        await squatter.close()
        if bot is not None:
            await bot.stop()
        if squall is not None:
            await squall.close()


async def test_a_fallback_nick_takes_the_configured_one_back_once_free_without_a_shared_channel(
        home: Path, ircd: IrcServer) -> None:
    """A `kill -9` and a restart at once: the server still holds the old connection, so the bot registers as
    `squall_`. Its holder shares no channel with the bot (no QUIT seen): the bot asks the server (ISON) every
    `regain_interval` whether `squall` is free, trying no rename the server refuses while it is held, and once
    the holder goes it becomes `squall` again, and `squall: ...` addresses it."""
    squatter = await Person("squall").connect(ircd.port)  # the old connection, in no channel of the bot's
    alice = await Person("alice").connect(ircd.port)
    squall = bot = None
    try:
        squall, bot, adapter = await _start(home, _section(ircd))
        assert adapter.nick == "squall_"
        answers: list[str] = []
        asked = asyncio.Event()

        def heard(conn: Any, event: irc.client.Event) -> None:
            answers.append(event.type)
            if answers.count("ison") >= 2:
                asked.set()

        assert adapter._reactor is not None
        for kind in ("ison", "nicknameinuse"):
            adapter._reactor.add_global_handler(kind, heard, 1)
        adapter.regain_interval = 0.2
        await asyncio.wait_for(asked.wait(), 20)
        assert "nicknameinuse" not in answers  # asked while held, never refused a NICK
        await alice.join("#ops", wait_for="squall_")
        mark = len(alice.lines)
        await squatter.close()
        await alice.wait_for(lambda words, raw: words[1] == "NICK" and raw.startswith(b":squall_!"), start=mark)
        assert adapter.nick == "squall"
        mark = len(alice.lines)
        await alice.say("#ops", "squall: echo my name is back")
        await alice.wait_for(lambda words, raw: b"my name is back" in raw and raw.startswith(b":squall!"),
                             start=mark)
    finally:
        await alice.close()
        await squatter.close()
        if bot is not None:
            await bot.stop()
        if squall is not None:
            await squall.close()


class _Renaming:
    """Stands in for the connection of a bot registered as `squall_`: records the NICKs it is asked to send."""

    real_nickname = "squall_"

    def __init__(self) -> None:
        self.nicks: list[str] = []

    def nick(self, new: str) -> None:
        self.nicks.append(new)


def test_an_ison_answer_takes_the_nick_only_when_free_and_a_server_without_ison_gets_nick() -> None:
    """RPL_ISON lists the asked nicks that are online (in the server's case): listed, the bot waits; absent,
    it sends NICK. A server that answers ISON with 421 has the check send NICK itself, now and later."""
    adapter = IrcAdapter(IrcSettings.from_section({"server": "127.0.0.1", "nick": "squall"}, environ={}))
    conn = _Renaming()
    adapter.registered.set()
    adapter._on_ison(conn, irc.client.Event("ison", "server", "squall_", ["Squall"]))
    assert conn.nicks == []
    adapter._on_ison(conn, irc.client.Event("ison", "server", "squall_", [""]))
    assert conn.nicks == ["squall"]
    adapter._on_unknowncommand(conn, irc.client.Event("unknowncommand", "server", "squall_",
                                                      ["ISON", "Unknown command"]))
    assert conn.nicks == ["squall", "squall"] and not adapter._ison


async def test_kicked_bot_rejoins(home: Path, ircd: IrcServer) -> None:
    alice = await Person("alice").connect(ircd.port)
    await alice.join("#kick")  # first in: alice is the channel operator
    squall, bot, _ = await _start(home, _section(ircd, channels=["#ops", "#kick"]))
    try:
        await alice.wait_member("#kick", "squall")
        mark = len(alice.lines)
        await alice.send("KICK #kick squall :out")
        await alice.wait_for(lambda words, raw: words[1] == "JOIN" and raw.startswith(b":squall!"), start=mark)
        await alice.say("#kick", "!echo still here")
        await alice.wait_for(lambda words, raw: b"still here" in raw, start=mark)
    finally:
        await alice.close()
        await bot.stop()
        await squall.close()


async def test_a_kick_ban_is_outwaited_and_the_channel_rejoined_once_lifted(home: Path, ircd: IrcServer) -> None:
    """The rejoin a second after a kick-ban is refused (474). The bot tries again, waiting longer each
    time; once the ban is lifted it is back in the channel and answers there, with no reconnect."""
    alice = await Person("alice").connect(ircd.port)
    await alice.join("#kick")
    squall, bot, adapter = await _start(home, _section(ircd, channels=["#ops", "#kick"]))
    adapter.rejoin_retry = 1.0  # (30 s in service)
    try:
        await alice.wait_member("#kick", "squall")
        await alice.send("MODE #kick +b squall!*@*")
        mark = len(alice.lines)
        await alice.send("KICK #kick squall :kickban")
        await alice.wait_for(lambda words, raw: words[1] == "KICK", start=mark)
        await asyncio.sleep(3)  # the rejoin after 1 s and the next after 1 more are refused
        assert "#kick" not in adapter.joined and adapter.connections == 1
        mark = len(alice.lines)
        await alice.send("MODE #kick -b squall!*@*")
        await alice.wait_for(lambda words, raw: words[1] == "JOIN" and raw.startswith(b":squall!"), start=mark,
                             timeout=30)
        await alice.say("#kick", "!echo back again")
        await alice.wait_for(lambda words, raw: b"back again" in raw and raw.startswith(b":squall!"), start=mark)
        assert adapter.connections == 1  # rejoined on the same connection
    finally:
        await alice.close()
        await bot.stop()
        await squall.close()


async def test_server_restart_reconnects_rejoins_and_answers(chat) -> None:
    server, adapter, alice = chat
    await alice.close()
    server.stop()
    await asyncio.sleep(0.3)  # the bot notices and starts retrying against a closed port
    assert not adapter.registered.is_set()
    server.start()
    alice = Person("alice")
    await alice.connect(server.port)
    try:
        await alice.join("#ops", wait_for="squall")
        assert adapter.connections == 2
        mark = len(alice.lines)
        await alice.say("#ops", "!echo after the restart")
        await alice.wait_for(lambda words, raw: b"after the restart" in raw and raw.startswith(b":squall!"),
                             start=mark)
    finally:
        await alice.close()


async def test_reply_while_disconnected_is_delivered_after_reconnect(chat) -> None:
    server, adapter, alice = chat
    await alice.close()
    server.stop()
    await asyncio.sleep(0.3)
    adapter.send_wait = 0.2
    with pytest.raises(Exception, match="not connected"):
        await adapter.send(Reply(adapter="irc", channel="#ops", text="queued"))
    server.start()
    alice = await Person("alice").connect(server.port)
    try:
        await alice.join("#ops", wait_for="squall")
        adapter.send_wait = 10
        await adapter.send(Reply(adapter="irc", channel="#ops", text="first\nsecond"))
        assert await alice.wait_privmsgs("squall", 2, "#ops") == ["first", "second"]
    finally:
        await alice.close()


async def _ignore(message: Any) -> None:
    return None


async def test_server_down_at_start_does_not_hold_up_squall(ircd: IrcServer) -> None:
    ircd.stop()
    adapter = IrcAdapter(IrcSettings.from_section(_section(ircd), environ={}))
    adapter.start_wait, adapter.reconnect_min = 0.3, 0.2
    await adapter.start(_ignore)  # returns although nothing is listening
    try:
        assert not adapter.registered.is_set()
        ircd.start()
        await asyncio.wait_for(adapter.registered.wait(), 20)
        assert adapter.nick == "squall"
    finally:
        await adapter.stop()


async def test_a_restart_registers_under_the_nick_the_stopped_connection_held(ircd: IrcServer) -> None:
    """A restart (`stop()`, then a new adapter at once) gets its own nick back, not `squall_`. ngircd reads a
    client's lines at a few a second, so the QUIT of a bot stopped amid a reply waits behind the reply's lines
    for seconds, and the nick with it: `stop()` returns once the server has read it and closed the connection.
    Under `squall_` the bot took its nick back only when it saw the old one quit in a channel it had joined by
    then, or `regain_interval` (30 s) later."""
    first = IrcAdapter(IrcSettings.from_section(_section(ircd), environ={}))
    second = IrcAdapter(IrcSettings.from_section(_section(ircd), environ={}))
    alice = await Person("alice").connect(ircd.port)
    try:
        await alice.join("#ops")
        await first.start(_ignore)
        assert first.nick == "squall"
        mark = len(alice.lines)
        # Long lines: ngircd reads more of a client's socket only once less than a line waits in its buffer,
        # so it sees the QUIT (and the closed socket) only after working through them, seconds later.
        text = "\n".join(f"line {n} {'x' * 380}" for n in range(8))
        sending = asyncio.create_task(first.send(Reply(adapter="irc", channel="#ops", text=text)))
        await alice.wait_for(lambda words, raw: b"line 0" in raw, start=mark)  # the rest wait at the server
        await first.stop()  # amid the reply, as the outbox sends when Squall stops
        await asyncio.gather(sending, return_exceptions=True)
        await second.start(_ignore)
        assert second.nick == "squall"
    finally:
        await alice.close()
        await first.stop()
        await second.stop()


async def test_wrong_server_password_is_reported_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    try:
        context = running_ngircd(password="right-pw-1")
        server = context.__enter__()
    except NgircdUnavailable as exc:
        server_missing(str(exc))
    caplog.set_level(logging.DEBUG)
    adapter = IrcAdapter(IrcSettings.from_section(_section(server, password="wrong-pw-2"), environ={}))
    adapter.start_wait = 1
    try:
        await adapter.start(_ignore)
        assert not adapter.registered.is_set()
        for _ in range(100):
            if "password" in caplog.text.lower():
                break
            await asyncio.sleep(0.05)
        assert "password" in caplog.text.lower()  # ngircd: "Access denied: Bad password?"
    finally:
        await adapter.stop()
        context.__exit__(None, None, None)
    assert "wrong-pw-2" not in caplog.text


async def test_notification_route_reaches_the_channel(chat) -> None:
    _, _, alice = chat
    mark = len(alice.lines)
    await alice.say("#ops", "!big")
    await alice.wait_for(lambda words, raw: b"big finished" in raw, start=mark, timeout=30)


async def test_server_password_is_sent_and_never_logged(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    try:
        context = running_ngircd(password="pw-s3cret-9")
        server = context.__enter__()
    except NgircdUnavailable as exc:
        server_missing(str(exc))
    caplog.set_level(logging.DEBUG)
    try:
        squall, bot, adapter = await _start(home, _section(server, password="pw-s3cret-9"))
        try:
            assert adapter.registered.is_set()
            alice = await Person("alice").connect(server.port, password="pw-s3cret-9")
            await alice.join("#ops", wait_for="squall")
            mark = len(alice.lines)
            await alice.say("#ops", "!echo with a password")
            await alice.wait_for(lambda words, raw: b"with a password" in raw, start=mark)
            await alice.close()
        finally:
            await bot.stop()
            await squall.close()
    finally:
        context.__exit__(None, None, None)
    assert "PASS ********" in caplog.text
    assert "pw-s3cret-9" not in caplog.text


async def test_sasl_refused_by_ngircd_still_connects(chat, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, _, alice = chat
    adapter = IrcAdapter(IrcSettings.from_section(_section(server, nick="saslbot", sasl_username="squallbot",
                                                           sasl_password="sasl-pw-1", channels=["#ops"]),
                                                  environ={}))
    seen: list[Any] = []

    async def collect(message: Any) -> None:
        seen.append(message)

    await adapter.start(collect)
    try:
        assert adapter.registered.is_set()  # ngircd has no SASL: it NAKs, and registration goes on
        assert "does not offer SASL" in caplog.text
        await alice.say("#ops", "saslbot: hi")
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen and seen[0].mentioned and seen[0].text == "hi" and seen[0].user == "alice"
    finally:
        await adapter.stop()
    assert "sasl-pw-1" not in caplog.text


async def test_sasl_plain_exchange(caplog: pytest.LogCaptureFixture) -> None:
    """ngircd (the only server CI installs) has no SASL, so this one scripted server speaks the IRCv3
    exchange: CAP REQ before NICK/USER, AUTHENTICATE PLAIN, the base64 payload, 903, CAP END."""
    caplog.set_level(logging.DEBUG)
    received: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        registered = False
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            received.append(line)
            if line == "CAP REQ :sasl":
                writer.write(b":irc.fake CAP * ACK :sasl\r\n")
            elif line == "AUTHENTICATE PLAIN":
                writer.write(b"AUTHENTICATE +\r\n")
            elif line.startswith("AUTHENTICATE "):
                writer.write(b":irc.fake 900 * squall squall!u@h squallbot :You are now logged in\r\n"
                             b":irc.fake 903 * :SASL authentication successful\r\n")
            elif line == "CAP END" and not registered:
                registered = True
                writer.write(b":irc.fake 001 squall :Welcome\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = IrcAdapter(IrcSettings.from_section({"server": "127.0.0.1", "port": port, "sasl_username": "squallbot",
                                                   "sasl_password": "sasl-pw-2"}, environ={}))

    async def ignore(message: Any) -> None:
        return None

    try:
        await adapter.start(ignore)
        assert adapter.registered.is_set()
    finally:
        await adapter.stop()
        server.close()
        await server.wait_closed()
    commands = [line.split(" ")[0] for line in received]
    assert commands.index("CAP") < commands.index("NICK")  # registration waits for SASL
    payload = next(line.split(" ", 1)[1] for line in received if line.startswith("AUTHENTICATE ")
                   and line != "AUTHENTICATE PLAIN")
    assert base64.b64decode(payload) == b"squallbot\0squallbot\0sasl-pw-2"
    assert received.index("CAP END") > received.index(f"AUTHENTICATE {payload}")
    assert "sasl-pw-2" not in caplog.text and payload not in caplog.text


async def test_tls(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    try:
        context = running_ngircd(tls=True)
        server = context.__enter__()
    except NgircdUnavailable as exc:
        server_missing(str(exc))
    try:
        assert server.tls_port is not None
        section = {**_section(server), "port": server.tls_port, "tls": True, "tls_verify": False}
        squall, bot, adapter = await _start(home, section)
        try:
            assert adapter.registered.is_set()
            alice = await Person("alice").connect(server.port)  # plain port, same network
            await alice.join("#ops", wait_for="squall")
            mark = len(alice.lines)
            await alice.say("#ops", "!echo over tls")
            await alice.wait_for(lambda words, raw: b"over tls" in raw, start=mark)
            await alice.close()
        finally:
            await bot.stop()
            await squall.close()
        # verification is on by default: a self-signed certificate is refused, and the adapter keeps trying
        strict = IrcAdapter(IrcSettings.from_section({"server": "127.0.0.1", "port": server.tls_port, "tls": True,
                                                      "nick": "strict"}, environ={}))
        strict.start_wait = 1

        async def ignore(message: Any) -> None:
            return None

        await strict.start(ignore)
        try:
            assert not strict.registered.is_set()
            assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        finally:
            await strict.stop()
    finally:
        context.__exit__(None, None, None)


# -- the real service --------------------------------------------------------------------------------

@pytest.mark.integration
async def test_squall_serve_answers_in_the_channel(home: Path, ircd: IrcServer) -> None:
    _home(home, f"""
        api:
          host: 127.0.0.1
          port: {free_port()}
        adapters:
          console: {{enabled: false}}
          irc:
            enabled: true
            server: 127.0.0.1
            port: {ircd.port}
            nick: squall
            channels: ["#ops"]
    """)
    server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                              env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    alice = Person("alice")
    try:
        await alice.connect(ircd.port)
        await alice.join("#ops", wait_for="squall")
        await alice.say("#ops", "!echo served over irc")
        await alice.wait_for(lambda words, raw: b"served over irc" in raw and raw.startswith(b":squall!"),
                             timeout=30)
    finally:
        await alice.close()
        server.send_signal(signal.SIGTERM)
        try:
            output = await asyncio.to_thread(server.communicate, timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()
    assert server.returncode == 0, output[0].decode(errors="replace")[-3000:]


async def test_run_form_asks_in_a_private_message_and_answers_in_the_channel(chat) -> None:
    """Chat forms on IRC (issue 20): the missing parameters are asked one by one in a private
    message; the result goes to the channel the form was asked for in."""
    _, _, alice = chat
    mark = len(alice.lines)
    await alice.say("#ops", "!run-form echo")
    await alice.wait_for(lambda words, raw: b"private message" in raw and words[2] == "#ops", start=mark)
    asked = await alice.wait_privmsgs("squall", 2, "alice", start=mark)  # the form's opening, then its question
    assert asked[0].startswith("Running squall.echo: 1 question(s)") and "message" in asked[1]
    mark = len(alice.lines)
    await alice.say("squall", "sent from a form")
    await alice.wait_for(lambda words, raw: b"sent from a form" in raw and words[2] == "#ops", start=mark)
    assert any("sent from a form" in text for text in alice.privmsgs("squall", "#ops", start=mark))
    assert not any("sent from a form" in text for text in alice.privmsgs("squall", "alice", start=mark))


# -- at least once: a server lost before it confirmed a reply's lines ---------------------------------

class _Server:
    """Stands in for the adapter's connection: records the lines written to it and answers each PING as
    `answers` says, in turn: `pong` (the server read everything before it), `lost` (the connection drops
    before the server reads it: nothing written after it is ever read, or answered) or `silent`."""

    real_nickname = "squall"

    def __init__(self, adapter: IrcAdapter, answers: list[str]) -> None:
        self.adapter = adapter
        self.answers = answers
        self.written: list[str] = []
        self.down = False

    def privmsg(self, target: str, text: str) -> None:
        self.written.append(text)

    def ping(self, token: str) -> None:
        answer = self.answers.pop(0) if self.answers else "pong"
        if self.down or answer == "silent":
            return
        loop = asyncio.get_running_loop()
        if answer == "lost":
            self.down = True
            loop.call_soon(self.adapter._on_disconnect, self, irc.client.Event("disconnect", "server", "", []))
        else:
            loop.call_soon(self.adapter._on_pong, self, irc.client.Event("pong", "server", "server", [token]))


def _online(answers: list[str]) -> tuple[IrcAdapter, _Server]:
    """An adapter registered and in #ops on a `_Server`, sending without pauses (bursts of 5 lines)."""
    adapter = IrcAdapter(IrcSettings.from_section({"server": "127.0.0.1", "nick": "squall", "channels": ["#ops"],
                                                   "flood_interval": 0}, environ={}))
    server = _Server(adapter, answers)
    adapter._conn = server  # type: ignore[assignment]
    adapter.registered.set()
    adapter.joined.add("#ops")
    return adapter, server


PARTS = [f"part-{i}" for i in range(1, 13)]
LINES = [f"line-{i}" for i in range(1, 21)]


async def test_a_reply_resumes_after_the_lines_the_server_confirmed_not_the_lines_written() -> None:
    """Twelve lines: a PING follows each burst of five. The first is answered; the connection drops
    before the second: lines 6-12 were written but never confirmed read (a restarting server loses
    what sits in its input buffer). The send fails for now, and its retry starts at line 6."""
    adapter, server = _online(["pong", "lost"])
    reply = Reply(adapter="irc", channel="#ops", text="\n".join(PARTS))
    with pytest.raises(DeliveryError, match="disconnected") as lost:
        await adapter.send(reply)
    assert not lost.value.permanent  # the outbox keeps it and tries again
    assert server.written == PARTS
    adapter.registered.set()  # reconnected
    adapter.joined.add("#ops")
    server.written.clear()
    server.down = False
    await adapter.send(reply)
    assert server.written == PARTS[5:]
    assert adapter._confirming == {} and adapter._partial == {}


async def test_a_reply_the_server_never_confirms_is_sent_again_from_the_last_confirmed_line() -> None:
    adapter, server = _online(["pong", "silent", "silent"])
    adapter.confirm_wait = 0.2
    reply = Reply(adapter="irc", channel="#ops", text="\n".join(PARTS))
    with pytest.raises(DeliveryError, match="did not answer") as unanswered:
        await adapter.send(reply)
    assert not unanswered.value.permanent
    server.written.clear()
    await adapter.send(reply)
    assert server.written == PARTS[5:]


async def test_a_server_restart_just_after_a_reply_loses_none_of_its_lines(home: Path, ircd: IrcServer) -> None:
    """The reviewer's case: a result written in one burst, the server stopped (SIGTERM) as its first line
    arrives and started again. ngircd reads about ten lines at once, then a few a second, so part of
    the reply is still in its input buffer when it dies. Every line arrives, before or after the
    restart (some twice at worst), and the outbox records the reply sent only then."""
    squall, bot, _ = await _start(home, _section(ircd, flood_burst=len(LINES)))
    alice = await Person("alice").connect(ircd.port)
    try:
        await alice.join("#ops", wait_for="squall")
        outbox_id = await bot.outbox.post(Reply(adapter="irc", channel="#ops", text="\n".join(LINES)))
        await alice.wait_for(lambda words, raw: b"line-1" in raw and words[1] == "PRIVMSG")
        await asyncio.to_thread(ircd.stop)
        await alice.wait_for(lambda words, raw: words[0] == "ERROR")  # the server's last line: all before it read
        before = alice.privmsgs("squall", "#ops")
        assert set(before) < set(LINES)  # ngircd reads about ten lines at once, then a few a second
        await alice.close()
        ircd.start()
        alice = await Person("alice").connect(ircd.port)
        await alice.join("#ops", wait_for="squall")
        await alice.wait_for(lambda words, raw: f"line-{len(LINES)}".encode() in raw and words[1] == "PRIVMSG",
                             timeout=30)
        assert set(LINES) <= set(before + alice.privmsgs("squall", "#ops"))
        await bot.outbox.drain(20)
        for _ in range(200):  # the mark is written in the background
            row = await squall.db(squall.store.outbox_get, outbox_id)
            if row["status"] != "pending":
                break
            await asyncio.sleep(0.05)
        assert row["status"] == "sent" and row["attempts"] > 1  # not marked sent by the attempt the restart cut
    finally:
        await alice.close()
        await bot.stop()
        await squall.close()


# -- a private reply is for the person who asked, not for whoever holds their nick later -------------

@pytest.fixture
async def watched(ircd: IrcServer) -> AsyncIterator[tuple[IrcServer, Person, IrcAdapter, list[Message]]]:
    """The adapter alone in #ops with alice, keeping every message it hands on."""
    got: list[Message] = []

    async def keep(message: Message) -> None:
        got.append(message)

    alice = await Person("alice").connect(ircd.port)
    await alice.join("#ops")
    adapter = IrcAdapter(IrcSettings.from_section(_section(ircd), environ={}))
    await adapter.start(keep)
    try:
        await alice.wait_member("#ops", "squall")
        yield ircd, alice, adapter, got
    finally:
        await alice.close()
        await adapter.stop()


async def _handed_on(got: list[Message], text: str) -> Message:
    """The message with `text` once the adapter has handed it on (everything the server sent before it,
    such as a NICK or a QUIT, was read first)."""
    for _ in range(400):
        found = [message for message in got if message.text == text]
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the adapter never handed on {text!r}")


async def test_a_private_reply_never_goes_to_whoever_took_the_askers_nick_and_spoke_first(watched) -> None:
    """alice asks privately and renames; a stranger takes `alice` and says something to the bot before the
    result is ready. The result goes to alice under her new nick: the stranger's message does not make
    the old nick's replies theirs."""
    server, alice, adapter, got = watched
    await alice.say("squall", "secret show db_password")
    asked = await _handed_on(got, "secret show db_password")
    mark = len(alice.lines)
    await alice.send("NICK alice2")
    await alice.wait_for(lambda words, raw: words[1] == "NICK", start=mark)
    mallory = await Person("alice").connect(server.port)
    try:
        await mallory.say("squall", "help")
        assert (await _handed_on(got, "help")).channel != asked.channel  # a different person: a different place
        await adapter.send(Reply(adapter="irc", channel=asked.channel, text="db_password=hunter2"))
        assert await alice.wait_privmsgs("squall", 1, "alice2", start=mark) == ["db_password=hunter2"]
        await mallory.join("#ops")  # once the server answers mallory here, a leak would have shown
        assert not any(b"hunter2" in raw for raw in mallory.lines)
    finally:
        await mallory.close()


async def test_a_private_reply_to_an_asker_who_quit_fails_though_the_nick_s_new_holder_spoke(watched) -> None:
    server, alice, adapter, got = watched
    bob = await Person("bob").connect(server.port)
    await bob.join("#ops")
    await bob.say("squall", "what is the root password")
    asked = await _handed_on(got, "what is the root password")
    mark = len(alice.lines)
    await bob.close()  # QUIT, seen by the bot in #ops
    await alice.wait_for(lambda words, raw: words[1] == "QUIT", start=mark)
    stranger = await Person("bob").connect(server.port)
    try:
        await stranger.say("squall", "hello")
        await _handed_on(got, "hello")
        with pytest.raises(DeliveryError, match="bob") as refused:
            await adapter.send(Reply(adapter="irc", channel=asked.channel, text="root password: hunter2"))
        assert refused.value.permanent
        await stranger.join("#ops")
        assert not any(b"hunter2" in raw for raw in stranger.lines)
    finally:
        await stranger.close()


def _seen(adapter: IrcAdapter, kind: str, source: str, target: str = "") -> None:
    """The adapter sees a NICK or QUIT in a channel it shares (`source` is `nick!user@host`)."""
    handler = adapter._on_nick if kind == "nick" else adapter._on_quit
    handler(_Server(adapter, []), irc.client.Event(kind, irc.client.NickMask(source), target, []))


def test_a_private_place_follows_its_person_and_fails_once_they_are_gone() -> None:
    """Where replies to a private message go, as renames and quits are seen: along the person's renames
    (back to the first nick too), never to a new holder of a nick the person left, never after the
    person quit, nor to a tag this process did not give out (one from before a restart)."""
    adapter, _ = _online([])
    alice = adapter.private_channel("alice")
    assert alice.startswith("alice~") and adapter.private_channel("alice") == alice  # the same person: the same place
    assert adapter._recipient(alice) == "alice"
    _seen(adapter, "nick", "alice!a@h", "alice2")
    assert adapter._recipient(alice) == "alice2"
    stranger = adapter.private_channel("alice")  # someone new takes `alice`
    assert stranger != alice and adapter._recipient(stranger) == "alice"
    _seen(adapter, "quit", "alice!m@h")  # the stranger leaves; alice takes her nick back
    _seen(adapter, "nick", "alice2!a@h", "alice")
    assert adapter._recipient(alice) == "alice"
    with pytest.raises(DeliveryError, match="quit") as quit_:
        adapter._recipient(stranger)
    assert quit_.value.permanent
    _seen(adapter, "quit", "alice!a@h")
    with pytest.raises(DeliveryError, match="quit"):
        adapter._recipient(alice)
    with pytest.raises(DeliveryError, match="restart") as unknown:
        adapter._recipient("carol~0badc0de")
    assert unknown.value.permanent
    assert adapter._recipient("carol") == "carol"  # a bare nick (a notification route): whoever holds it


async def test_a_form_asked_privately_is_closed_when_its_person_renames(home: Path, ircd: IrcServer) -> None:
    """alice's form asks in a private message; she renames. Her open exchange is closed (memory and the
    stored session), so a stranger who takes `alice` and answers runs nothing: they get the answer to
    an unknown command."""
    squall, bot, _ = await _start(home, _section(ircd))
    alice = await Person("alice").connect(ircd.port)
    mallory = Person("alice")
    try:
        await alice.join("#ops", wait_for="squall")
        mark = len(alice.lines)
        await alice.say("#ops", "!run-form echo")
        await alice.wait_privmsgs("squall", 2, "alice", start=mark)
        assert [key for key, _, _ in await sessions.stored(squall) if key.startswith("ask:")]
        mark = len(alice.lines)
        await alice.send("NICK alice_away")
        await alice.wait_for(lambda words, raw: words[1] == "NICK", start=mark)
        await mallory.connect(ircd.port)
        await mallory.say("squall", "answer-from-mallory")
        [said] = await mallory.wait_privmsgs("squall", 1, "alice")
        assert said.startswith("I don't know")
        assert await sessions.stored(squall) == []
        assert await squall.executions.list(limit=5) == []
        assert not any("answer-from-mallory" in text for text in alice.privmsgs("squall", "#ops", start=mark))
    finally:
        await mallory.close()
        await alice.close()
        await bot.stop()
        await squall.close()


async def _restarted(home: Path, ircd: IrcServer, squall: Squall, bot: ChatBot) -> tuple[Squall, ChatBot]:
    """Squall stopped and started again on the same home and server (a restart of `squall serve`)."""
    await bot.stop()
    await squall.close()
    squall, bot, _ = await _start(home, _section(ircd))
    return squall, bot


async def test_a_form_asked_privately_before_a_restart_is_closed_and_its_nick_told_not_run(home: Path,
                                                                                           ircd: IrcServer) -> None:
    """alice's form asks in a private message; Squall restarts, which forgets who held each nick, so her
    exchange cannot be taken up (whoever holds `alice` now may not be her). Her next private message is
    no answer and no command: it runs nothing (`ping` is an alias), and she is told the form was closed
    and how to open it again, once; after that her messages are commands as usual."""
    squall, bot, _ = await _start(home, _section(ircd))
    alice = await Person("alice").connect(ircd.port)
    try:
        await alice.join("#ops", wait_for="squall")
        mark = len(alice.lines)
        await alice.say("#ops", "!run-form echo")
        await alice.wait_privmsgs("squall", 2, "alice", start=mark)
        squall, bot = await _restarted(home, ircd, squall, bot)
        await alice.wait_member("#ops", "squall")
        assert [key for key, _, _ in await sessions.stored(squall) if key.startswith("ask:")]  # kept to tell her
        mark = len(alice.lines)
        await alice.say("squall", "ping")
        [said] = await alice.wait_privmsgs("squall", 1, "alice", start=mark)
        assert said.startswith("The form squall.echo asked here before Squall restarted was closed by the restart")
        assert "nothing was run. Send `!run-form squall.echo` to fill it in again." in said
        assert await squall.executions.list(limit=5) == []
        assert await sessions.stored(squall) == []
        mark = len(alice.lines)
        await alice.say("squall", "ping")  # told once: now it is the command it names
        assert await alice.wait_privmsgs("squall", 1, "alice", start=mark) == ["pong"]
    finally:
        await alice.close()
        await bot.stop()
        await squall.close()


async def test_a_form_closed_by_a_restart_is_told_to_nobody_once_its_nick_quit(home: Path, ircd: IrcServer) -> None:
    """The nick whose exchange a restart closed quits (seen in #ops): the stored exchange goes, and whoever
    takes the nick next hears nothing of it; their message is the command it names."""
    squall, bot, _ = await _start(home, _section(ircd))
    alice = await Person("alice").connect(ircd.port)
    bob = await Person("bob").connect(ircd.port)
    newcomer = Person("alice")
    try:
        await alice.join("#ops", wait_for="squall")
        await bob.join("#ops")
        mark = len(alice.lines)
        await alice.say("#ops", "!run-form echo")
        await alice.wait_privmsgs("squall", 2, "alice", start=mark)
        squall, bot = await _restarted(home, ircd, squall, bot)
        await alice.wait_member("#ops", "squall")
        mark = len(bob.lines)
        await alice.close()  # QUIT, seen by the bot in #ops
        await bob.wait_for(lambda words, raw: words[1] == "QUIT", start=mark)
        await newcomer.connect(ircd.port)
        await newcomer.say("squall", "ping")
        assert await newcomer.wait_privmsgs("squall", 1, "alice") == ["pong"]
        assert await sessions.stored(squall) == []
    finally:
        await newcomer.close()
        await bob.close()
        await alice.close()
        await bot.stop()
        await squall.close()


async def test_a_confirmation_asked_privately_before_a_restart_is_closed_and_its_nick_told(home: Path,
                                                                                         ircd: IrcServer) -> None:
    """A confirmation asked in a private message cannot be taken up after a restart either (the nick's
    holder cannot be told): alice's `yes` runs nothing and tells her the prompt was closed, once; then
    nothing waits for a `yes` there."""
    write(home / "packs" / "demo" / "aliases" / "shout.yaml", """
        name: shout
        action_ref: core.echo
        description: Echo, after a yes.
        formats: ["shout {{message}}"]
        confirm: true
    """)
    squall, bot, _ = await _start(home, _section(ircd))
    alice = await Person("alice").connect(ircd.port)
    try:
        await alice.join("#ops", wait_for="squall")
        mark = len(alice.lines)
        await alice.say("squall", "shout hi")
        [asked] = await alice.wait_privmsgs("squall", 1, "alice", start=mark)
        assert asked.startswith("About to run core.echo with message=hi.")
        squall, bot = await _restarted(home, ircd, squall, bot)
        await alice.wait_member("#ops", "squall")
        mark = len(alice.lines)
        await alice.say("squall", "yes")
        [said] = await alice.wait_privmsgs("squall", 1, "alice", start=mark)
        assert said.startswith("The prompt to run core.echo asked here before Squall restarted was closed by the "
                               "restart") and said.endswith("nothing was run. Send the command again.")
        assert await squall.executions.list(limit=5) == [] and await sessions.stored(squall) == []
        mark = len(alice.lines)
        await alice.say("squall", "yes")
        assert await alice.wait_privmsgs("squall", 1, "alice", start=mark) == ["Nothing is waiting for your yes here."]
    finally:
        await alice.close()
        await bot.stop()
        await squall.close()
