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
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Capabilities, DeliveryError, Message, Reply
from adapters.irc import IrcAdapter, IrcConfigError, IrcSettings, create, split_lines
from adapters.loopback import LoopbackAdapter
from adapters.slack_format import ATTACHED_TAIL
from bot.chat.replies import REPLY_LINE_BYTES, cap_result, fit
from tests.conftest import write
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


# -- a long result on IRC --------------------------------------------------------------------------
# IRC sends about two lines a second for the whole connection (`flood_burst`, `flood_interval`): a
# 300-line result held every channel for 147 s, a 10,000-line one for 83 min. A result (and `!execution`)
# is cut to `adapters.irc.max_result_lines` (20) lines there, ending with where the whole output is.

EXECUTION_ID = "0661ae3a1f769c0b1bd2d5c4"
LONG = "\n".join(f"line {n:04d} of the long output" for n in range(1, 301))


def test_max_result_lines_is_20_unless_set_and_checked() -> None:
    assert IrcSettings.from_section({"server": "irc.example.org"}).max_result_lines == 20
    assert IrcSettings.from_section({"server": "irc.example.org", "max_result_lines": 0}).max_result_lines == 0
    for bad in (-1, "many", True, 2.5):
        with pytest.raises(IrcConfigError, match=r"'adapters\.irc\.max_result_lines' must"):
            IrcSettings.from_section({"server": "irc.example.org", "max_result_lines": bad})


def _lines(parts: list[Reply]) -> list[str]:
    return "\n".join(part.text for part in parts).split("\n")


def test_a_300_line_result_fitted_for_irc_is_20_lines_and_where_to_read_the_rest() -> None:
    text, extra = cap_result(LONG, {"slack": {ATTACHED_TAIL: len(LONG)}}, 20, EXECUTION_ID)
    lines = _lines(fit(Reply(adapter="irc", channel="#ops", text=text, extra=extra), IrcAdapter.capabilities))
    assert lines[:20] == LONG.split("\n")[:20]
    assert len(lines) == 21
    assert lines[20] == (f"[280 of 300 lines left out here; the whole output is execution {EXECUTION_ID}: "
                         f"`squall execution get {EXECUTION_ID}`, or its page in the web UI]")
    assert extra == {}  # the pretext's length no longer fits the text


def test_a_short_result_and_no_cap_are_left_as_they_are() -> None:
    short_result = "\n".join(LONG.split("\n")[:20])
    assert cap_result(short_result, {}, 20, EXECUTION_ID) == (short_result, {})
    assert cap_result(LONG, {}, 0, EXECUTION_ID) == (LONG, {})


def test_a_line_irc_would_wrap_counts_as_the_lines_it_becomes() -> None:
    """One line of 100,000 characters is 250 IRC lines or more: a cap on newlines alone lets it through."""
    text, _ = cap_result("x" * 100_000, {}, 20, EXECUTION_ID)
    shown, trailer = text.rsplit("\n", 1)
    assert shown == "x" * (20 * REPLY_LINE_BYTES) + "…"
    assert trailer.startswith("[1 of 1 lines left out here (the first of them shown in part);")
    wide, _ = cap_result("é" * 300 + "\nend", {}, 2, EXECUTION_ID)  # 600 bytes: two IRC lines, then no room
    assert wide.split("\n")[0] == "é" * 300 and wide.split("\n")[1].startswith("[1 of 2 lines left out here;")


def _irc_lines(text: str) -> list[str]:
    """The PRIVMSG lines IRC sends for a reply of `text` (split to fit, then into lines)."""
    parts = fit(Reply(adapter="irc", channel="#ops", text=text), IrcAdapter.capabilities)
    return [line for part in parts for line in split_lines(part.text, REPLY_LINE_BYTES)]


