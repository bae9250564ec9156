"""What an IRC reply may carry and where it may go, against a real ngircd on loopback.

A reply is text from an action: it must not send CTCP (\\x01) in the bot's name nor fail to encode
(a lone surrogate); it must reach a channel the bot was kicked from (joining with the configured
key, and waiting for the JOIN) or stay in the outbox when the bot cannot get in; and a private
reply must follow its asker's nick change, never reaching whoever took the old nick, nor anyone
using the nick of an asker who quit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.base import DeliveryError, Message, Reply
from adapters.irc import IrcAdapter, IrcSettings, split_lines
from tests.ircd import IrcServer, Person
from tests.ircd import ircd as ircd_fixture

ircd = ircd_fixture


def test_split_lines_drops_ctcp_and_controls_but_keeps_formatting() -> None:
    lines = split_lines("disk ok \x01ACTION is pwned\x01\n\x01DCC SEND x 2130706433 1 1\x01\x07\x1b[2J", 400)
    assert lines == ["disk ok ACTION is pwned", "DCC SEND x 2130706433 1 1[2J"]
    formatting = "\x02bold\x02 \x034red\x03 \x0f\x16rev\x16 \x1dit\x1d \x1fun\x1f \x1estrike\x1e \x11mono\x11\ttab"
    assert split_lines(formatting, 400) == [formatting]


def test_split_lines_replaces_what_utf8_cannot_encode() -> None:
    """Half an emoji (a lone surrogate) from an action's result becomes `?` instead of failing the send."""
    assert split_lines("half an emoji: \ud83d, the rest \U0001f600", 400) == ["half an emoji: ?, the rest \U0001f600"]


async def _noop(message: Message) -> None:
    return None


@pytest.fixture
async def irc(ircd: IrcServer) -> AsyncIterator[tuple[IrcServer, Person, IrcAdapter, list[Message]]]:
    """alice, operator of #ops, #keyed (key `sekrit`) and #ban, and the adapter in all three."""
    got: list[Message] = []

    async def handler(message: Message) -> None:
        got.append(message)

    alice = await Person("alice").connect(ircd.port)
    await alice.join("#ops")
    await alice.join("#keyed")
    await alice.send("MODE #keyed +nk sekrit")  # +n: a PRIVMSG from outside is refused, not relayed
    await alice.join("#ban")
    await alice.send("MODE #ban +n")
    adapter = IrcAdapter(IrcSettings.from_section({
        "server": "127.0.0.1", "port": ircd.port, "nick": "squall", "channels": ["#ops", "#keyed sekrit", "#ban"],
        "flood_interval": 0.05}))
    adapter.rejoin_delay = 3600.0  # no rejoin after a kick by itself: the reply's send must get back in
    await adapter.start(handler)
    try:
        for channel in ("#ops", "#keyed", "#ban"):
            await alice.wait_member(channel, "squall")
        yield ircd, alice, adapter, got
    finally:
        await alice.close()
        await adapter.stop()


async def _kicked(alice: Person, adapter: IrcAdapter, channel: str) -> None:
    """Kick the bot from `channel`, with its own rejoins put off for an hour (the reply comes first)."""
    adapter._rejoin[channel] = (time.monotonic() + 3600, 3600.0)
    mark = len(alice.lines)
    await alice.send(f"KICK {channel} squall :out")
    await alice.wait_for(lambda words, raw: words[1] == "KICK", start=mark)
    for _ in range(200):
        if channel not in adapter.joined:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the adapter never saw its kick from {channel}")


async def _synced(alice: Person, got: list[Message]) -> None:
    """Wait until the bot has read everything the server sent it before now: alice says something in
    #ops and the adapter hands it on (the server relays in order, so a NICK or QUIT came first)."""
    token = f"sync {len(got)}"
    await alice.say("#ops", token)
    for _ in range(400):
        if any(message.text == token for message in got):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the adapter never received alice's message in #ops")


async def test_control_bytes_and_a_lone_surrogate_do_not_reach_the_channel(irc: Any) -> None:
    _, alice, adapter, _ = irc
    mark = len(alice.lines)
    await adapter.send(Reply(adapter="irc", channel="#ops", text="\x01ACTION is pwned\x01 half \ud83d"))
    assert await alice.wait_privmsgs("squall", 1, "#ops", start=mark) == ["ACTION is pwned half ?"]
    assert not any(b"\x01" in raw for raw in alice.lines[mark:])


async def test_a_reply_to_a_keyed_channel_after_a_kick_rejoins_with_the_key(irc: Any) -> None:
    """Kicked from #keyed, the bot gets a reply for it: it joins with the configured key, waits for the
    JOIN, and only then writes the reply (a PRIVMSG from outside a +n channel would be dropped)."""
    _, alice, adapter, _ = irc
    await _kicked(alice, adapter, "#keyed")
    mark = len(alice.lines)
    await adapter.send(Reply(adapter="irc", channel="#keyed", text="RESULT-KEYED"))
    assert await alice.wait_privmsgs("squall", 1, "#keyed", start=mark) == ["RESULT-KEYED"]
    assert "#keyed" in adapter.joined


