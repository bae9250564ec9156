"""`/api/v1/rules` and `/api/v1/ruleenforcements`: the loaded rules and what they did, and turning a
rule on or off (`st2 rule enable|disable`).

A rule is addressed by its ref or its `id` (`Rule.id`, derived from the ref), as StackStorm's
`/rules/{ref_or_id}`. Its state is its pack file's `enabled:` line (`engine/content_files.py`), so
`PUT /rules/{ref_or_id}` writes that line and reloads the packs, as the web UI's switch does: the
rules engine fires the rule or not at once, and every other process on the pack folder follows at
its next reload; audited (`api.rule.enable|disable`) only when the rule's state changed. Any other change
is refused: rules are edited in their pack files (`st2 rule create|delete` are answered with what to do
instead)."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response

from bot.http.actions import ALLOW_GET, CONTENT_NAMES, RELOADED, in_pack
from bot.http.key_auth import request_user
from bot.http.paging import Paging, keyset_pages, page_limit, query_time, streamed_list, tell_page
from bot.http.state import api_state
from engine.content_files import ContentFileError
from engine.packs import Registry
from engine.parameters import MAX_INTEGER
from engine.rules import Rule, enforcement_public

router = APIRouter()


@router.get("/rules", tags=["rules"])
async def list_rules(request: Request, response: Response, pack: str | None = None, name: str | None = None,
                     action: str | None = None, trigger: str | None = None, enabled: bool | None = None,
                     user: str | None = None, paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters (`st2 rule list -p|--action|--trigger|--enabled|--disabled`): `pack`, `name`,
    `action` (the action's ref), `trigger` (the trigger type's ref), `enabled` (`True`/`False`, as st2
    sends it; anything but a boolean is a 400) and `user` (the rule's `context.user`)."""
    wanted = {"pack": pack, "name": name, "action": action, "trigger": trigger, "enabled": enabled, "user": user}
    squall = api_state(request).squall
    rules = squall.rules.rules
    refs = [ref for ref in sorted(rules) if _rule_selected(rules[ref], wanted)]
    return [rule_public(rules[ref], squall.registry) for ref in paging.page(refs, response)]


def rule_public(rule: Rule, registry: Registry) -> dict[str, Any]:
    """The rule as StackStorm's API shows it (`Rule.public`), its `metadata_file` relative to its pack
    (`rules/on_alert.yaml`) as an action's is (`in_pack`); the refusals naming the file to edit keep the
    path Squall loaded it by (`Rule.file`)."""
    shown = rule.public()
    if shown.get("metadata_file"):
        shown["metadata_file"] = in_pack(shown["metadata_file"], rule.pack, registry)
    return shown


def _rule_selected(rule: Rule, wanted: dict[str, Any]) -> bool:
    """Whether `rule` has each value `wanted` gives (None: any), by `list_rules`' filter names."""
    has = {"pack": rule.pack, "name": rule.name, "action": rule.action_ref, "trigger": rule.trigger_type,
           "enabled": rule.enabled, "user": rule.context.get("user")}
    return all(value is None or has[key] == value for key, value in wanted.items())


def _find_rule(request: Request, ref_or_id: str) -> Rule:
    """The loaded rule `ref_or_id` names (its ref, or its `id`); 404 naming where the rules are listed."""
    rules = api_state(request).squall.rules.rules
    rule = rules.get(ref_or_id) or next((r for r in rules.values() if r.id == ref_or_id), None)
    if rule is None:
        raise HTTPException(404, f'Rule "{ref_or_id}" is not loaded (no rule has that ref or id); '
                                 "GET /api/v1/rules lists the rules.")
    return rule


@router.get("/rules/{ref_or_id}", tags=["rules"])
async def get_rule(ref_or_id: str, request: Request) -> dict[str, Any]:
    return rule_public(_find_rule(request, ref_or_id), api_state(request).squall.registry)


def _wanted_enabled(rule: Rule, body: dict[str, Any], registry: Registry) -> bool:
    """The `enabled` a PUT body asks for; 400 when it has none, or asks to change anything else than the
    rule as GET showed it (`rule_public`: st2client sends that back whole)."""
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise HTTPException(400, f'Send "enabled": true or false to turn rule {rule.ref} on or off, '
                                 f"not {enabled!r}.")
    current = rule_public(rule, registry)
    changed = sorted(key for key, value in body.items()
                     if key != "enabled" and key not in CONTENT_NAMES and current.get(key, object()) != value)
    if changed:
        raise HTTPException(400, f"Only a rule's 'enabled' can be changed through the API; rules are edited in "
                                 f"their pack files ({rule.file}), and this request also changes: "
                                 f"{', '.join(changed)}. Edit the file and reload the packs instead.")
    return enabled


