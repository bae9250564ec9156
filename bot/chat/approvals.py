"""Approvals (issue 20): a chat command whose alias or action declares `approval:` is held after
authorisation, stored in `approvals`, and run through the command path's request step once
`count` distinct approvers from its groups said yes.

Everything lives in the table, read again at each decision, so a restart loses nothing and several
`squall serve` processes agree: a decision is written only if the row is still pending at the
revision it was read at (`Store.approval_update`), so one decider wins a race and the command is
requested once. A command approved just before a crash is run by the sweep, after it looked for the
execution it may already have become (`_recover`). Approvers are the chat's groups as
`Authorizer.groups_of` resolves them, and admins (on IRC only the nicks config qualifies, `irc:ann`);
the requester may approve only with `self_approval: true`, and may withdraw their own request, they
alone: a Slack request is not withdrawn by its requester's namesake on IRC, nor by whoever a Mattermost
server renamed into the requester's name (`auth.same_sender`: by the platform's user id where the request
and the decision both say one, kept with the requester and each decision). Every
decision, refusal, expiry and the final run is an audit event (`chat.approval.*`), each change's
stored with it, in one transaction (`ApprovalChat._changed`), and the execution's
`context.approval` names who approved, when and from where. The approvers' words (a deny reason)
are shown, never rendered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapters.base import Message, Reply
from bot.chat.auth import Authorizer, same_sender
from bot.chat.commands import CommandFailed, CommandRefused, CommandService, Held, HeldRequest
from bot.chat.outbox import Keyed, Outbox
from bot.forms import short
from engine.crypto import CryptoError
from engine.executions import AuditEntry
from engine.parameters import mask
from engine.storage import DuplicateDelivery, iso, utcnow

if TYPE_CHECKING:
    from engine.core import Engine
    from engine.storage import Store

log = logging.getLogger(__name__)
APPROVE, DENY = "approve", "deny"
#: An approved command that could not start (its alias disabled or gone, the requester's permission
#: taken, a parameter refused): the row's status, and the verdict of the entry that says why.
FAILED = "failed"
#: The row's context key for what the requester's permission is checked against again once approved
#: (taken out before the run: it is no part of the execution's context).
_ASKED = "approval_asked"
#: Why an approved command whose sealed secret parameters no longer decrypt ends `failed` (told in its
#: thread: the key ring's own words, which name the server's key file, go to the log only).
UNREADABLE = ("its secret parameters, sealed with the datastore key while it waited, cannot be decrypted: the "
              "key that sealed them is no longer in the key file (replaced, or retired by a rotation that "
              "did not re-encrypt them)")
#: How long an approved command may take to be requested before the sweep takes it for lost in a crash.
RUN_GRACE = timedelta(seconds=60)
#: The `execution_id` an approval's prompt is keyed under in the outbox (kind `approval:<id>`, `_prompt_key`):
#: no execution's id, the one the answers to a delivered message are keyed under (`dispatcher.ANSWERS`), so
#: retention purges it by age once sent, as every reply of no execution.
PROMPTS = "@"


class ApprovalChat:
    """Holds commands for approvers, takes their decisions, runs or ends them, expires them."""

    def __init__(self, engine: Engine, commands: CommandService, outbox: Outbox, auth: Authorizer,
                 prefix: str) -> None:
        self.engine = engine
        self.commands = commands
        self.outbox = outbox
        self.auth = auth
        self.prefix = prefix
        commands.holder = self.hold

    # -- holding ---------------------------------------------------------------------------------
    async def hold(self, held: HeldRequest) -> Held:
        """Store the command with its policy and ask its thread for approvers (Approve / Deny).

        A command whose message its platform may hand over again (`context.chat.delivery`: a Mattermost
        post caught up after a restart, a Slack event retried) is held under an id its delivery key
        makes (`_delivered_id`), so the same message handed over again finds its approval held (pending,
        decided or run) and asks nothing: approvers asked twice would approve two runs of one command.
        The prompt is stored with the hold, in its transaction (`_add_new`): stored after it, a crash
        between the two (a kill -9) left a command held that nobody was ever asked about, and the
        message handed over again found it held and asked nobody either, so it could only expire."""
        action = self.engine.registry.action(held.alias.action_ref)
        visible = mask(held.parameters, action.secret_names)
        secret = {k: v for k, v in held.parameters.items() if visible[k] != v}
        # A secret typed in chat (a `secret: true` parameter, a credential in `headers`) waits sealed
        # with the datastore key, as a queued execution's does: whatever the mask changed.
        sealed = self.engine.executions.keys.encrypt(json.dumps(secret)) if secret else None
        chat = held.context["chat"]
        policy = held.policy
        now = utcnow()
        # What the requester's permission is checked against again once approved (beside the user,
        # adapter and channel the row has): the platform's groups, the channel's name and the sender's
        # platform user id as they were (a command allowed only to `slack:U0123ABCD` must still be theirs).
        asked = {"groups": list(held.message.groups), "channel_name": held.message.channel_name,
                 "user_id": held.message.user_id}
        delivery = chat.get("delivery")
        row = {"id": _delivered_id(delivery), "alias": held.alias.ref, "action": held.alias.action_ref,
               "parameters": visible, "sealed": sealed, "render": held.render,
               "context": {**held.context, _ASKED: asked},
               "requester": held.message.user, "adapter": chat["adapter"], "channel": chat["channel"],
               "thread": chat.get("thread"), "groups": policy["groups"], "count": policy["count"],
               "self_approval": policy["self_approval"], "created_at": now,
               "expires_at": now + timedelta(seconds=policy["ttl"]), "status": "pending", "decisions": [],
               "revision": 0, "execution_id": None}
        db = self.engine.db
        stored: list[list[tuple[int | None, int | None]]] = []  # the prompt's rows, once held with them
        while True:
            prompt = self._prompt(row, policy["ttl"])
            event = self._event("chat.approval.request", held.message.user, _where(held.message), row,
                                {"parameters": row["parameters"]})
            if await self._changed(event, _add_new, db.store, row, prompt, stored):
                break
            before = await db(db.store.approval_get, row["id"])
            if delivery is not None and before is not None \
                    and (before["context"].get("chat") or {}).get("delivery") == delivery:
                log.info("%s's command came again (delivery %s); approval %s holds it already (%s), not again",
                         held.message.user, delivery, before["id"], before["status"])
                return Held(before)
            row["id"] = secrets.token_hex(4)  # another message's approval has the id this key made: a new one
        prompt.queue(stored[0])
        return Held(row)

    def _prompt(self, row: dict[str, Any], ttl: int) -> Keyed:
        """The prompt asking `row`'s approvers (Approve / Deny), ready to store with the hold (`_add_new`),
        keyed by the approval (`_prompt_key`): made again for each id tried, since it names the id."""
        shown = ", ".join(f"{k}={short(str(v), 60)}" for k, v in row["parameters"].items()) or "no parameters"
        text = (f"{row['action']} with {shown} is waiting for {_approvals(row['count'])} from "
                f"{', '.join(row['groups'])} (approval {row['id']}, expires in {_duration(ttl)}). "
                f"`{self.prefix}approve {row['id']}` or `{self.prefix}deny {row['id']} <reason>`.")
        prompt = self.outbox.keyed(PROMPTS, _prompt_key(row["id"]), [_reply(row, text, _buttons(row["id"]))])
        assert prompt is not None  # a reply: always a row to store
        return prompt

    # -- deciding --------------------------------------------------------------------------------
    async def decide(self, message: Message, verdict: str, rest: str) -> str | None:
        """`approve ID` / `deny ID reason` from `message`'s sender: what to tell them where they typed it,
        None when the requester's thread was told in that channel already (`_told_there`). A last approval
        answers with what came of the run: "running" only when it was requested, else why it could not
        start, as its thread was told (an approver in a direct message or another channel sees nothing else)."""
        approval_id, _, reason = rest.strip().partition(" ")
        if not approval_id:
            return f"Which one? `{self.prefix}{verdict} <approval-id>{' <reason>' if verdict == DENY else ''}`"
        db = self.engine.db
        for _attempt in range(5):  # a concurrent decision moved the revision on: read again
            row = await db(db.store.approval_get, approval_id)
            if row is None:
                return f"There is no approval {short(approval_id, 40)}."
            if row["status"] == "pending" and row["expires_at"] <= utcnow():
                await self._expire(row)
                row = await db(db.store.approval_get, approval_id) or row
            refusal = self._refusal(row, message, verdict)
            if refusal is not None:
                await self._audit("chat.approval.refused", message.user, _where(message), row,
                                  {"verdict": verdict, "reason": refusal})
                if row["status"] == "pending" and self._in_thread(row, message):
                    # A refused click (the requester's own, an outsider's) took the prompt's buttons off
                    # on Slack and Mattermost too: the approvers get them again with the answer.
                    await self._tell(row, refusal, _buttons(row["id"]))
                    return None
                return refusal
            # The decider's platform user id beside their name: a rename must not make them a second approver.
            decision = {"user": message.user, "user_id": message.user_id, "at": iso(utcnow()),
                        "adapter": message.adapter, "channel": message.channel, "thread": message.thread,
                        "verdict": verdict, "reason": reason.strip() or None}
            decisions = [*row["decisions"], decision]
            approved = sum(d["verdict"] == APPROVE for d in decisions)
            status = "denied" if verdict == DENY else ("approved" if approved >= row["count"] else "pending")
            event = self._event(f"chat.approval.{verdict}", message.user, _where(message), row,
                                {"reason": decision["reason"], "status": status})
            if await self._changed(event, db.store.approval_update, row["id"], row["revision"],
                                   {"decisions": decisions, "status": status}):
                break
        else:
            return f"Approval {approval_id} is busy; try again."
        row = {**row, "decisions": decisions, "status": status, "revision": row["revision"] + 1}
        if status == "denied":
            text = f"Approval {row['id']} was denied by {message.user}: {decision['reason'] or 'no reason given'}. " \
                   f"Not running {row['action']}."
        elif status == "approved":
            text = _running(row)
        else:
            text = f"{message.user} approved {row['id']} ({approved} of {row['count']})."
        if status == "approved":  # its thread is told once the run was requested, or why it could not be
            text = await self._run(row, text) or text
        else:  # Slack and Mattermost take the buttons off a clicked prompt: the next approvers get fresh ones.
            await self._tell(row, text, _buttons(row["id"]) if status == "pending" else None)
        return None if self._told_there(row, message) else text

    def _refusal(self, row: dict[str, Any], message: Message, verdict: str) -> str | None:
        """Why `message`'s sender may not decide `row` now, or None."""
        if row["status"] != "pending":
            return f"Approval {row['id']} is already {row['status']}."
        member = self.auth.is_admin(message) or bool(self.auth.groups_of(message) & set(row["groups"]))
        requester = _requester(row)
        # The requester may always withdraw: they (by their user id, renamed or not), not their IRC namesake
        # nor whoever was renamed into their name since.
        withdrawing = verdict == DENY and same_sender(requester, message)
        if not member and not withdrawing:
            return f"Sorry {message.user}, only {', '.join(row['groups'])} may decide {row['id']}."
        # By name too, the stricter reading: an approver who shares the requester's name on another platform
        # (`irc:ann` for Slack's ann) may be that person, so may not approve their request either; by user
        # id, the requester renamed since is still the requester.
        own = message.user == row["requester"] or same_sender(requester, message)
        if own and verdict == APPROVE and not row["self_approval"]:
            return f"{message.user}, you asked for {row['id']}: someone else from {', '.join(row['groups'])} " \
                   "must approve it."
        if any(d["user"] == message.user or same_sender(_decider(d), message) for d in row["decisions"]):
            return f"{message.user}, you already decided {row['id']}; each approver counts once."
        return None

    # -- running and expiring --------------------------------------------------------------------
    async def _run(self, row: dict[str, Any], running: str | None = None) -> str | None:
        """The command path's request step, with the context it was held with plus the decisions
        (`row` as approved or claimed: its `revision` is the row's now). The alias is the one loaded
        now, and the requester is authorised again: a pack reload may have disabled or removed it, or
        taken their permission, while the approvers decided. A command that cannot start ends `failed`
        (`_fail`): no sweep tries it again. None once requested, else what its thread was told instead,
        for the last approver, who may be reading elsewhere (`decide`). `running`, the last approval's
        post, is told its thread only once the command was requested, just before its ack (stored with
        the request where the ack is): a thread told "running" and then why it could not run read two
        outcomes, the first untrue."""
        requester = _requester(row)
        try:
            alias = await self.commands.allowed_alias(row["alias"], requester, "chat", f"approval {row['id']}")
        except CommandRefused as exc:
            return await self._fail(row, f"{exc}")
        context = {key: value for key, value in row["context"].items() if key != _ASKED}
        context["approval"] = {"id": row["id"], "groups": row["groups"], "count": row["count"],
                               "decisions": row["decisions"]}
        try:
            parameters = {**row["parameters"], **self._unsealed(row)}
        except CryptoError as exc:
            log.warning("approval %s cannot run: its sealed parameters cannot be decrypted (%s)", row["id"], exc)
            return await self._fail(row, UNREADABLE)
        try:
            accepted = await self.commands.request(alias, requester, "chat", parameters, row["render"], context,
                                                   preface=None if running is None else _reply(row, running))
        except CommandFailed as exc:
            return await self._fail(row, str(exc))
        except DuplicateDelivery as exc:
            return await self._ran_before(row, exc)
        db = self.engine.db
        await self._changed(self._event("chat.approval.run", row["requester"], f"{row['adapter']}:{row['channel']}",
                                        row, {"execution": accepted.execution["id"], "approvers": _approvers(row)}),
                            db.store.approval_ran, row["id"], accepted.execution["id"])
        if running is not None and not accepted.ack_stored:
            await self._tell(row, running)
        if accepted.ack is not None and not accepted.ack_stored:
            reply = Reply(adapter=row["adapter"], channel=row["channel"], thread=row["thread"], text=accepted.ack,
                          extra=accepted.ack_extra)
            await self.outbox.post_keyed(accepted.execution["id"], "ack", [reply])
        return None

    async def _ran_before(self, row: dict[str, Any], exc: DuplicateDelivery) -> str:
        """The approved `row`'s message requested its command already (the request is keyed by the message's
        delivery key, `engine.storage.chat_delivery_key`): as another approval of it, held twice before
        approvals were keyed by their message, or as the command itself, run before its alias asked for
        approval. It runs once: the approval names that execution (so no sweep runs it), and its thread
        is told (what it was told, returned)."""
        db = self.engine.db
        await db(db.store.approval_ran, row["id"], exc.instance_id)
        log.info("approval %s was not run: its message's command was requested already (%s)", row["id"], exc)
        text = f"Not running {row['action']} again for approval {row['id']}: the message it holds was run " \
               f"already, as execution {exc.instance_id}."
        await self._tell(row, text)
        return text

    def _unsealed(self, row: dict[str, Any]) -> dict[str, Any]:
        """The secret parameters held sealed with the command (CryptoError: the key that sealed them is
        gone from the key file)."""
        sealed = row.get("sealed")
        return json.loads(self.engine.executions.keys.decrypt(sealed)) if sealed else {}

    async def _fail(self, row: dict[str, Any], reason: str) -> str:
        """End an approved command that cannot start (`failed`, the reason in its decisions, in one
        update guarded by its revision) and tell its thread, once: a sweep retrying it would post
        the failure again every time, and run it late, past its expiry, if its alias came back.
        What the thread was told (or, another process having settled it first, that it did)."""
        entry = {"user": None, "user_id": None, "at": iso(utcnow()), "adapter": None, "channel": None, "thread": None,
                 "verdict": FAILED, "reason": reason}
        db = self.engine.db
        event = self._event("chat.approval.failed", None, f"{row['adapter']}:{row['channel']}", row, {"reason": reason})
        if not await self._changed(event, db.store.approval_fail, row["id"], row["revision"],
                                   [*row["decisions"], entry]):
            # another process ran or ended it meanwhile: it told the thread
            return f"Approval {row['id']} was approved, but another Squall process ran or ended it meanwhile: " \
                   "its thread says which."
        text = f"Cannot run {row['id']}: {reason.rstrip('.')}. {row['action']} was not run, and will not be: " \
               "send the command again once it can run."
        await self._tell(row, text)
        return text

    async def sweep(self) -> int:
        """Expire pending approvals past their time, telling each thread once, and run approved
        commands a crash left without their execution; how many were expired."""
        db = self.engine.db
        due = await db(db.store.approvals_pending, utcnow())
        expired = sum([await self._expire(row) for row in due])
        for row in await db(db.store.approvals_unran):
            await self._recover(row)
        return expired

    async def _recover(self, row: dict[str, Any]) -> None:
        """An approved command whose run was never recorded: name its execution if it was requested
        (the crash came before `approval_ran`), else run it, once (`approval_claim`). A run under way
        this moment in another process is left alone for `RUN_GRACE`. One whose approval expired
        meanwhile is not run late: it ends `failed`."""
        approved_at = max(datetime.fromisoformat(d["at"].replace("Z", "+00:00")) for d in row["decisions"])
        if utcnow() - approved_at < RUN_GRACE:
            return
        db = self.engine.db
        if not await db(db.store.approval_claim, row["id"], row["revision"]):
            return
        row = {**row, "revision": row["revision"] + 1}
        execution_id = await db(db.store.execution_of_approval, row["id"], row["created_at"])
        if execution_id is not None:
            await db(db.store.approval_ran, row["id"], execution_id)
            return
        if row["expires_at"] <= utcnow():
            await self._fail(row, f"its approval expired at {iso(row['expires_at'])} before it could run")
            return
        log.warning("approval %s was approved but never ran (a restart in between?); running it now", row["id"])
        await self._run(row, _running(row))  # its thread was told nothing of it yet: the post goes with the run

    async def pending(self) -> int:
        """How many approvals wait (read at start: they live in the table, nothing to rebuild)."""
        db = self.engine.db
        return len(await db(db.store.approvals_pending))

    async def _expire(self, row: dict[str, Any]) -> bool:
        db = self.engine.db
        event = self._event("chat.approval.expire", None, f"{row['adapter']}:{row['channel']}", row,
                            {"approvals": len(_approvers(row)), "count": row["count"]})
        if not await self._changed(event, db.store.approval_update, row["id"], row["revision"], {"status": "expired"}):
            return False  # decided or expired by someone else meanwhile
        await self._tell(row, f"Approval {row['id']} expired with {len(_approvers(row))} of {row['count']} "
                              f"approval(s); {row['action']} was not run.")
        return True

    # -- telling ---------------------------------------------------------------------------------
    async def _tell(self, row: dict[str, Any], text: str, buttons: list[dict[str, str]] | None = None) -> None:
        """Post in the requester's thread; buttons ask anyone (the approvers), not the requester."""
        await self.outbox.post(_reply(row, text, buttons))

    @staticmethod
    def _told_there(row: dict[str, Any], message: Message) -> bool:
        """Whether `message` was typed in the channel of the requester's thread, where `_tell` posts the
        decision's outcome: a second answer under the decider's own message there (a new thread on Slack
        and Mattermost) told that channel the same thing twice. A direct message, another channel or
        another adapter is answered."""
        return (message.adapter, message.channel) == (row["adapter"], row["channel"])

    @staticmethod
    def _in_thread(row: dict[str, Any], message: Message) -> bool:
        """Whether `message` was typed in the requester's thread itself (a refused click there is answered
        there, with the buttons again)."""
        return (message.adapter, message.channel) == (row["adapter"], row["channel"]) \
            and (row["thread"] is None or message.thread == row["thread"])

    async def _audit(self, event: str, actor: str | None, source: str, row: dict[str, Any],
                     detail: dict[str, Any]) -> None:
        """An event that records no change of the approval (a refusal); a change's goes with it (`_changed`)."""
        db = self.engine.db
        await db(self._event(event, actor, source, row, detail).add, db.store, row["alias"])

    @staticmethod
    def _event(event: str, actor: str | None, source: str, row: dict[str, Any], detail: dict[str, Any]) -> AuditEntry:
        """An audit event about `row`'s alias, naming the approval and its action."""
        return AuditEntry(event, actor, source, row["alias"], {"approval": row["id"], "action": row["action"],
                                                               **detail})

    async def _changed(self, audit: AuditEntry, change: Callable[..., bool | None], *args: Any) -> bool:
        """`change(*args)`, a write of the approvals table, and `audit`, in one database call and one
        transaction (`AuditEntry.together`): a decision is never stored without the event saying who made
        it, nor an event without its decision. Apart, a failure between them stored a decision whose
        decider was told it failed (a full disk), and the audit log never showed it. False, and no event,
        when `change` says it lost its race (a revision moved on)."""
        db = self.engine.db

        def write() -> bool:
            with audit.together(db.store):
                if change(*args) is False:
                    return False
                db.store.audit_add(audit.event, audit.actor, audit.source, audit.target, audit.detail)
                return True

        return await db(write)


