"""Who a web request speaks for, as FastAPI dependencies: `viewer`, `operator` and `admin` each return
the request's `Session` when its account has that role (or one above it).

Pages declare what they need (`session: Session = Depends(operator)`) and nothing else: the cookie is
looked up server-side (`bot.accounts`), so a deleted user or a changed password ends its sessions at
the next request. The look-up only reads (`Database.read`) and its last use is recorded beside the
request, so a page answers while another process holds SQLite's write lock. A state-changing request
(anything but GET and HEAD) must also carry the session's CSRF token, as form field `csrf_token` or
header `X-CSRF-Token` (htmx sends it from the body's `hx-headers`); without it the answer is 403,
before any role or route is looked at.

A request without a live session is sent to the login page, which comes back to `next`: a page asked
for goes back to itself; a form sent after its session ended (expired, logged out elsewhere, a new
password) goes back to the page it was on (`_came_from`), and the login page says that it was not done.

A live stream (`live.py`) outlives the request that opened it, so it looks at its session again every
`RECHECK_SECONDS` (`bot.accounts.current_session`) and ends once the session has.

A logout the database failed or was locked under (`login.logout`) still ends its session: the process
remembers it (`EndedSessions`), refuses its cookie from then on without asking the database, and a later
signed-in request deletes its row once the database works again (`_forget_ended`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import sqlalchemy as sa
from fastapi import Request, Response
from starlette.routing import BaseRoute, Match

from bot.accounts import SESSION_LIFETIME, Session, close_sessions, read_session, token_hash, touch_session
from bot.web.pages import PageError, PageRoute
from engine.storage import database_trouble, utcnow

if TYPE_CHECKING:
    from engine.storage import Database

log = logging.getLogger(__name__)

COOKIE = "squall_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: Seconds at most a live stream goes on after its session ended (logout, new password, deleted account).
RECHECK_SECONDS = 5.0
#: Fields a posted form may have at most (parsing a huge one is work for nothing).
MAX_FIELDS = 200
#: Paths of `PageRoute`s a login does not go back to: the login itself, and live streams (no page).
NOT_PAGES = ("/login", "/logout", "/live/")
#: Seconds at least between two tries at deleting the sessions logouts ended during an outage.
RETRY_SECONDS = 10.0
#: Such sessions remembered at most: a flood of logouts through an outage cannot fill the memory.
MAX_ENDED = 10_000


class LoginRequired(Exception):
    """No live session: pages answer a redirect to the login page, which comes back to `next` (already
    quoted for the query). `expired`: a form was sent without one, and the login page says it was not
    done."""

    def __init__(self, next_url: str | None, expired: bool = False) -> None:
        super().__init__("log in first")
        self.next_url = next_url
        self.expired = expired


class Refused(PageError):
    """A signed-in request that may not do what it asked: a missing CSRF token or a role below the
    page's. The message is shown to the person."""

    status = 403


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form body's fields (the first value of each), read once per request.

    The first, on purpose: a required yes/no (templates/form_fields.html) sends its chosen button, then
    an empty field of the same name, so nothing chosen arrives empty. The UI's forms are urlencoded,
    never multipart, so this needs no multipart parser."""
    cached = getattr(request.state, "form_fields", None)
    if cached is None:
        cached = request.state.form_fields = {name: values[0] for name, values in (await _form(request)).items()}
    return cached


async def checked_values(request: Request, name: str) -> list[str]:
    """Every value an urlencoded form body gives field `name`, in order, empty ones left out (the checked
    rows of a list, `execution=…` once each)."""
    return [value for value in (await _form(request)).get(name, []) if value]


async def _form(request: Request) -> dict[str, list[str]]:
    """An urlencoded form body's fields with all their values, parsed once per request, at most `MAX_FIELDS`
    of them (`PageError` past that: the UI's 400 page, whichever route reads the form first)."""
    parsed = getattr(request.state, "form", None)
    if parsed is None:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body() if content_type == "application/x-www-form-urlencoded" else b""
        try:
            parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
        except ValueError:
            raise PageError(f"A form of Squall's has fewer than {MAX_FIELDS} fields; this one has more.") from None
        request.state.form = parsed
    return parsed


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    """A cookie scripts cannot read, sent on top-level navigation from elsewhere but not on cross-site
    posts (SameSite=Lax), and only over https when the page came over https."""
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")


def safe_next(value: str | None, default: str = "/executions") -> str:
    """Where to go after login: a path on this site only (`/x`, not `//host`, `/\\host` or `http:`)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 0x20 or c == "\\" for c in value):
        return default
    return value


def _here(request: Request) -> str:
    """The path and query of this request, for the login page to come back to."""
    query = request.url.query
    return quote(request.url.path + (f"?{query}" if query else ""), safe="")


def page_routes(routes: Iterable[BaseRoute]) -> tuple[BaseRoute, ...]:
    """The UI's pages among `routes` (its routers' routes, `bot.web.mount`): the `PageRoute`s a GET
    answers, but the login and the live streams. What a login may go back to after a form's post."""
    return tuple(route for route in routes if isinstance(route, PageRoute) and "GET" in route.methods
                 and not route.path.startswith(NOT_PAGES))


