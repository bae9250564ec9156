"""`/rules`: the loaded rules (trigger, criteria, action), one rule's enforcement history, and turning a
rule on or off (admin).

The list is the rules engine's own (`squall.rules.rules`, what `GET /api/v1/rules` and `squall rule
list` show); the history is its enforcements. A rule's state is its pack file's `enabled:` line
(`engine/content_files.py`), so enabling or disabling writes that line and reloads the packs
(`Squall.reload_packs`, as `squall serve` does when pack files change): the rules engine then
fires the rule or not, and every other process on the pack folder follows at its next reload.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import admin, form_fields, viewer
from engine.content_files import ContentFileError
from engine.rules import Rule, enforcement_public

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: Enforcements a rule's page lists, newest first.
HISTORY = 100


def _rule(request: Request, ref: str) -> Rule:
    rules = request.app.state.squall.rules.rules
    rule = rules.get(ref)
    if rule is None:
        raise PageError(f'Rule "{ref}" is not loaded; the rules page lists the loaded ones.', 404)
    return rule


@router.get("/rules")
async def rule_list(request: Request, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    rules = [squall.rules.rules[ref] for ref in sorted(squall.rules.rules)]
    return render(request, "rules.html", {"session": session, "rules": rules,
                                          "problems": [str(e) for e in squall.rules.errors]})


@router.get("/rules/{ref}")
async def rule_page(request: Request, ref: str, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    rule = _rule(request, ref)
    # Off the loop (`Database.read`): a rule's newest enforcements may lie far down the table.
    history = [enforcement_public(r) for r in await squall.db.read(squall.store.rule_enforcement_list, rule.ref,
                                                                   limit=HISTORY)]
    pack = squall.registry.packs.get(rule.pack)
    return render(request, "rule.html", {
        "session": session, "rule": rule, "public": rule.public(), "history": history,
        "may_toggle": session.account.may("admin") and pack is not None and not pack.system})


@router.post("/rules/{ref}/enabled")
async def rule_enable(request: Request, ref: str, session: Session = Depends(admin)) -> Response:
    """Form field `enabled`: `true` or `false`."""
    squall = request.app.state.squall
    rule = _rule(request, ref)
    wanted = (await form_fields(request)).get("enabled", "")
    if wanted not in ("true", "false"):
        raise PageError(f"'enabled' must be true or false, not {wanted!r}")
    try:
        await squall.set_rule_enabled(rule, wanted == "true", f"web.rule.{'enable' if wanted == 'true' else 'disable'}",
                                      session.account.name, "web")
    except ContentFileError as exc:
        raise PageError(str(exc), 409) from exc
    return RedirectResponse(f"/rules/{rule.ref}", status_code=303)
