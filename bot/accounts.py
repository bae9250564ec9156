"""Web UI accounts and sessions: local users with a role, argon2 password hashes, revocable sessions.

No FastAPI import: `squall user ...` (the CLI) and `squall serve`'s first admin use this too. Every
function that hashes or checks a password is CPU work (argon2 takes tens of milliseconds on purpose),
so callers on the event loop run those in a thread and only the store calls through `squall.db`.

A session is a random cookie whose SHA-256 is the row's key (as API keys and tokens are stored: a
leaked row cannot be replayed). It ends when it expires, when it is idle too long, at logout, and
when its user's password changes or the user is deleted (the same transaction deletes the rows).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine.storage import iso, utcnow

if TYPE_CHECKING:
    from engine.storage import Database

#: Each role may do what the ones before it may: read; run, cancel, re-run, answer inquiries;
#: manage packs, keys and rules.
ROLES = ("viewer", "operator", "admin")
#: Names people type at the login form and see in the audit log.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
#: A session lasts at most this long, and ends sooner after `SESSION_IDLE` without a request.
SESSION_LIFETIME = timedelta(days=7)
SESSION_IDLE = timedelta(hours=12)
#: `last_seen` is written at most this often (a page view is otherwise a read only).
TOUCH_EVERY = timedelta(minutes=5)
FIRST_ADMIN = "admin"
#: How the password hash of an account made by an OpenID Connect login starts (`provision_external`).
#: No argon2 hash starts so, so no password matches it.
EXTERNAL_PREFIX = "!oidc:"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the name is unknown, so a wrong name costs what a wrong password costs.
    Made at the first login, not at import: an argon2 hash costs every `squall` command ~0.3 s."""
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A name, role or password that cannot be used; the message says what would do."""


@dataclass(frozen=True)
class Account:
    """Who a web request speaks for."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this account has `role` or one above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its account, the CSRF token its forms carry, and the stored key."""

    account: Account
    csrf_token: str
    token_hash: str


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):  # `$` alone lets a final newline through
        raise AccountError(f"{name!r} is not a usable user name: 1 to 64 letters, digits, '.', '_', '@' or '-', "
                           "starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def hash_password(password: str) -> str:
    """The argon2 hash of a password long enough to keep (CPU work: off the event loop)."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must be at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def password_matches(record: dict[str, Any] | None, password: str) -> bool:
    """Whether `password` is the account's (`record` from `store.web_user_get`; None for an unknown
    name, which is checked against a dummy hash so both take as long). CPU work: off the event loop."""
    usable = record is not None and not record["password_hash"].startswith(EXTERNAL_PREFIX)
    try:
        return _hasher.verify(record["password_hash"] if usable else _dummy_hash(), password) and usable
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """A password shown once (`squall user create` without `--password-stdin`, the first admin)."""
    return secrets.token_urlsafe(15)


def create_user(store: Any, name: str, role: str, password_hash: str, *, only_if_none: bool = False) -> bool:
    """Store an account; False when the name is taken (or, with `only_if_none`, any account exists)."""
    now = utcnow()
    record = {"name": check_name(name), "role": check_role(role), "password_hash": password_hash,
              "created_at": now, "password_changed_at": now}
    return store.web_user_add(record, only_if_none=only_if_none)


def set_password(store: Any, name: str, password_hash: str) -> bool:
    """A new password; the account's sessions end with the old one. False for an unknown name."""
    return store.web_user_set_password(name, password_hash, utcnow())


def delete_user(store: Any, name: str) -> bool:
    """Delete an account and end its sessions; False for an unknown name."""
    return store.web_user_delete(name)


def end_sessions(store: Any, name: str) -> int | None:
    """Log an account out everywhere without touching its password; how many sessions ended, None
    for an unknown name."""
    return store.web_sessions_end(name)


def public_user(record: dict[str, Any], sessions: int = 0) -> dict[str, Any]:
    """An account as `squall user list` shows it (never the hash), with its open sessions."""
    return {"name": record["name"], "role": record["role"], "created_at": iso(record["created_at"]),
            "password_changed_at": iso(record["password_changed_at"]), "sessions": sessions}


async def bootstrap_admin(db: Database) -> str | None:
    """On a database without accounts, create `admin` with a random password and return the password
    (to be shown once); None when any account exists, also one made by another process meanwhile."""
    if await db(db.store.web_user_list):
        return None
    password = generate_password()
    digest = await asyncio.to_thread(hash_password, password)
    created = await db(create_user, db.store, FIRST_ADMIN, "admin", digest, only_if_none=True)
    return password if created else None