def is_page(request: Request, path: str) -> bool:
    """Whether a GET of `path` is one of the UI's pages (`page_routes`, which `mount` keeps in the
    app's state): not the API, a static file or anything of another site."""
    if not path or safe_next(path, "") != path or path.startswith(NOT_PAGES):
        return False
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    pages: tuple[BaseRoute, ...] = getattr(request.app.state, "web_pages", ())
    return any(route.matches(scope)[0] == Match.FULL for route in pages)


def _came_from(request: Request) -> str | None:
    """The page a form was sent from, quoted for the login page's `next`: the Referer's path and query
    when it is a page of this site (same host; `Referrer-Policy: same-origin` sends it only from here),
    else the post's own path when that is a page (a run form posts to its own page), else None. Only
    ever a path, so never another site."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc and referer.netloc == request.headers.get("host") and is_page(request, referer.path):
        return quote(referer.path + (f"?{referer.query}" if referer.query else ""), safe="")
    return quote(request.url.path, safe="") if is_page(request, request.url.path) else None


def from_this_site(request: Request) -> bool:
    """Whether the browser says this post came from a page of this site: its `Origin` (browsers send
    one with every form post) or, without one, its `Referer` names this host. What stands in for the
    CSRF token when that cannot be read (a logout while the database is out: `login.logout`)."""
    source = request.headers.get("origin") or request.headers.get("referer", "")
    host = request.headers.get("host")
    return bool(host) and urlsplit(source).netloc == host


class EndedSessions:
    """Sessions a logout ended that the database still has: it failed or was locked at the logout.

    Their cookies are refused as though the rows were gone (`_session`), and the rows are deleted by a
    later request (`_forget_ended`), at most every `RETRY_SECONDS`, so that a database still failing
    costs one failed write that often, not one a request. Kept in this process's memory only: another
    process serving the UI over the same database accepts such a session until its row is deleted,
    and so does this one after a restart. At most `MAX_ENDED` (the oldest go first), each forgotten
    after `SESSION_LIFETIME`, when its row has expired anyway."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ended: dict[str, float] = {}  # token hash -> when its logout was; oldest first
        self._retry_at = -math.inf
        self._retrying = False

    def __contains__(self, hashed: str) -> bool:
        return hashed in self._ended

    def add(self, hashed: str) -> None:
        """A logout the database just failed: its session is refused from now on, and its deletion
        tried again `RETRY_SECONDS` from now (at once, the database would most likely fail it again)."""
        now = self.clock()
        self._ended.pop(hashed, None)
        self._ended[hashed] = now
        self._retry_at = now + RETRY_SECONDS
        while len(self._ended) > MAX_ENDED:
            del self._ended[next(iter(self._ended))]

    def due(self) -> list[str]:
        """The sessions to delete now, when a try is due (none under way, the last `RETRY_SECONDS` ago);
        else none. The caller says how it went with `tried`."""
        now = self.clock()
        for hashed, ended_at in list(self._ended.items()):
            if now - ended_at < SESSION_LIFETIME.total_seconds():
                break
            del self._ended[hashed]
        if self._retrying or not self._ended or now < self._retry_at:
            return []
        self._retrying = True
        self._retry_at = now + RETRY_SECONDS
        return list(self._ended)

    def tried(self, deleted: list[str]) -> None:
        """A try of `due`'s ended: `deleted` are gone from the database (none when it failed)."""
        self._retrying = False
        for hashed in deleted:
            self._ended.pop(hashed, None)


def ended_sessions(request: Request) -> EndedSessions:
    """This app's `EndedSessions`, made at first use."""
    state = request.app.state
    ended: EndedSessions | None = getattr(state, "web_ended_sessions", None)
    if ended is None:
        ended = state.web_ended_sessions = EndedSessions()
    return ended


