"""An approval's requester and approvers are people told apart by the platform's user id where Mattermost
and Slack say it (`Message.user_id`), never only by the name they hold now: a name can be renamed away and
taken by someone else while the request waits. So an approver renamed between two clicks counts once, a
requester renamed since cannot approve their own request (`self_approval: false`), and whoever took the
requester's name cannot withdraw it, while the requester, renamed, still can. Each decision keeps the
decider's user id beside their name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.mattermost import MattermostAdapter
from bot.app import Squall
from tests.conftest import write
from tests.fake_mattermost import FakeMattermost
from tests.test_mattermost import _chat, replies_to


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, FakeMattermost, MattermostAdapter, dict[str, Any],
                                                  dict[str, Any]]]:
    """A Mattermost chat whose `guarded` (demo.greet) waits for 2 approvers from `approvers`, who are alice
    and ann named by their Mattermost user ids (so a rename keeps them approvers); carol, who is none,
    is also there: the last two values are ann and carol."""
    fake = FakeMattermost()
    ann, carol = fake.add_user("ann"), fake.add_user("carol")
    write(home / "packs" / "demo" / "aliases" / "guarded.yaml", """
        name: guarded
        action_ref: demo.greet
        formats: ["guarded {{who}}"]
        result: {format: "{{ execution.result.stdout }}"}
        approval: {groups: [approvers], count: 2}
    """)
    with (home / "config.yml").open("a") as config:
        config.write(f"auth:\n  groups:\n    approvers: ['mattermost:{fake.alice['id']}', 'mattermost:{ann['id']}']\n")
    await fake.start()
    try:
        squall, bot, adapter = await _chat(home, fake)
        try:
            yield squall, fake, adapter, ann, carol
        finally:
            await bot.stop()
            await squall.close()
    finally:
        await fake.stop()


async def _requested(squall: Squall, fake: FakeMattermost, user: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`user` types `guarded world`; back once its approvers are asked: the request's post and approval id."""
    post = await fake.say(user, fake.town_square, "@squallbot guarded world")
    await replies_to(fake, post, "is waiting for 2 approvals")
    [row] = await squall.db(squall.store.approvals_pending)
    return post, row["id"]


async def _rename(fake: FakeMattermost, adapter: MattermostAdapter, user: dict[str, Any], name: str) -> None:
    """The server renames `user` to `name`; back once the adapter names them so (it took `user_updated`)."""
    await fake.rename(user, name)

    async def named() -> None:
        while await adapter._username(user["id"]) != name:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(named(), 10)


async def _decide(fake: FakeMattermost, user: dict[str, Any], post: dict[str, Any], text: str) -> str:
    """`user` types `text` in the request's thread; the bot's next post there."""
    def thread() -> list[str]:
        return [p["message"] for p in fake.bot_posts(fake.town_square["id"]) if p["root_id"] == post["id"]]

    said = len(thread())
    await fake.say(user, fake.town_square, f"@squallbot {text}", root_id=post["id"])
    return (await fake.wait_for(lambda: thread()[said:]))[0]


async def test_an_approver_renamed_between_two_approvals_counts_once(chat) -> None:
    """ann approves carol's request, is renamed `ann.old`, and approves again: still one approver, so the
    command waits; alice's approval is the second, and the decisions name each by user id too."""
    squall, fake, adapter, ann, carol = chat
    post, approval_id = await _requested(squall, fake, carol)
    assert await _decide(fake, ann, post, f"approve {approval_id}") == f"ann approved {approval_id} (1 of 2)."
    await _rename(fake, adapter, ann, "ann.old")

    told = await _decide(fake, ann, post, f"approve {approval_id}")
    assert told == f"ann.old, you already decided {approval_id}; each approver counts once."
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["status"] == "pending" and len(row["decisions"]) == 1
    assert await squall.executions.list(action="demo.greet") == []

    await _decide(fake, fake.alice, post, f"approve {approval_id}")
    await replies_to(fake, post, "hello world")
    [execution] = await squall.executions.list(action="demo.greet")
    decisions = execution["context"]["approval"]["decisions"]
    assert [(d["user"], d["user_id"]) for d in decisions] == [("ann", ann["id"]), ("alice", fake.alice["id"])]


async def test_a_renamed_requester_cannot_approve_their_own_request(chat) -> None:
    """alice (an approver) asks, is renamed `alice.old`, and approves her own request: refused, as under
    her old name, since `self_approval` is false; ann's approval still counts."""
    squall, fake, adapter, ann, _carol = chat
    post, approval_id = await _requested(squall, fake, fake.alice)
    await _rename(fake, adapter, fake.alice, "alice.old")

    told = await _decide(fake, fake.alice, post, f"approve {approval_id}")
    assert told == f"alice.old, you asked for {approval_id}: someone else from approvers must approve it."
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["status"] == "pending" and row["decisions"] == []
    assert await _decide(fake, ann, post, f"approve {approval_id}") == f"ann approved {approval_id} (1 of 2)."


async def test_a_namesake_cannot_withdraw_a_request_and_the_renamed_requester_can(chat) -> None:
    """carol (no approver) asks; she is renamed `carol.old` and bob given `carol`. bob's deny is refused
    (he is no approver, and not the requester whose name he holds) and the request waits; carol's, as
    `carol.old`, withdraws it."""
    squall, fake, adapter, _ann, carol = chat
    post, approval_id = await _requested(squall, fake, carol)
    await _rename(fake, adapter, carol, "carol.old")
    await _rename(fake, adapter, fake.bob, "carol")

    told = await _decide(fake, fake.bob, post, f"deny {approval_id} not needed")
    assert told == f"Sorry carol, only approvers may decide {approval_id}."
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["status"] == "pending" and row["decisions"] == []

    told = await _decide(fake, carol, post, f"deny {approval_id} changed my mind")
    assert told == f"Approval {approval_id} was denied by carol.old: changed my mind. Not running demo.greet."
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["status"] == "denied"
    assert [(d["user"], d["user_id"]) for d in row["decisions"]] == [("carol.old", carol["id"])]
    assert await squall.executions.list(action="demo.greet") == []
