"""`squall inquiry list | get | respond ID --response JSON` (spec §11.2).

A response given here is validated and stored, with its `cli.inquiry.respond` audit event in one
transaction; the workflow waiting on it is marked `resuming`, and `squall serve` conducts it on (this
process does not run it): while none runs, the command says the workflow waits for one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli.common import (
    JsonOption,
    add_row,
    audit_entry,
    current_config,
    current_user,
    fail,
    group,
    json_value,
    new_table,
    out,
    print_json,
    runner_named,
    served_elsewhere,
    with_app,
)

if TYPE_CHECKING:
    from bot.app import Squall

inquiry_app = group("List and answer inquiries (questions workflows wait on).")


def _call(work: Any) -> Any:
    """`with_app`, with an inquiry that cannot be answered (schema, rights, state) as exit 2."""
    from engine.inquiries import InquiryError

    try:
        return with_app(work)
    except InquiryError as exc:
        raise fail(str(exc)) from exc


@inquiry_app.command("list")
def inquiry_list(as_json: JsonOption = False) -> None:
    """Inquiries waiting for an answer, with who may (its `users` and `roles`, both applying)."""
    from engine.inquiries import who_may

    items = _call(lambda s: s.inquiries.list())
    if as_json:
        print_json(items)
        return
    table = new_table("id", "route", "who may answer", "ttl (min)", "parent")
    for item in items:
        add_row(table, item["id"], item["route"], who_may(item["users"], item["roles"]), item["ttl"],
                item["parent"] or "")  # route and users come from the workflow: a cell is markup to rich
    out.print(table)


@inquiry_app.command("get")
def inquiry_get(inquiry_id: Annotated[str, typer.Argument(help="Inquiry id.")], as_json: JsonOption = False) -> None:
    """One inquiry with its schema."""
    item = _call(lambda s: s.inquiries.get(inquiry_id))
    if as_json:
        print_json(item)
        return
    for key in ("id", "status", "route", "users", "roles", "ttl", "parent"):
        out.print(f"{key}: {item[key]}", markup=False)
    out.print("schema: " + json.dumps(item["schema"], indent=2), markup=False)


@inquiry_app.command("respond")
def inquiry_respond(
    inquiry_id: Annotated[str, typer.Argument(help="Inquiry id.")],
    response: Annotated[str, typer.Option("--response", "-r", help="The answer as a JSON object.")],
    as_json: JsonOption = False,
) -> None:
    """Answer an inquiry; exit 2 if the answer does not fit its schema or you may not answer."""
    try:
        value = json_value(response, "--response")  # nested no deeper than the HTTP API takes
    except ValueError as exc:
        raise fail(f"--response must be JSON, e.g. '{{\"continue\": true}}': {exc}") from exc

    async def work(squall: Squall) -> tuple[dict[str, Any], bool]:
        import asyncio

        squall.executions.executor = None  # the workflow is resumed by `squall serve`, not here
        me = current_user()  # in the config `auth.groups` that list them, as chat reads them, for `roles`
        groups = sorted(squall.chat.inquiries.auth.member_of(me))
        # Stored with the answer, one transaction: its detail gains the response, secrets masked.
        audit = await squall.db(audit_entry, squall.store, "cli.inquiry.respond", {})
        answered = await squall.inquiries.respond(inquiry_id, value, me, groups, audit)
        while squall.executions.notifying:  # the listener marking the workflow `resuming`
            await asyncio.sleep(0.01)
        return answered, await served_elsewhere(squall)

    item, resumed = _call(work)
    if as_json:
        print_json(item)
        return
    out.print(f"inquiry {item['id']} answered: {json.dumps(item['response'])}", markup=False)
    if item.get("parent") and item["status"] == "succeeded" and not resumed:  # else it waits for more answers
        out.print(f"its workflow {item['parent']} resumes when {runner_named(current_config())} runs: none runs "
                  "on this database now", markup=False)


