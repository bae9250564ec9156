"""`/aliases`: the loaded aliases with their formats, help and who may run them, and "try a message".

Everything comes from the chat's own objects: the process's one alias index (`squall.chat.index`), the
command path's matcher (`CommandService.match`, what a chat message and `POST /aliasexecution` go
through) and its `Authorizer`, so the page shows what chat would do, not a second opinion. Trying a
message only matches it: nothing runs and nothing is audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from aliases import Alias, AmbiguousCommand, CommandTooComplex, NoMatch
from bot.accounts import Session
from bot.chat.auth import Authorizer
from bot.web.pages import PageRoute, render
from bot.web.session import form_fields, viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: Longer messages are refused before matching (a chat line is far shorter).
MAX_MESSAGE = 4000


def _who_may(auth: Authorizer, alias: Alias) -> dict[str, Any]:
    """The alias's allow and deny lists as the chat's authorisation reads them, and where they come from."""
    rules = auth.rules_for(alias) or {}
    origin = "the alias's permissions" if alias.permissions else ("config auth.aliases" if rules else None)
    return {"allow": rules.get("allow"), "deny": rules.get("deny") or {}, "origin": origin}


def _rows(request: Request) -> list[dict[str, Any]]:
    chat = request.app.state.squall.chat
    auth = chat.commands.auth
    return [{"alias": alias, "who": _who_may(auth, alias)} for _ref, alias in sorted(chat.index.aliases.items())]


def _tried(request: Request, message: str) -> dict[str, Any]:
    """What the command path makes of `message`: a match, or why none or several."""
    if not message.strip():
        return {"message": message, "problem": "Type a message to try, such as one of the formats above."}
    if len(message) > MAX_MESSAGE:
        return {"message": message[:200], "problem": f"A message to try is at most {MAX_MESSAGE} characters; "
                                                      f"this one has {len(message)}."}
    commands = request.app.state.squall.chat.commands
    try:
        return {"message": message, "match": commands.match(message)}
    except CommandTooComplex as exc:
        return {"message": message[:200], "problem": str(exc)}
    except NoMatch as exc:
        return {"message": message, "none": exc}
    except AmbiguousCommand as exc:
        return {"message": message, "several": exc}


@router.get("/aliases")
async def alias_list(request: Request, session: Session = Depends(viewer)) -> Response:
    chat = request.app.state.squall.chat
    return render(request, "aliases.html", {"session": session, "rows": _rows(request), "tried": None,
                                            "admins": sorted(chat.commands.auth.admins)})


@router.post("/aliases/try")
async def alias_try(request: Request, session: Session = Depends(viewer)) -> Response:
    """The match as a fragment for htmx, or the whole page with it for a plain form post."""
    tried = _tried(request, (await form_fields(request)).get("message", ""))
    if request.headers.get("hx-request") == "true":
        return render(request, "alias_try.html", {"session": session, "tried": tried})
    chat = request.app.state.squall.chat
    return render(request, "aliases.html", {"session": session, "rows": _rows(request), "tried": tried,
                                            "admins": sorted(chat.commands.auth.admins)})