def external_marker(issuer: str, subject: str) -> str:
    """The password hash of the account an OpenID Connect login made: it cannot match any password, and it
    binds the name to one person at one provider (`sub` is stable there; names can be reused)."""
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()
    return f"{EXTERNAL_PREFIX}{digest}"


def provision_external(store: Any, name: str, role: str, marker: str) -> Account:
    """The account of a person the provider just vouched for: made at first login, its role set to what
    the provider's groups give now (so a group change takes effect at the next login).

    Called through `squall.db`, so the look-up and the writes share one transaction. A local account
    of that name, or one made for another person at the provider, is refused (`AccountError`): a
    provider's user name must never take over an account it did not make. A changed role ends the
    account's other sessions, as a changed password does (the store has no role-only update)."""
    check_name(name)
    check_role(role)
    record = store.web_user_get(name)
    if record is None:
        now = utcnow()
        if not store.web_user_add({"name": name, "role": role, "password_hash": marker, "created_at": now,
                                   "password_changed_at": now}):
            raise AccountError(f"the account {name} was just made by another login: try again")
    elif not hmac.compare_digest(record["password_hash"].encode(), marker.encode()):
        raise AccountError(f"the user name {name} belongs to another Squall account (a local one, or another "
                           "person's at the provider): ask an admin")
    elif record["role"] != role:
        store.web_user_delete(name)
        store.web_user_add({**record, "role": role})
    return Account(name, role)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def open_session(store: Any, account: Account) -> tuple[str, Session]:
    """A new session for `account`: the cookie value (never stored) and the session."""
    token, now = secrets.token_urlsafe(32), utcnow()
    session = Session(account, secrets.token_urlsafe(32), token_hash(token))
    store.web_session_add({"token_hash": session.token_hash, "user": account.name, "csrf_token": session.csrf_token,
                           "created_at": now, "last_seen": now, "expires_at": now + SESSION_LIFETIME}, now)
    return token, session


def find_session(store: Any, token: str, now: datetime | None = None) -> Session | None:
    """The live session of this cookie, its last use recorded now and then; None if unknown, expired,
    idle too long or its account is gone. Reads and writes in one call (the session rules' tests); the web UI reads
    with `read_session` and records the use apart, so a page never waits for a write lock to be let in."""
    now = now or utcnow()
    session, touch_due = read_session(store, token, now)
    if session is not None and touch_due:
        touch_session(store, session, now)
    return session


def read_session(store: Any, token: str, now: datetime) -> tuple[Session | None, bool]:
    """`find_session` without its write: the live session of this cookie (None as there), and whether its
    last use is due to be recorded (`touch_session`, at most every `TOUCH_EVERY`). It only reads, so the
    web UI runs it on `Database.read`: a page answers while another process holds SQLite's write lock."""
    return _live_session(store, token_hash(token), now)


def touch_session(store: Any, session: Session, now: datetime) -> None:
    """Record `now` as the session's last use (what keeps it from going idle; `read_session` says when)."""
    store.web_session_touch(session.token_hash, now)


def current_session(store: Any, session: Session) -> Session | None:
    """`session` as stored now (with its account's role today), or None once it ended: logged out,
    expired, idle too long, its password changed or its account deleted (`find_session`'s rules).
    Unlike `find_session` it records no use: a live stream left open in a tab, which looks again
    every few seconds, is not someone using the UI, and must not keep an idle session alive."""
    return _live_session(store, session.token_hash, utcnow())[0]


def _live_session(store: Any, token_hash: str, now: datetime) -> tuple[Session | None, bool]:
    """The live session stored under `token_hash` and whether its last use is due to be recorded."""
    row = store.web_session_get(token_hash)
    if row is None or row["expires_at"] <= now or row["last_seen"] + SESSION_IDLE <= now:
        return None, False
    session = Session(Account(row["user"], row["role"]), row["csrf_token"], row["token_hash"])
    return session, now - row["last_seen"] >= TOUCH_EVERY


def close_sessions(store: Any, token_hashes: list[str], detail: dict[str, Any]) -> None:
    """Log out: these sessions' cookies are worth nothing from now on; each audited as its user's
    `web.logout` with `detail`, in one call (so one transaction). One gone already (expired, a new
    password) is not audited."""
    for hashed in token_hashes:
        row = store.web_session_get(hashed)
        store.web_session_delete(hashed)
        if row is not None:
            store.audit_add("web.logout", row["user"], "web", None, detail)
