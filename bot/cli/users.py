"""`squall user create | passwd | list | delete`: the web UI's accounts (`bot/accounts.py`).

A password is generated and printed once unless `--password-stdin` gives one; only its argon2 hash
is stored. `passwd` and `delete` end the user's web sessions at once. Each change is audited
(`cli.user.create`, `.passwd`, `.delete`, `.logout`), never with the password, the event stored with the
change in one transaction (`changed_and_audited`). These commands touch the
account tables only, so they open the database without starting Squall. Names and passwords are printed
as written (rich would read a `[...]` in them as markup; a password given on stdin may hold one).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli.common import (
    JsonOption,
    add_row,
    changed_and_audited,
    fail,
    group,
    new_table,
    out,
    print_json,
    shown_time,
    with_store,
)

if TYPE_CHECKING:
    from engine.config import Config
    from engine.storage import Store

user_app = group("Create, list and delete the web UI's users; set their passwords.")

NameArgument = Annotated[str, typer.Argument(help="The user name people log in with.")]
PasswordStdinOption = Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard "
                                                   "input (its first line) instead of generating one.")]


def _password(from_stdin: bool) -> tuple[str, str, bool]:
    """The password, its hash, and whether it was generated (and so must be shown)."""
    from bot.accounts import AccountError, generate_password, hash_password

    password = sys.stdin.readline().rstrip("\r\n") if from_stdin else generate_password()
    try:
        return password, hash_password(password), not from_stdin
    except AccountError as exc:
        raise fail(str(exc)) from exc


def _show(document: dict[str, Any], password: str, generated: bool, as_json: bool, said: str) -> None:
    if as_json:
        print_json({**document, **({"password": password} if generated else {})})
        return
    out.print(said, markup=False)
    if generated:
        out.print(f"password: {password}", markup=False)
        out.print("Keep it now: it cannot be shown again.")


@user_app.command("create")
def user_create(name: NameArgument,
                role: Annotated[str, typer.Option("--role", "-r", help="viewer (reads), operator (runs, cancels, "
                                                  "answers inquiries) or admin (also packs, keys, rules).")] = "viewer",
                password_stdin: PasswordStdinOption = False, as_json: JsonOption = False) -> None:
    """Make a user; prints a generated password once (unless --password-stdin)."""
    from bot.accounts import AccountError, check_name, check_role, create_user

    try:
        check_name(name)
        check_role(role)
    except AccountError as exc:
        raise fail(str(exc)) from exc
    password, digest, generated = _password(password_stdin)

    def work(store: Store, config: Config) -> bool:
        return create_user(store, name, role, digest)

    if not changed_and_audited(work, "cli.user.create", lambda made: (name, {"role": role}) if made else None):
        raise fail(f"a user named {name} exists (`squall user passwd {name}` sets a new password)")
    _show({"name": name, "role": role}, password, generated, as_json, f"created user {name} ({role})")


@user_app.command("passwd")
def user_passwd(name: NameArgument, password_stdin: PasswordStdinOption = False, as_json: JsonOption = False) -> None:
    """Set a new password (generated and printed once, unless --password-stdin); the user's sessions end."""
    from bot.accounts import set_password

    password, digest, generated = _password(password_stdin)

    def work(store: Store, config: Config) -> bool:
        return set_password(store, name, digest)

    # That it changed, never the password.
    if not changed_and_audited(work, "cli.user.passwd", lambda changed: (name, {}) if changed else None):
        raise fail(f"no user named {name} (see `squall user list`)")
    _show({"name": name}, password, generated, as_json, f"new password for {name}; their sessions have ended")


@user_app.command("list")
def user_list(as_json: JsonOption = False) -> None:
    """The users and their roles (never their passwords)."""
    from bot.accounts import public_user
    from engine.storage import utcnow

    def work(store: Store, config: Config) -> list[dict[str, Any]]:
        sessions = store.web_session_counts(utcnow())
        return [public_user(r, sessions.get(r["name"], 0)) for r in store.web_user_list()]

    users = with_store(work)
    if as_json:
        print_json(users)
        return
    table = new_table("name", "role", "created (UTC)", "password changed (UTC)", "sessions")
    for user in users:  # the ISO times (27 characters) were cut to `2026-12-05T10:33:15.30…` in 80 columns
        add_row(table, user["name"], user["role"], shown_time(user["created_at"]),
                shown_time(user["password_changed_at"]), user["sessions"])
    out.print(table)


@user_app.command("logout")
def user_logout(name: NameArgument) -> None:
    """End the user's web sessions now (every browser they are logged in from), keeping their password."""
    from bot.accounts import end_sessions

    def work(store: Store, config: Config) -> int | None:
        return end_sessions(store, name)

    ended = changed_and_audited(work, "cli.user.logout",
                                lambda count: None if count is None else (name, {"sessions": count}))
    if ended is None:
        raise fail(f"no user named {name} (see `squall user list`)")
    out.print(f"ended {ended} session{'s' if ended != 1 else ''} of {name}", markup=False)


@user_app.command("delete")
def user_delete(name: NameArgument) -> None:
    """Delete a user; their sessions end at once."""
    from bot.accounts import delete_user

    def work(store: Store, config: Config) -> bool:
        return delete_user(store, name)

    if not changed_and_audited(work, "cli.user.delete", lambda deleted: (name, {}) if deleted else None):
        raise fail(f"no user named {name} (see `squall user list`)")
    out.print(f"deleted user {name}", markup=False)