@router.put("/rules/{ref_or_id}", tags=["rules"])
async def update_rule(ref_or_id: str, request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """StackStorm's rule update, as `st2 rule enable|disable` send it (the whole rule, `enabled` changed):
    writes `enabled:` into the rule's pack file and reloads the packs, so the rule fires, or stops
    firing, at once. A rule of a pack shipped with Squall is not changed (409): its files are Squall's."""
    squall = api_state(request).squall
    rule = _find_rule(request, ref_or_id)
    enabled = _wanted_enabled(rule, body, squall.registry)
    try:
        await squall.set_rule_enabled(rule, enabled, f"api.rule.{'enable' if enabled else 'disable'}",
                                      request_user(request), "api")
    except ContentFileError as exc:
        raise HTTPException(409, str(exc)) from exc
    reloaded = squall.rules.rules.get(rule.ref)
    if reloaded is None:  # the reload no longer loads it (its file was broken meanwhile): say what was written
        return {**rule_public(rule, squall.registry), "enabled": enabled}
    return rule_public(reloaded, squall.registry)


@router.post("/rules", tags=["rules"])
async def create_rule() -> None:
    """StackStorm's rule create (`st2 rule create FILE`): refused, since Squall keeps no rule the API could
    store; the answer says where a rule is written instead."""
    raise HTTPException(405, "Rules are not created through the API in Squall: they are kept in pack files. Write "
                             f"the rule (rules/<name>.yaml) in a pack of your own; {RELOADED}.",
                        headers=ALLOW_GET)


@router.delete("/rules/{ref_or_id}", tags=["rules"])
async def delete_rule(ref_or_id: str, request: Request) -> None:
    """StackStorm's rule delete: refused (409, never 404 for a loaded rule: st2client takes a 404 for a
    delete done) with the rule's file to remove, or `st2 rule disable` to stop it firing."""
    rule = _find_rule(request, ref_or_id)
    raise HTTPException(409, f"Rule {rule.ref} cannot be deleted through the API in Squall, where rules are kept "
                             f"in pack files: remove {rule.file}, or stop it firing with `st2 rule disable "
                             f"{rule.ref}`; {RELOADED}.")


class _EnforcementFilters:
    """StackStorm's filters of `/ruleenforcements` (`st2 rule-enforcement list`): the rule by `rule_ref`
    (`--rule`), `rule_id` or Squall's own `rule`; `trigger_instance`, `execution`; and `enforced_at`
    (exactly), `enforced_at_gt`/`enforced_at_lt` (`-tg`/`-tl`: strictly after/before), ISO 8601 times,
    a 400 naming the parameter otherwise, as `/executions` answers."""

    def __init__(self, rule: str | None = None, rule_ref: str | None = None, rule_id: str | None = None,
                 trigger_instance: str | None = None, execution: str | None = None, enforced_at: str | None = None,
                 enforced_at_gt: str | None = None, enforced_at_lt: str | None = None) -> None:
        self.rules = {ref for ref in (rule, rule_ref) if ref}
        self.rule_id = rule_id
        #: The others, as `Store.rule_enforcement_page` takes them.
        self.where = {"trigger_instance_id": trigger_instance, "execution_id": execution,
                      "at": query_time("enforced_at", enforced_at),
                      "since": query_time("enforced_at_gt", enforced_at_gt),
                      "until": query_time("enforced_at_lt", enforced_at_lt)}

    def rule(self, request: Request) -> tuple[bool, str | None]:
        """Whether any enforcement can be selected, and the ref of the rule they are of (None: any). The
        `rule_id` of no loaded rule, or filters naming two rules, select none (StackStorm lists none for
        a rule that does not exist): an id is derived from the ref (`Rule.id`), not stored."""
        refs = set(self.rules)
        if self.rule_id:
            rules = api_state(request).squall.rules.rules.values()
            found = next((r.ref for r in rules if r.id == self.rule_id), None)
            if found is None:
                return False, None
            refs.add(found)
        return len(refs) <= 1, next(iter(refs), None)


@router.get("/ruleenforcements", tags=["rules"], response_model=list[dict[str, Any]])
async def list_enforcements(request: Request, response: Response, filters: _EnforcementFilters = Depends(),
                            limit: int | None = Depends(page_limit(50, 1000)),
                            offset: int = Query(0, ge=0, le=MAX_INTEGER)) -> list[dict[str, Any]] | Response:
    """Newest first; `limit=-1` lists them all (`st2 rule-enforcement list -n -1`), written a page at a
    time (`keyset_pages`); filtered in SQL (`_EnforcementFilters`). Read on `Database.read`: the count
    reads every enforcement the filters select."""
    squall = api_state(request).squall
    selects, rule = filters.rule(request)
    if not selects:
        tell_page(response, 0, limit)
        return []
    read = functools.partial(squall.store.rule_enforcement_page, rule, **filters.where)
    if limit is None:
        _none, total = await squall.db.read(read, limit=0)
        return streamed_list(keyset_pages(squall.db, read, enforcement_public, offset, "enforced_at", total),
                             total)
    rows, total = await squall.db.read(read, limit=limit, offset=offset)
    tell_page(response, total, limit)
    return [enforcement_public(row) for row in rows]


@router.get("/ruleenforcements/{enforcement_id}", tags=["rules"])
async def get_enforcement(enforcement_id: str, request: Request) -> dict[str, Any]:
    """One enforcement by its id (`st2 rule-enforcement get ID`)."""
    squall = api_state(request).squall
    found = await squall.db(squall.store.rule_enforcement_get, enforcement_id)
    if found is None:
        raise HTTPException(404, f'Rule enforcement "{enforcement_id}" not found; GET /api/v1/ruleenforcements '
                                 "lists them, newest first.")
    return enforcement_public(found)