def _delivered_id(delivery: str | None) -> str:
    """The id of an approval held for a message: random, or, for a message its platform may hand over again,
    the start of its delivery key's digest, so that each time it comes it names the same approval. Eight hex
    digits either way, as people type them (`approve <id>`)."""
    if delivery is None:
        return secrets.token_hex(4)
    return hashlib.sha256(f"approval {delivery}".encode()).hexdigest()[:8]


def _prompt_key(approval_id: str) -> str:
    """The outbox key of the prompt asking an approval's approvers (under `PROMPTS`)."""
    return f"approval:{approval_id}"


def _add_new(store: Store, row: dict[str, Any], prompt: Keyed,
             stored: list[list[tuple[int | None, int | None]]]) -> bool:
    """Store the approval `row` (`Store.approval_add`) and its `prompt` to the approvers (its rows' ids added
    to `stored`, to queue once committed) together, in a savepoint (`Store.isolated`): a prompt that fails to
    store takes the hold with it, so a message handed over again is held and asked anew. Neither, and False,
    when an approval of its id (or its prompt's key) is stored: held for the same message when it came
    before (`_delivered_id`), or, rarely, another's that shares the id."""
    with store.isolated():
        if store.approval_get(row["id"]) is not None:
            return False
        rows = prompt.store(store)
        if rows is None:  # another process held that id this moment (the key's unique index settled it)
            return False
        store.approval_add(row)
    stored.append(rows)
    return True