def test_a_bare_carriage_return_is_the_line_break_irc_makes_of_it() -> None:
    """A progress meter's stdout (`0%\\r1%\\r…`) has no newline, but IRC breaks the line at every `\\r`:
    counted by newlines, 5,000 steps went out as 1,522 lines under a 20-line cap."""
    progress = "".join(f"{n}%\r" for n in range(5000))
    text, _ = cap_result(progress, {}, 20, EXECUTION_ID)
    sent = _irc_lines(text)
    assert sent[:20] == [f"{n}%" for n in range(20)]
    assert len(sent) == 21 and sent[20].startswith("[4980 of 5000 lines left out here;")
    crlf = "\r\n".join(f"row {n}" for n in range(30)) + "\r\n"  # `\\r\\n` is one break, not two
    text, _ = cap_result(crlf, {}, 20, EXECUTION_ID)
    assert _irc_lines(text)[19:] == ["row 19", text.rsplit("\n", 1)[1]]
    assert text.rsplit("\n", 1)[1].startswith("[10 of 30 lines left out here;")


def test_a_result_of_the_limit_with_newlines_around_it_is_left_as_it_is() -> None:
    """IRC drops the newlines around a text: 20 lines and a final newline are 20 lines, not 21."""
    lines = [f"l{n}" for n in range(20)]
    for text in ("\n".join(lines) + "\n", "\n".join(lines) + "\r\n", "\n\n" + "\n".join(lines) + "\n\n"):
        assert cap_result(text, {}, 20, EXECUTION_ID) == (text, {})
        assert _irc_lines(text) == lines
    over, _ = cap_result("\n".join([*lines, "l20"]) + "\n", {}, 20, EXECUTION_ID)
    assert over.split("\n")[:20] == lines and over.split("\n")[20].startswith("[1 of 21 lines left out here;")


def _chat_home(home: Path) -> None:
    from tests.test_chat import _config

    _config(home)


async def _irc_like_chat(home: Path, capabilities: Capabilities, max_result_lines: int | None) -> Any:
    """Squall on the chat tests' pack with a loopback chat that has `capabilities` (IRC's: no files)."""
    from bot.app import Squall
    from engine.config import load_config

    _chat_home(home)
    loopback = LoopbackAdapter("loopback", capabilities)
    if max_result_lines is not None:
        loopback.max_result_lines = max_result_lines  # type: ignore[attr-defined]
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    return squall, loopback


@pytest.mark.parametrize(("files", "max_result_lines", "cut"), [
    (False, 5, True),  # IRC
    (False, None, False),  # a platform without files that sets no cap (the console, Mattermost files: false)
    (True, 5, False),  # a platform with files attaches the whole output instead (Slack, Mattermost)
])
async def test_a_chat_result_and_execution_are_capped_where_files_cannot_carry_them(
        home: Path, files: bool, max_result_lines: int | None, cut: bool) -> None:
    from tests.test_chat import settle

    squall, loopback = await _irc_like_chat(home, Capabilities(files=files, max_length=1600), max_result_lines)
    try:
        await loopback.say("!greet x 12 times", channel="#ops")
        await settle(squall, squall.chat)
        [execution] = await squall.executions.list(action="demo.greet")
        await loopback.say(f"!execution {execution['id']}", channel="#ops")
        await settle(squall, squall.chat)
        ack, result, shown = (p for p in loopback.posted if p.reply.channel == "#ops")
        assert ack.text == "greeting x"  # acks as they were
        trailer = (f"[7 of 12 lines left out here; the whole output is execution {execution['id']}: "
                   f"`squall execution get {execution['id']}`, or its page in the web UI]")
        if cut:
            assert result.text.split("\n") == ["hello x"] * 5 + [trailer]
            assert shown.text.split("\n")[5:] == [trailer.replace("7 of 12", "10 of 15")]
        elif files:
            assert result.text == "hello x\n" * 11 + "hello x" and result.reply.file is None  # short: as it was
        else:
            assert result.text == "hello x\n" * 11 + "hello x"
            assert shown.text.count("hello x") == 12
    finally:
        await squall.chat.stop()
        await squall.close()


def _trailer(left: int, of: int, where: str, execution_id: str) -> str:
    return (f"[{left} of {of} lines left out here; {where} {execution_id}: `squall execution get {execution_id}`, "
            f"or its page in the web UI]")