@pytest.mark.parametrize("kicked", [True, False], ids=["kick-banned", "banned-while-in"])
async def test_a_reply_to_a_channel_that_bans_the_bot_stays_in_the_outbox(irc: Any, kicked: bool) -> None:
    """Banned from #ban, the bot cannot speak there: kick-banned, it cannot get back in; banned while
    still in it, the server refuses its lines with a 404 after they are written (the reply was lost,
    marked sent). Either way the reply is not reported sent but refused for now (not permanently), so
    the outbox keeps it; once the ban is lifted, it is delivered."""
    _, alice, adapter, _ = irc
    mark = len(alice.lines)
    await alice.send("MODE #ban +b squall!*@*")
    await alice.wait_for(lambda words, raw: words[1] == "MODE" and "+b" in words, start=mark)
    if kicked:
        await _kicked(alice, adapter, "#ban")
    assert ("#ban" in adapter.joined) is not kicked
    with pytest.raises(DeliveryError, match="#ban") as refused:
        await adapter.send(Reply(adapter="irc", channel="#ban", text="RESULT-BANNED"))
    assert not refused.value.permanent
    mark = len(alice.lines)
    await alice.send("MODE #ban -b squall!*@*")
    await alice.wait_for(lambda words, raw: words[1] == "MODE" and "-b" in words, start=mark)
    await adapter.send(Reply(adapter="irc", channel="#ban", text="RESULT-BANNED"))
    assert await alice.wait_privmsgs("squall", 1, "#ban", start=mark) == ["RESULT-BANNED"]


async def test_a_private_reply_follows_its_asker_to_a_new_nick(irc: Any) -> None:
    """alice asks privately, then changes nick (seen in #ops); someone else takes `alice`: the result
    goes to alice under her new nick, never to the new holder of the old one."""
    server, alice, adapter, got = irc
    await alice.say("squall", "secret show db_password")
    for _ in range(400):
        if got:
            break
        await asyncio.sleep(0.05)
    asker = adapter.private_channel(got[0].user)
    mark = len(alice.lines)
    await alice.send("NICK alice_away")
    await alice.wait_for(lambda words, raw: words[1] == "NICK", start=mark)
    await _synced(alice, got)
    mallory = await Person("alice").connect(server.port)
    try:
        await adapter.send(Reply(adapter="irc", channel=asker, text="db_password=hunter2"))
        assert await alice.wait_privmsgs("squall", 1, "alice_away", start=mark) == ["db_password=hunter2"]
        await mallory.join("#ops")  # once mallory is answered by the server here, a leak would have shown
        assert not any(b"hunter2" in raw for raw in mallory.lines)
    finally:
        await mallory.close()


async def test_a_private_reply_to_an_asker_who_quit_is_not_sent_to_a_stranger(irc: Any) -> None:
    server, alice, adapter, got = irc
    bob = await Person("bob").connect(server.port)
    await bob.join("#ops")
    mark = len(alice.lines)
    await bob.close()  # QUIT, seen by the bot in #ops
    await alice.wait_for(lambda words, raw: words[1] == "QUIT", start=mark)
    await _synced(alice, got)
    stranger = await Person("bob").connect(server.port)
    try:
        with pytest.raises(DeliveryError, match="bob") as refused:
            await adapter.send(Reply(adapter="irc", channel="bob", text="bob's secret"))
        assert refused.value.permanent
        await stranger.join("#ops")
        assert not any(b"secret" in raw for raw in stranger.lines)
    finally:
        await stranger.close()


async def test_a_private_reply_to_a_nick_not_on_the_server_is_not_delivered(irc: Any) -> None:
    """The server answers 401 (no such nick): the reply is failed, not reported sent."""
    _, _, adapter, _ = irc
    with pytest.raises(DeliveryError, match="nobody") as refused:
        await adapter.send(Reply(adapter="irc", channel="nobody", text="for nobody"))
    assert refused.value.permanent


@pytest.mark.parametrize(("refused", "outcome"), [(0, "sent"), (1, "sent"), (3, "kept")])
async def test_a_channel_reply_is_kept_only_when_every_line_was_refused(refused: int, outcome: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A 404 may refuse one line (a channel mode or filter on what it holds) while the others get
    through: retrying the whole reply re-posted the lines the channel had, again at every retry. Only a
    reply refused line for line (the bot banned or muted) stays in the outbox."""
    import irc.client

    adapter = IrcAdapter(IrcSettings.from_section({"server": "127.0.0.1", "port": 6667, "nick": "squall",
                                                   "channels": ["#ops"]}))
    loop = asyncio.get_running_loop()

    class Server:
        """Answers a PING as a server does: the refusals of the lines written before it, then the PONG."""

        def ping(self, token: str) -> None:
            for _ in range(refused):
                loop.call_soon(adapter._on_refused, self, irc.client.Event(
                    "cannotsendtochan", "server", "squall", ["#ops", "Cannot send to channel"]))
            loop.call_soon(adapter._on_pong, self, irc.client.Event("pong", "server", "server", [token]))

    if outcome == "sent":
        await adapter._confirm(Server(), "#ops", False, 3)
        assert ("refused 1 of the 3 lines" in caplog.text) == (refused == 1)
    else:
        with pytest.raises(DeliveryError, match="banned or muted") as kept:
            await adapter._confirm(Server(), "#ops", False, 3)
        assert not kept.value.permanent
    assert adapter._confirming == {}