async def _forget_ended(request: Request, ended: EndedSessions) -> None:
    """Delete the sessions logouts ended during an outage, when a try is due (`EndedSessions.due`). A
    database that still fails or is locked fails this try only: the request goes on, the sessions stay
    refused, and the next try is `RETRY_SECONDS` later. (On SQLite a failed write may fail the calls
    of other requests sharing its transaction: at most once every `RETRY_SECONDS`.)"""
    due = ended.due()
    if not due:
        return
    squall = request.app.state.squall
    deleted: list[str] = []
    try:
        await squall.db(close_sessions, squall.store, due, {"after_outage": True})
        deleted = due
    except sa.exc.DBAPIError as exc:
        trouble = database_trouble(exc)
        if trouble is None:
            raise
        log.info("%d session(s) ended by logout are still in the database (%s); tried again in %g s",
                 len(due), trouble, RETRY_SECONDS)
    finally:
        ended.tried(deleted)


async def _find_session(request: Request, token: str) -> Session | None:
    """The cookie's live session, read on `Database.read`: in no write group, so a page answers while
    another process holds SQLite's write lock (a CLI's `squall key set`) and a write of Squall's waits
    for it. Its last use, when due, is recorded apart (`_record_use`) rather than awaited."""
    squall = request.app.state.squall
    now = utcnow()
    session, touch_due = await squall.db.read(read_session, squall.store, token, now)
    if session is not None and touch_due:
        _record_use(request, squall.db, session, now)
    return session


def _record_use(request: Request, db: Database, session: Session, now: datetime) -> None:
    """Record the session's last use with the next group of writes (`Database.later`), which nobody waits
    on: behind a lock held elsewhere it is written once the lock is let go. One write at a time per
    session: the requests it makes meanwhile (the lock may be held a minute) queue no more. One that
    fails is only logged: the session's next request, `TOUCH_EVERY` being past, records it again (it
    goes idle only after `SESSION_IDLE` without one recorded)."""
    state = request.app.state
    recording: set[str] | None = getattr(state, "web_recording_use", None)
    if recording is None:
        recording = state.web_recording_use = set()
    if session.token_hash in recording:
        return
    recording.add(session.token_hash)
    recorded = db.later(touch_session, db.store, session, now)

    def done(future: asyncio.Future[Any]) -> None:
        recording.discard(session.token_hash)
        if not future.cancelled() and future.exception() is not None:
            log.info("the last use of %s's session was not recorded (%s); its next request records it",
                     session.account.name, future.exception())

    recorded.add_done_callback(done)


async def signed_in(request: Request) -> Session | None:
    """The request's live session, or None: for an answer that needs none but shows the menu to whoever
    is signed in (the UI's page for an address it has not). Only reads; a database that fails or is
    locked is None too, as that answer is not worth an error of its own."""
    token = request.cookies.get(COOKIE)
    if not token or token_hash(token) in ended_sessions(request):
        return None
    try:
        return await _find_session(request, token)
    except sa.exc.DBAPIError as exc:
        if database_trouble(exc) is None:
            raise
        return None


async def _session(request: Request) -> Session:
    ended = ended_sessions(request)
    await _forget_ended(request, ended)
    token = request.cookies.get(COOKIE)
    session = None
    if token and token_hash(token) not in ended:  # an ended one is refused without asking the database
        session = await _find_session(request, token)
    if session is None:
        if request.method in SAFE_METHODS:
            raise LoginRequired(_here(request))
        raise LoginRequired(_came_from(request), expired=True)
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER) or (await form_fields(request)).get(CSRF_FIELD, "")
        if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise Refused("This form is out of date or did not come from Squall's own page (its CSRF token "
                          "is missing or wrong): reload the page and try again.")
    request.state.session = session
    return session


async def _with_role(request: Request, role: str, doing: str = "This") -> Session:
    """The request's session if its account has `role` (or one above it); else 403, audited as
    `web.denied` (who, the page, the role it needs): a refusal is recorded wherever it comes from. `doing`
    says what needs it, in the refusal."""
    session = await _session(request)
    if not session.account.may(role):
        squall = request.app.state.squall
        await squall.db(squall.store.audit_add, "web.denied", session.account.name, "web", request.url.path,
                        {"method": request.method, "needs": role, "role": session.account.role})
        raise Refused(f"{doing} needs the {role} role; {session.account.name} is a {session.account.role}: "
                      "ask an admin.")
    return session


async def viewer(request: Request) -> Session:
    """Any signed-in account: reading."""
    return await _with_role(request, "viewer")


async def operator(request: Request) -> Session:
    """Running, canceling and re-running executions, answering inquiries."""
    return await _with_role(request, "operator")


async def admin(request: Request) -> Session:
    """Also managing packs, keys and rules."""
    return await _with_role(request, "admin")


async def admin_to(request: Request, doing: str) -> Session:
    """`admin`, for what a route otherwise open to operators does only for admins (`doing`, which the
    refusal names: running an action of Squall's own packs, `bot.web.actions.admin_only`)."""
    return await _with_role(request, "admin", doing)
