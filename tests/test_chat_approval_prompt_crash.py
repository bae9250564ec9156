"""An approval is held with its prompt to the approvers, or not at all.

The hold (a row in `approvals`, keyed by its post's delivery) and the prompt asking its approvers (an outbox
row) were two writes: a crash between them left the command held with nobody ever asked, and when the
restarted Squall's catch-up handed the post over again, the approval was found held and nobody was asked
then either; it just expired. Here the prompt's write fails once, right after the hold, as the crash left
it (the write fails, the process goes on, as a kill -9 would have left the database), and the post is handed
over again after a restart: the approvers are asked once, and approving runs the command once. Driven as
the re-delivery tests drive a restart (tests/test_chat_redelivery_held.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.storage import Store
from tests.fake_mattermost import FakeMattermost
from tests.test_chat import settle
from tests.test_chat_redelivery_held import _guarded, fake, greeted, handed_over_again, running, thread_of
from tests.test_mattermost import replies_to

__all__ = ["fake"]  # the fixture, imported for the tests here

PROMPT = "is waiting for 1 approval"


class _PromptWriteFails:
    """Makes the first write of an approval's prompt to the outbox fail, whichever way it is stored (alone,
    `Store.outbox_add`, or keyed, `Store.outbox_add_keyed`): the crash window between the hold and its prompt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failed = 0
        add, add_keyed = Store.outbox_add, Store.outbox_add_keyed

        def outbox_add(store: Store, adapter: str, channel: str, payload: dict[str, Any], *args: Any,
                       **kwargs: Any) -> Any:
            self._fail_once([payload])
            return add(store, adapter, channel, payload, *args, **kwargs)

        def outbox_add_keyed(store: Store, execution_id: str, key: str, rows: Any, **kwargs: Any) -> Any:
            self._fail_once([payload for _adapter, _channel, payload, _kind, _status in rows])
            return add_keyed(store, execution_id, key, rows, **kwargs)

        monkeypatch.setattr(Store, "outbox_add", outbox_add)
        monkeypatch.setattr(Store, "outbox_add_keyed", outbox_add_keyed)

    def _fail_once(self, payloads: list[dict[str, Any]]) -> None:
        if self.failed == 0 and any(PROMPT in (payload.get("text") or "") for payload in payloads):
            self.failed += 1
            raise RuntimeError("the process was killed here (the prompt's write never happened)")


def prompts(fake: FakeMattermost, post: dict[str, Any]) -> list[str]:
    """The prompts asking the approvers of `post`'s command, as posted in its thread."""
    return [p["message"] for p in thread_of(fake, post) if PROMPT in p["message"]]


async def test_a_hold_whose_prompt_was_never_stored_asks_the_approvers_once_the_post_comes_again(
        home: Path, fake: FakeMattermost, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported case: the prompt's write failed after the hold (a kill -9 between the two writes), and the
    post handed over again after the restart found its approval held and asked nobody: it could only expire.
    Now the hold goes with its prompt: the post handed over again asks the approvers, once (not again at the
    next restart), and approving it runs the command once."""
    _guarded(home)
    with monkeypatch.context() as patched:
        failing = _PromptWriteFails(patched)
        async with running(home, fake) as (squall, bot, _caught_up):
            post = await fake.say(fake.alice, fake.town_square, "!guarded greet carol")
            await fake.wait_for(lambda: failing.failed)
            await settle(squall, bot)
            assert await squall.db(squall.store.approvals_pending) == []  # not held without its prompt
    assert prompts(fake, post) == []  # the crash: nobody was asked
    for _restart in range(2):  # handed over again after each restart: asked the first time only
        async with running(home, fake) as (squall, bot, caught_up):
            await handed_over_again(fake, squall, bot, caught_up)
            pending = await squall.db(squall.store.approvals_pending)
            assert len(pending) == 1, pending
            assert len(prompts(fake, post)) == 1, thread_of(fake, post)
    [held] = pending
    assert held["id"] in prompts(fake, post)[0]
    async with running(home, fake) as (squall, bot, _caught_up):
        approve = await fake.say(fake.bob, fake.town_square, f"!approve {held['id']}", root_id=post["id"])
        await replies_to(fake, approve, "hello carol")
        await settle(squall, bot)
        assert await greeted(squall) == ["carol"]
    async with running(home, fake) as (squall, bot, caught_up):  # approved and run: handed over again, nothing
        await handed_over_again(fake, squall, bot, caught_up)
        assert await greeted(squall) == ["carol"]
        assert await squall.db(squall.store.approvals_pending) == []
    assert len(prompts(fake, post)) == 1