def _reply(row: dict[str, Any], text: str, buttons: list[dict[str, str]] | None = None) -> Reply:
    """A post in the requester's thread; buttons ask anyone (the approvers), not the requester."""
    return Reply(adapter=row["adapter"], channel=row["channel"], thread=row["thread"], text=text,
                 buttons=buttons or [])


def _buttons(approval_id: str) -> list[dict[str, str]]:
    return [{"text": "Approve", "value": f"{APPROVE} {approval_id}"},
            {"text": "Deny", "value": f"{DENY} {approval_id}"}]


def _requester(row: dict[str, Any]) -> Message:
    """The requester's message as it was held: who they were (name and platform user id), where, with the
    platform groups and channel name their command came with, to authorise them again once approved and
    to tell them from an approver. Rows held before the groups were kept have none; before user ids were,
    no user id (by name only)."""
    asked = row["context"].get(_ASKED) or {}
    return Message(adapter=row["adapter"], channel=row["channel"], user=row["requester"], text="",
                   thread=row["thread"], groups=list(asked.get("groups") or []),
                   channel_name=asked.get("channel_name"), user_id=asked.get("user_id"))


def _decider(decision: dict[str, Any]) -> Message:
    """Who made a stored decision, to tell them from a later decider: their name and platform user id
    (none in a decision stored before ids were kept: by name only)."""
    return Message(adapter=decision["adapter"], channel=decision["channel"], user=decision["user"], text="",
                   thread=decision["thread"], user_id=decision.get("user_id"))


def _running(row: dict[str, Any]) -> str:
    """What the thread of an approved `row` is told once its command was requested (`_run`)."""
    return f"Approval {row['id']} approved by {', '.join(_approvers(row))}; running {row['action']}."


def _approvers(row: dict[str, Any]) -> list[str]:
    return [d["user"] for d in row["decisions"] if d["verdict"] == APPROVE]


def _approvals(count: int) -> str:
    return f"{count} approval{'s' if count != 1 else ''}"


def _where(message: Message) -> str:
    return f"{message.adapter}:{message.channel}"


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