@pytest.mark.parametrize(("files", "max_result_lines", "cut"), [
    (False, 5, True),  # IRC
    (False, None, False),  # a platform without files that sets no cap
    (True, 5, False),  # a platform with files attaches the whole text instead
])
async def test_post_result_post_message_and_notify_are_capped_as_a_result_is(
        home: Path, files: bool, max_result_lines: int | None, cut: bool) -> None:
    """`chatops.post_result` (the hubot rule's, a workflow's), `post_message` and a `notify` route's
    message cost every channel IRC's pace per line as a command's result does: the same cap, saying
    where the whole text is. The stream's announcement (hubot posts it on its own platform) stays whole."""
    from tests.test_chat import settle

    squall, loopback = await _irc_like_chat(home, Capabilities(files=files, max_length=1600), max_result_lines)
    try:
        await loopback.say("!greet x 12 times", channel="#ops")
        await settle(squall, squall.chat)
        [greeted] = await squall.executions.list(action="demo.greet")
        posted = await squall.executions.wait((await squall.executions.request("chatops.post_result", {
            "execution_id": greeted["id"], "adapter": "loopback", "channel": "#results"}))["id"])
        message = "\n".join(f"m{n}" for n in range(12))
        said = await squall.executions.wait((await squall.executions.request("chatops.post_message", {
            "message": message, "adapter": "loopback", "channel": "#said"}))["id"])
        who = "\r".join(f"w{n}" for n in range(12))  # a notify message of 12 IRC lines (`greeted w0`, `w1`…)
        noisy = await squall.executions.wait((await squall.executions.request("demo.greet", {"who": who}))["id"])
        await settle(squall, squall.chat)
        assert posted["status"] == said["status"] == noisy["status"] == "succeeded"
        assert posted["result"]["output"]["message"] == "hello x\n" * 11 + "hello x"  # for hubot: whole
        [result], [post] = loopback.texts("#results"), loopback.texts("#said")
        [_greeted_x, notice] = loopback.texts("#alerts")  # `!greet x`'s own notify, then this one's
        if cut:
            assert result.split("\n") == [*["hello x"] * 5, _trailer(7, 12, "the whole output is execution",
                                                                       greeted["id"])]
            assert post.split("\n") == [f"m{n}" for n in range(5)] + [
                _trailer(7, 12, "the whole message is a parameter of execution", said["id"])]
            assert notice.split("\n") == ["greeted w0", "w1", "w2", "w3", "w4",
                                          _trailer(7, 12, "the notification tells of execution", noisy["id"])]
        else:
            assert (result, post, notice) == ("hello x\n" * 11 + "hello x", message, f"greeted {who}")
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_a_long_result_reaches_an_ngircd_channel_cut_to_max_result_lines(home: Path, ircd: IrcServer) -> None:
    """End to end, at ngircd's pace (it reads about 3 lines a second: a few lines keep this test short)."""
    from bot.app import Squall
    from engine.config import load_config
    from tests.test_irc import _home, _section

    _home(home)
    pack = home / "packs" / "demo"
    write(pack / "actions" / "lines.yaml", """
        name: lines
        runner_type: local-shell-cmd
        parameters:
          n: {type: integer, required: true}
          cmd: {default: 'seq -f "line %04g of the long output" {{n}}', immutable: true}
    """)
    write(pack / "aliases" / "lines.yaml", """
        name: lines
        action_ref: demo.lines
        description: Long output.
        formats: ["lines {{n}}"]
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    config = load_config(home / "config.yml")
    squall = await Squall.start(config, adapters=[create(_section(ircd, max_result_lines=4), config)])
    await squall.chat.start()
    alice = await Person("alice").connect(ircd.port)
    try:
        await alice.join("#ops", wait_for="squall")
        mark = len(alice.lines)
        await alice.say("#ops", "!lines 300")  # 147 s of every channel's time, uncut
        await alice.wait_for(lambda words, raw: b"lines left out here" in raw, start=mark, timeout=30)
        said = alice.privmsgs("squall", "#ops", start=mark)
        [execution] = await squall.executions.list(action="demo.lines")
        assert said == [*LONG.split("\n")[:4],
                        f"[296 of 300 lines left out here; the whole output is execution {execution['id']}: "
                        f"`squall execution get {execution['id']}`, or its page in the web UI]"]
    finally:
        await alice.close()
        await squall.chat.stop()
        await squall.close()
